"""The file layer under the journal: every call that can keep or lose data, behind one seam.

The journal, its compaction and its recovery touch their files only through a `Disk`,
so a test can put another layer underneath: `tests/harness/crashdisk.py` records each file's
durable image and the operations since its last sync, to build every state a power
loss can leave, or makes the nth operation fail. In production it is `RealDisk`: the
plain syscalls, nothing added, so the agent is exactly as fast as before.

The rules the callers keep, and the crash harness holds them to:

- bytes are durable only once `fsync` of their file returns; a name (a create, rename
  or unlink) only once `fsync_dir` of its folder returns;
- `close` cannot lose what a successful `fsync` kept, so callers ignore its errors;
- reads (`read`, `names`) see every write at once, synced or not.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Protocol


class Disk(Protocol):
    """The operations the journal needs, by name; file descriptors are plain ints."""

    def read(self, path: Path) -> bytes | None:
        """The whole file, or None if there is none."""

    def names(self, folder: Path) -> list[str]:
        """The names in `folder`."""

    def create(self, path: Path) -> int:
        """Open `path` for writing, created empty (0600) or cut to nothing if it exists."""

    def open_append(self, path: Path) -> int:
        """Open an existing file for appending."""

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """Write some of `data`; return how much (a short write is not an error)."""

    def fsync(self, fd: int) -> None: ...

    def truncate(self, fd: int, size: int) -> None: ...

    def close(self, fd: int) -> None: ...

    def rename(self, src: Path, dst: Path) -> None:
        """Atomically replace `dst` with `src`."""

    def unlink(self, path: Path) -> None: ...

    def fsync_dir(self, folder: Path) -> None:
        """Make the names created, renamed and removed in `folder` durable."""


class RealDisk:
    """The syscalls themselves."""

    def read(self, path: Path) -> bytes | None:
        try:
            with open(path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def names(self, folder: Path) -> list[str]:
        return os.listdir(folder)

    def create(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def open_append(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def fsync_dir(self, folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


REAL_DISK = RealDisk()


def write_all(disk: Disk, fd: int, data: bytes) -> None:
    """Write all of `data`, however many short writes that takes."""
    view = memoryview(data)
    while view:
        view = view[disk.write(fd, view) :]


def append_all(disk: Disk, fd: int, data: bytes) -> None:
    """Append all of `data` to a file whose earlier bytes are durable.

    After a short write the part written is fsynced before the rest is written: a file
    never holds two unsynced appends, so no power loss can keep a later part without an
    earlier one (a hole followed by whole entries, which recovery must take for damage).
    Short writes are rare (a disk filling up, a signal), so this costs nothing otherwise.
    """
    view = memoryview(data)
    while view:
        view = view[disk.write(fd, view) :]
        if view:
            disk.fsync(fd)


def close_quietly(disk: Disk, fd: int) -> None:
    """Close `fd`; an error cannot matter, as what it held was fsynced or is thrown away."""
    with contextlib.suppress(OSError):
        disk.close(fd)


def write_temp(disk: Disk, path: Path, data: bytes) -> Path:
    """Write `data` to `path`.tmp and fsync it; on failure remove it (best effort) and raise."""
    tmp = path.with_name(path.name + ".tmp")
    fd = disk.create(tmp)
    try:
        write_all(disk, fd, data)
        disk.fsync(fd)
    except OSError:
        close_quietly(disk, fd)
        with contextlib.suppress(OSError):  # recovery removes a temp file left behind
            disk.unlink(tmp)
        raise
    close_quietly(disk, fd)
    return tmp


def write_durably(disk: Disk, path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: temp file, fsync, rename, fsync of the folder."""
    disk.rename(write_temp(disk, path, data), path)
    disk.fsync_dir(path.parent)
