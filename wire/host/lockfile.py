"""Lock files: an flock on a file that names its holder, removed when released.

The agent holds one on its state dir (one agent per state dir) and one beside its socket;
a client holds one while it starts an agent (one starter at a time). The file records the
holder's pid on its first line (`kill $(head -1 lock)`) and, for an agent, the socket it
serves on the second, so another process can tell who is in its way and where to go.

A released lock leaves nothing behind: its file is removed while still held. A taker
therefore checks, once it has the flock, that the file it locked is still the one at the
path (else it was just released and removed: it tries again), so removal never lets two
in. A crashed holder's file stays, but its flock went with it: `holder_of` asks the
kernel (/proc/locks) whether the recorded pid still holds it, so a reused pid misleads no
one.

Error rules: a lock another process holds is `Busy` (with what that process recorded),
once `patience` has run out; a file that cannot be opened is the OSError. A record that
cannot be written for want of space is skipped (the pid only names the holder: a full
disk must not stop an agent from starting).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from .processes import is_running

RETRY = 0.01
"""flock(2) cannot time out, so a patient taker tries again this often; only while another
holds the lock, which is short (one agent's start-up) wherever patience is given."""
RECORD_SIZE = 4096
"""The most of a lock file read for its record: a pid and a socket path."""


class LockRecord(msgspec.Struct, frozen=True):
    """What a holder writes in its lock file: its pid, and the socket it serves."""

    pid: int
    serving: str = ""

    def text(self) -> str:
        """The file's contents: the pid alone on the first line."""
        return f"{self.pid}\n{self.serving}\n" if self.serving else f"{self.pid}\n"


class Held(msgspec.Struct, frozen=True):
    """A lock this process holds: the file's descriptor, and whether another held it first."""

    fd: int
    waited: bool


class Busy(Exception):
    """Another process holds the lock; `record` is what it wrote (None: nothing readable)."""

    def __init__(self, path: Path, record: LockRecord | None) -> None:
        super().__init__(f"{path} is locked by {f'pid {record.pid}' if record else 'someone'}")
        self.path = path
        self.record = record


@contextlib.contextmanager
def held(path: Path, record: LockRecord, *, patience: float = 0.0) -> Iterator[Held]:
    """Hold an flock on `path`, with `record` in it, for as long as the block runs; wait up
    to `patience` seconds while another process holds it, then raise `Busy`."""
    deadline = time.monotonic() + patience
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            waited |= _lock(fd, path, deadline)
        except BaseException:
            os.close(fd)
            raise
        if same_file(fd, path):
            break
        os.close(fd)  # released and removed meanwhile: lock the file now at the path
    try:
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, record.text().encode(), 0)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        yield Held(fd, waited)
    finally:
        if same_file(fd, path):  # (not if it was removed, and maybe taken anew, meanwhile)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still holding the lock
        os.close(fd)


def _lock(fd: int, path: Path, deadline: float) -> bool:
    """Lock `fd`, trying until `deadline`; whether we had to wait. Busy past it."""
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return waited
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            raise Busy(path, _parse_record(os.pread(fd, RECORD_SIZE, 0).decode(errors="replace")))
        waited = True
        time.sleep(RETRY)


def same_file(fd: int, path: Path) -> bool:
    """Is the file open as `fd` still the one at `path` (not removed, not replaced)?"""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def read_lock_record(path: Path) -> LockRecord | None:
    """The record in lock file `path` (which may be stale: see `holder_of`), or None."""
    try:
        with open(path, "rb") as file:
            text = file.read(RECORD_SIZE).decode(errors="replace")
    except OSError:
        return None
    return _parse_record(text)


def _parse_record(text: str) -> LockRecord | None:
    """`PID` on the first line, the socket served (if recorded) on the second."""
    lines = text.splitlines()
    if not lines or not lines[0].strip().isdigit():
        return None
    return LockRecord(int(lines[0]), lines[1] if len(lines) > 1 else "")


def holder_of(path: Path) -> LockRecord | None:
    """The record of the live process that holds the lock at `path`, or None if none does
    (no file, or a crashed holder's)."""
    record = read_lock_record(path)
    return record if record is not None and flock_held(path, record.pid) else None


def flock_held(path: Path, pid: int) -> bool:
    """Does `pid` hold an flock on file `path`? (Without /proc/locks: is `pid` running?)"""
    try:
        info = os.stat(path)
    except OSError:
        return False
    try:
        with open("/proc/locks") as locks:
            table = locks.read()
    except OSError:
        return is_running(pid)
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        if "FLOCK" in fields and where in fields and str(pid) in fields:
            return True
    return False
