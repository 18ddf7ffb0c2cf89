"""Where the agent listens and keeps its state when nobody says otherwise (SPEC §2).

A socket path is a `str` here and in the clients: every call of the command line reaches
this module, and `pathlib` (with `urllib.parse`, `ipaddress`, `fnmatch`) is 4 ms of a 40 ms
call. The agent, which starts once, turns it into a `Path`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

APP = "unitsync"
SOCKET_ENV = "UNITSYNC_SOCKET"
STATE_DIR_ENV = "UNITSYNC_STATE_DIR"


def default_socket() -> str:
    """$UNITSYNC_SOCKET, else the user's runtime dir, else a private folder under the temp dir."""
    if env := os.environ.get(SOCKET_ENV):
        return env
    if os.environ.get("XDG_RUNTIME_DIR"):  # else platformdirs' answer is not used: not asked
        import warnings

        import platformdirs  # only needed here; keeps `--socket` calls fast

        with warnings.catch_warnings():
            # platformdirs warns and falls back to /tmp/runtime-UID when XDG_RUNTIME_DIR is
            # not usable; we choose our own fallback below instead.
            warnings.simplefilter("ignore")
            runtime = platformdirs.user_runtime_dir(APP)
        if os.path.isdir(os.path.dirname(runtime)):
            return os.path.join(runtime, "agent.sock")
    return os.path.join(temp_dir(), f"{APP}-{os.getuid()}", "agent.sock")


def folder_of(path: str | os.PathLike[str]) -> str:
    """The folder a socket path lies in (`.` for a bare name), as `Path.parent` names it."""
    return os.path.dirname(os.fspath(path)) or "."


TEMP_CANDIDATES = ("/tmp", "/var/tmp", "/usr/tmp")
"""Where `tempfile.gettempdir()` looks after $TMPDIR, $TEMP and $TMP, in its order."""


def temp_dir() -> str:
    """The temporary folder `tempfile.gettempdir()` names on a usual machine: the first of
    $TMPDIR, $TEMP, $TMP and TEMP_CANDIDATES that is a folder, else the working folder.

    Not `tempfile` itself: importing it (with shutil, bz2, lzma and random) is 3 ms of a
    40 ms call, paid by every call on a machine without $XDG_RUNTIME_DIR. It tests each
    candidate by writing a file there; this asks only whether it is a folder, which every
    caller (the agent and its clients alike) asks the same way, so they still agree.
    """
    names = [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")]
    for folder in [*names, *TEMP_CANDIDATES]:
        if folder and os.path.isdir(folder):
            return os.path.abspath(folder)
    return os.getcwd()


def default_state_dir() -> Path:
    """$UNITSYNC_STATE_DIR, else the user's state dir: the agent and autostart agree on it."""
    from pathlib import Path

    if env := os.environ.get(STATE_DIR_ENV):
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_state_dir(APP))


def private_socket_hint() -> str:
    """A socket path in a folder only this user can write, to suggest when another is unsafe.

    Never a shared folder like /tmp itself: `chmod 700 /tmp` would break the machine.
    """
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{temp_dir()}/{user}-{APP}/agent.sock"
