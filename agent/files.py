"""Private folders and exclusive locks: the file rules of SPEC §4-§5 (durable writes: `disk.py`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path


class SetupError(Exception):
    """The agent cannot start; the message says why and what to do."""


def ensure_private_dir(path: Path) -> None:
    """Create `path` 0700, or accept an existing one only if we own it and others cannot write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise SetupError(f"cannot create the folder {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise SetupError(f"{path} is not a folder (a symlink or file is in the way)")
    if info.st_uid != os.getuid():
        raise SetupError(
            f"refusing to use {path}: it belongs to uid {info.st_uid}, not to you "
            f"(uid {os.getuid()}); choose another path with --socket"
        )
    if info.st_mode & 0o022:
        raise SetupError(
            f"refusing to use {path}: it is writable by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run `chmod 700 {path}` or choose another path"
        )


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[int]:
    """Hold an flock on `path` (which records our pid) for as long as the block runs;
    the block gets the lock file's descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SetupError(
                f"another unitsync agent (pid {holder}) is already serving {what}; "
                "stop it first, or give this one another --socket"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)
