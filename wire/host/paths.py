"""Where the agent listens and keeps its state when nobody says otherwise (SPEC §2)."""

from __future__ import annotations

import os
from pathlib import Path

APP = "unitsync"
SOCKET_ENV = "UNITSYNC_SOCKET"
STATE_DIR_ENV = "UNITSYNC_STATE_DIR"


def default_socket() -> Path:
    """$UNITSYNC_SOCKET, else the user's runtime dir, else a private folder under the temp dir."""
    if env := os.environ.get(SOCKET_ENV):
        return Path(env)
    import tempfile
    import warnings

    import platformdirs  # only needed here; keeps `--socket` calls fast

    with warnings.catch_warnings():
        # platformdirs warns and falls back to /tmp/runtime-UID when XDG_RUNTIME_DIR is unset;
        # we choose our own fallback below instead.
        warnings.simplefilter("ignore")
        runtime = Path(platformdirs.user_runtime_dir(APP))
    if os.environ.get("XDG_RUNTIME_DIR") and runtime.parent.is_dir():
        return runtime / "agent.sock"
    return Path(tempfile.gettempdir()) / f"{APP}-{os.getuid()}" / "agent.sock"


def default_state_dir() -> Path:
    """$UNITSYNC_STATE_DIR, else the user's state dir: the agent and autostart agree on it."""
    if env := os.environ.get(STATE_DIR_ENV):
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_state_dir(APP))


def private_socket_hint() -> str:
    """A socket path in a folder only this user can write, to suggest when another is unsafe.

    Never a shared folder like /tmp itself: `chmod 700 /tmp` would break the machine.
    """
    import getpass
    import tempfile

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{tempfile.gettempdir()}/{user}-{APP}/agent.sock"
