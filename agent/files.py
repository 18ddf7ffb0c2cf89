"""Private folders and exclusive locks: the file rules of SPEC §4-§5 (durable writes: `disk.py`).

The lock files themselves are `wire.host.lockfile`'s; what one held by another agent means
(a SetupError that names it and says what to do) is here.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from unitsync.wire.host.lockfile import Busy, LockRecord, held
from unitsync.wire.host.private import problem


class SetupError(Exception):
    """The agent cannot start; the message says why and what to do."""


def ensure_private_dir(path: Path, elsewhere: str) -> None:
    """Create `path` 0700, or accept an existing one only if we own it and others cannot write.

    `elsewhere` says how to choose another folder (`--state-dir D`, `--socket P`).
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise SetupError(f"cannot create the folder {path}: {exc.strerror}; {elsewhere}") from None
    found = problem(path, info)
    if found is None:
        return
    # A shared folder (sticky, like /tmp) must stay open to everyone: never suggest closing
    # it, only a private folder of one's own.
    shared = info.st_mode & stat.S_ISVTX
    fix = f"run `chmod 700 {path}`, or " if found.kind == "open to others" and not shared else ""
    raise SetupError(f"{found.words}; {fix}{elsewhere}")


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, elsewhere: str, serving: str = "") -> Iterator[int]:
    """Hold the lock file `path` (`wire.host.lockfile`: it records our pid, and `serving`, the
    socket this agent serves, if given) for as long as the block runs; the block gets the
    lock file's descriptor. Held by another agent: SetupError naming it, at once."""
    taking = contextlib.ExitStack()
    try:
        lock = taking.enter_context(held(path, LockRecord(os.getpid(), serving)))
    except Busy as busy:
        holder = f"pid {busy.record.pid}" if busy.record else "pid unknown"
        if busy.record and busy.record.serving:
            holder += f", serving the socket {busy.record.serving}"
        raise SetupError(
            f"another unitsync agent ({holder}) is already serving {what}; "
            f"stop it first, or {elsewhere}"
        ) from None
    with taking:
        yield lock.fd
