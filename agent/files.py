"""Private folders and exclusive locks: the file rules of SPEC §4-§5 (durable writes: `disk.py`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from unitsync.wire.host.peer import parse_lock_record, same_file


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
    if not stat.S_ISDIR(info.st_mode):
        raise SetupError(f"{path} is not a folder (a symlink or file is in the way); {elsewhere}")
    if info.st_uid != os.getuid():
        raise SetupError(
            f"refusing to use {path}: it belongs to uid {info.st_uid}, not to you "
            f"(uid {os.getuid()}); {elsewhere}"
        )
    if info.st_mode & 0o022:
        mode = stat.S_IMODE(info.st_mode)
        # A shared folder (sticky, like /tmp) must stay open to everyone: never suggest
        # closing it, only a private folder of one's own.
        fix = "" if info.st_mode & stat.S_ISVTX else f"run `chmod 700 {path}`, or "
        raise SetupError(
            f"refusing to use {path}: it is writable by others (mode {mode:04o}); {fix}{elsewhere}"
        )


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, elsewhere: str, serving: str = "") -> Iterator[int]:
    """Hold an flock on `path` (which records our pid, and `serving`: the socket this agent
    serves, if given) for as long as the block runs; the block gets the lock file's
    descriptor. The pid stays alone on the first line (`kill $(head -1 lock)`).

    The file is removed when the lock is released, so a clean stop leaves nothing behind;
    a taker checks after locking that the file it locked is still the one at `path`
    (else it was just released and removed: it tries again), so removal never lets two in.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = parse_lock_record(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            holder = f"pid {record.pid}" if record else "pid unknown"
            if record and record.serving:
                holder += f", serving the socket {record.serving}"
            raise SetupError(
                f"another unitsync agent ({holder}) is already serving {what}; "
                f"stop it first, or {elsewhere}"
            ) from None
        if same_file(fd, path):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        record = f"{os.getpid()}\n{serving}\n" if serving else f"{os.getpid()}\n"
        try:
            os.pwrite(fd, record.encode(), 0)
        except OSError as exc:  # the pid only names the holder: a full disk may start anyway
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        yield fd
    finally:
        if same_file(fd, path):  # (not if it was removed, and maybe taken anew, meanwhile)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still holding the lock
        os.close(fd)
