"""A disk whose nth operation fails: for the fault loops of SPEC §4.

`FaultyDisk` wraps any `Disk` and counts its operations (reads are never failed).
A `Fault` makes operation n fail with ENOSPC, EDQUOT or EIO, or makes write n short,
either once or from then on:

- ENOSPC/EDQUOT from then on is a disk that fills up: a write at operation n gets half
  its bytes in (a short write, as write(2) does when the space ends mid-way), and every
  later operation that needs space (create, write, rename) fails; freeing space is
  `lift()`.
- EIO from then on is a dead disk: every later operation fails.
- A short write returns after half the bytes, which is not an error: the caller must
  write the rest.

A failed fsync is told to the inner disk when it models what that loses
(`SimDisk.fsync_failed`): what the fsync was to make durable may never be (fsyncgate).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from unitsync.agent.store.journal.disk import Disk

KINDS = ("ENOSPC", "EDQUOT", "EIO", "short")
NEEDS_SPACE = frozenset({"create", "write", "rename"})


@dataclass
class Fault:
    kind: str
    at: int
    """The operation (1-based; for `short`, the write) that fails first."""
    persistent: bool

    def __str__(self) -> str:
        return f"{self.kind} at operation {self.at}{' and after' if self.persistent else ''}"


class FaultyDisk:
    def __init__(self, inner: Disk, fault: Fault | None = None) -> None:
        self.inner = inner
        self.fault = fault
        self.ops = 0
        self.writes = 0
        self.hits = 0
        """How many operations the fault made fail (or short)."""
        self.calls: list[str] = []
        """Every operation's name, in order (reads excepted); a failed one ends in "!"."""
        self.fail_only: str | None = None
        """With a fault at 0: fail the next operation of this name instead of the nth."""

    def lift(self) -> None:
        """The fault is over: space was freed, or the disk was replaced."""
        self.fault = None

    def _fails(self, op: str) -> bool:
        self.ops += 1
        self.calls.append(op)
        fault = self.fault
        if fault is None or fault.kind == "short":
            return False
        if fault.at == 0 and op == self.fail_only:
            fault.at = self.ops
        if self.ops == fault.at:
            return True
        if not fault.persistent or self.ops < fault.at:
            return False
        return fault.kind == "EIO" or op in NEEDS_SPACE

    def _check(self, op: str) -> None:
        if self._fails(op):
            self._raise()

    def _raise(self) -> None:
        assert self.fault is not None
        self.hits += 1
        self.calls[-1] += "!"
        code = getattr(errno, self.fault.kind)
        raise OSError(code, os.strerror(code))

    # --- the Disk protocol -----------------------------------------------------------------

    def read(self, path: Path) -> bytes | None:
        return self.inner.read(path)

    def names(self, folder: Path) -> list[str]:
        return self.inner.names(folder)

    def create(self, path: Path) -> int:
        self._check("create")
        return self.inner.create(path)

    def open_append(self, path: Path) -> int:
        self._check("open")
        return self.inner.open_append(path)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        fault = self.fault
        self.writes += 1
        if fault is not None and fault.kind == "short":
            self.ops += 1
            self.calls.append("write")
            if self.writes == fault.at or (fault.persistent and self.writes > fault.at):
                self.hits += 1
                return self.inner.write(fd, data[: max(1, len(data) // 2)])
            return self.inner.write(fd, data)
        if self._fails("write"):
            first = self.hits == 0 and self.ops == fault.at  # type: ignore[union-attr]
            if first and fault.persistent and fault.kind != "EIO" and len(data) > 1:  # type: ignore[union-attr]
                self.hits += 1  # the space ran out in the middle of this write
                return self.inner.write(fd, data[: len(data) // 2])
            self._raise()
        return self.inner.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self._fails("fsync"):
            if failed := getattr(self.inner, "fsync_failed", None):
                failed(fd)
            self._raise()
        self.inner.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        self._check("truncate")
        self.inner.truncate(fd, size)

    def close(self, fd: int) -> None:
        failing = self._fails("close")
        self.inner.close(fd)  # close(2) releases the descriptor even when it reports an error
        if failing:
            self._raise()

    def rename(self, src: Path, dst: Path) -> None:
        self._check("rename")
        self.inner.rename(src, dst)

    def unlink(self, path: Path) -> None:
        self._check("unlink")
        self.inner.unlink(path)

    def fsync_dir(self, folder: Path) -> None:
        self._check("fsync_dir")
        self.inner.fsync_dir(folder)
