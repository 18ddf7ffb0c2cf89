"""A recording disk for power-loss tests, in the spirit of SQLite's crash VFS (src/test6.c).

`SimDisk` is an in-memory `unitsync.agent.store.journal.disk.Disk` for one folder. For each file it
keeps the durable image and the operations since the file's last fsync; for the folder,
the durable names and the creates, renames and unlinks since its last fsync. After
every operation that changes anything it takes a `Checkpoint`: what a power loss at that
moment could leave behind. `Checkpoint.states()` builds those states:

- each pending write is applied, dropped, torn at a 512-byte boundary (the sectors
  before the boundary reach the disk, the rest do not), or its new bytes become zeros
  (the size was updated, the data never written) or garbage;
- each pending truncate, create, rename and unlink happens or does not;
- nothing crosses an fsync: what a file's fsync covered is in its durable image, and
  a name survives only once its folder's fsync returned.

Pending operations are independent (a later one may survive an earlier one lost), which
is harsher than ext4's ordered mode and exactly what POSIX allows. Every combination is
built when there are at most EXHAUSTIVE, else SAMPLES seeded ones (always including
"everything applied" and "everything dropped").

A failed fsync of a file (`fsync_failed`: `faultdisk.FaultyDisk` calls it) makes the
file's pending operations DOUBTFUL for good: no later fsync makes it durable, and every
power-loss state from then on may keep it, drop it or tear it, as a pending operation.
Why: on Linux a failed writeback may drop the dirty pages or mark them clean, and the
error is reported once, so a retried fsync succeeds with the data not on disk
(PostgreSQL's "fsyncgate", 2018). Operations a later fsync did cover are SYNCED: they
stay in the list, always applied, so that they land after the doubtful ones they follow.
A reader still sees every write (the pages stay in the cache, as on Linux).
"""

from __future__ import annotations

import errno
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

SECTOR = 512
"""The unit a disk writes atomically; a torn write keeps whole sectors only."""
EXHAUSTIVE = 1024
"""Combinations of fates built one by one (e.g. 10 operations, each applied or dropped)."""
SAMPLES = 300
"""Seeded combinations built when there are more than EXHAUSTIVE."""
PENDING, DOUBTFUL, SYNCED = "pending", "doubtful", "synced"
"""Not synced yet; a failed fsync covered it (never durable, maybe on disk); a later fsync
covered it, after a doubtful one of the same file (durable, but applied in its turn)."""


@dataclass(frozen=True)
class Write:
    inode: int
    offset: int
    data: bytes
    state: str = PENDING


@dataclass(frozen=True)
class Truncate:
    inode: int
    size: int
    state: str = PENDING


@dataclass(frozen=True)
class Name:
    """A change to the folder: `create`, `rename` (from `old`) or `unlink` of `name`."""

    kind: str
    name: str
    inode: int
    old: str = ""
    state: str = PENDING


Pending = Write | Truncate | Name
Fate = str | int
"""What becomes of a pending operation: applied, dropped, zeros, garbage, or (an int)
torn, keeping that many of its bytes."""


def fates(op: Pending) -> list[Fate]:
    if op.state == SYNCED:
        return ["applied"]
    if not isinstance(op, Write):
        return ["applied", "dropped"]
    end = op.offset + len(op.data)
    torn: list[Fate] = [
        boundary - op.offset
        for boundary in range((op.offset // SECTOR + 1) * SECTOR, end, SECTOR)
        if boundary > op.offset
    ]
    return ["applied", "dropped", "zeros", "garbage", *torn]


@dataclass(frozen=True)
class Checkpoint:
    """The disk just after operation `index` (`what`), as a power loss could leave it."""

    index: int
    what: str
    names: dict[str, int]
    """The folder's durable names."""
    images: dict[int, bytes]
    """Each file's durable image, by inode."""
    pending: tuple[Pending, ...]
    volatile: dict[str, bytes]
    """What a reader sees now."""

    def durable(self, name: str) -> bytes | None:
        inode = self.names.get(name)
        return None if inode is None else self.images[inode]

    def combinations(self) -> int:
        return math.prod(len(fates(op)) for op in self.pending)

    def states(self, seed: str) -> Iterator[tuple[tuple[Fate, ...], dict[str, bytes]]]:
        """(fates, files) for every state a power loss here can leave (or a sample)."""
        choices = [fates(op) for op in self.pending]
        if math.prod(len(c) for c in choices) <= EXHAUSTIVE:
            combos: Iterator[tuple[Fate, ...]] = itertools.product(*choices)
        else:
            rng = random.Random(f"{seed}:{self.index}")
            sampled = [tuple(rng.choice(c) for c in choices) for _ in range(SAMPLES)]
            everything = tuple("applied" for _ in choices), tuple("dropped" for _ in choices)
            combos = iter([*everything, *sampled])
        for n, combo in enumerate(combos):
            yield combo, self.build(combo, random.Random(f"{seed}:{self.index}:{n}"))

    def build(self, combo: tuple[Fate, ...], rng: random.Random) -> dict[str, bytes]:
        names = dict(self.names)
        data = {inode: bytearray(image) for inode, image in self.images.items()}
        for op, fate in zip(self.pending, combo, strict=True):
            if fate == "dropped":
                continue
            if isinstance(op, Write):
                new = op.data
                if fate == "zeros":
                    new = bytes(len(new))
                elif fate == "garbage":
                    new = rng.randbytes(len(new))
                elif isinstance(fate, int):
                    new = new[:fate]
                _put(data.setdefault(op.inode, bytearray()), op.offset, new)
            elif isinstance(op, Truncate):
                _resize(data.setdefault(op.inode, bytearray()), op.size)
            elif op.kind == "create":
                names[op.name] = op.inode
            elif op.kind == "rename":
                if names.get(op.old) == op.inode:
                    del names[op.old]
                names[op.name] = op.inode
            elif names.get(op.name) == op.inode:  # unlink
                del names[op.name]
        return {name: bytes(data.get(inode, b"")) for name, inode in names.items()}


def _put(buffer: bytearray, offset: int, new: bytes) -> None:
    if len(buffer) < offset:
        buffer.extend(bytes(offset - len(buffer)))
    buffer[offset : offset + len(new)] = new


def _resize(buffer: bytearray, size: int) -> None:
    if len(buffer) > size:
        del buffer[size:]
    else:
        buffer.extend(bytes(size - len(buffer)))


@dataclass
class _Inode:
    image: bytes = b""
    """Durable content."""
    data: bytearray = field(default_factory=bytearray)
    """What a reader sees."""


@dataclass
class _Open:
    inode: int
    append: bool
    position: int = 0


class SimDisk:
    """An in-memory folder that remembers what is durable; see the module docstring."""

    def __init__(self, folder: Path, files: dict[str, bytes] | None = None) -> None:
        self.folder = folder
        self._inodes: dict[int, _Inode] = {}
        self._names: dict[str, int] = {}
        self._durable_names: dict[str, int] = {}
        self._pending: list[Pending] = []
        self._open: dict[int, _Open] = {}
        self._next = itertools.count(3)
        for name, content in (files or {}).items():
            inode = next(self._next)
            self._inodes[inode] = _Inode(content, bytearray(content))
            self._names[name] = self._durable_names[name] = inode
        self.checkpoints: list[Checkpoint] = []
        self._checkpoint("start")

    # --- what tests look at ----------------------------------------------------------------

    @property
    def files(self) -> dict[str, bytes]:
        """What a reader sees now (a process restart finds exactly this)."""
        return {name: bytes(self._inodes[inode].data) for name, inode in self._names.items()}

    @property
    def last(self) -> int:
        """The index of the latest checkpoint."""
        return len(self.checkpoints) - 1

    def _checkpoint(self, what: str) -> None:
        live = set(self._durable_names.values()) | {
            op.inode for op in self._pending if isinstance(op, Name)
        }
        self.checkpoints.append(
            Checkpoint(
                len(self.checkpoints),
                what,
                dict(self._durable_names),
                {inode: self._inodes[inode].image for inode in live},
                tuple(op for op in self._pending if op.inode in live),  # no name, no trace
                self.files,
            )
        )

    def _synced(self, covered: Callable[[Pending], bool]) -> bool:
        """A successful fsync of what `covered` selects: False if it must be made durable
        the simple way (no doubtful operation among them); else mark them SYNCED."""
        if not any(covered(op) and op.state == DOUBTFUL for op in self._pending):
            return False
        self._pending = [
            replace(op, state=SYNCED) if covered(op) and op.state == PENDING else op
            for op in self._pending
        ]
        return True

    def _doubt(self, covered: Callable[[Pending], bool]) -> None:
        self._pending = [
            replace(op, state=DOUBTFUL) if covered(op) and op.state == PENDING else op
            for op in self._pending
        ]

    def _name(self, path: Path) -> str:
        path = Path(path)
        if path.parent != self.folder:
            raise OSError(errno.ENOENT, "outside the simulated folder", str(path))
        return path.name

    def _inode(self, path: Path) -> int:
        name = self._name(path)
        if name not in self._names:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return self._names[name]

    def _fd(self, inode: int, append: bool) -> int:
        fd = next(self._next)
        self._open[fd] = _Open(inode, append)
        return fd

    # --- the Disk protocol -----------------------------------------------------------------

    def read(self, path: Path) -> bytes | None:
        inode = self._names.get(self._name(path))
        return None if inode is None else bytes(self._inodes[inode].data)

    def names(self, folder: Path) -> list[str]:
        assert Path(folder) == self.folder
        return list(self._names)

    def create(self, path: Path) -> int:
        name = self._name(path)
        inode = self._names.get(name)
        if inode is None:
            inode = next(self._next)
            self._inodes[inode] = _Inode()
            self._names[name] = inode
            self._pending.append(Name("create", name, inode))
        else:
            self._inodes[inode].data.clear()
            self._pending.append(Truncate(inode, 0))
        self._checkpoint(f"create {name}")
        return self._fd(inode, append=False)

    def open_append(self, path: Path) -> int:
        return self._fd(self._inode(path), append=True)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        handle = self._open[fd]
        buffer = self._inodes[handle.inode].data
        offset = len(buffer) if handle.append else handle.position
        data = bytes(data)
        _put(buffer, offset, data)
        handle.position = offset + len(data)
        self._pending.append(Write(handle.inode, offset, data))
        self._checkpoint(f"write {len(data)} bytes at {offset}")
        return len(data)

    def fsync(self, fd: int) -> None:
        inode = self._open[fd].inode
        if not self._synced(_of_file(inode)):
            self._inodes[inode].image = bytes(self._inodes[inode].data)
            self._pending = [op for op in self._pending if not _of_file(inode)(op)]
        self._checkpoint("fsync")

    def fsync_failed(self, fd: int) -> None:
        """An fsync of `fd` failed: its file's pending operations become DOUBTFUL."""
        self._doubt(_of_file(self._open[fd].inode))

    def truncate(self, fd: int, size: int) -> None:
        inode = self._open[fd].inode
        _resize(self._inodes[inode].data, size)
        self._pending.append(Truncate(inode, size))
        self._checkpoint(f"truncate to {size}")

    def close(self, fd: int) -> None:
        del self._open[fd]

    def rename(self, src: Path, dst: Path) -> None:
        inode = self._inode(src)
        old, name = self._name(src), self._name(dst)
        del self._names[old]
        self._names[name] = inode
        self._pending.append(Name("rename", name, inode, old))
        self._checkpoint(f"rename {old} -> {name}")

    def unlink(self, path: Path) -> None:
        inode = self._inode(path)
        name = self._name(path)
        del self._names[name]
        self._pending.append(Name("unlink", name, inode))
        self._checkpoint(f"unlink {name}")

    def fsync_dir(self, folder: Path) -> None:
        assert Path(folder) == self.folder
        self._durable_names = dict(self._names)
        self._pending = [op for op in self._pending if not isinstance(op, Name)]
        self._checkpoint("fsync of the folder")


def _of_file(inode: int) -> Callable[[Pending], bool]:
    return lambda op: not isinstance(op, Name) and op.inode == inode
