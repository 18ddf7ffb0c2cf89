"""The durable journal: every accepted change is on disk before it is acknowledged.

The state dir holds `journal.log` (append-only entries), at most one
`snapshot.bin`, and `lock`. Appends are buffered on the trio thread; one writer
task turns everything buffered into a single write and a single fsync in a
worker thread (group commit), then wakes every waiter that batch covered.

Compaction writes a snapshot of the live graph and starts a fresh log. Each
log names the generation of the snapshot it continues, so a crash between any
two steps recovers the same state:

    1. the batch that ends generation G is fsynced in the G log
    2. snapshot.tmp (generation G+1) written, fsynced, renamed, folder fsynced
    3. journal.tmp (header G+1) written, fsynced, renamed, folder fsynced

On recovery a log older than the snapshot is wholly contained in it and is
replaced by an empty log of the snapshot's generation.

As the service's `Store`, the journal is the one-host case: a command is decided once, on
the graph it applies to at once, and the caller waits for the batch's fsync.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from . import logfile
from .files import SetupError, ensure_private_dir, exclusive_lock, fsync_dir, write_durably
from .graph import Graph
from .records import BootImage, Record, UnitImage

if TYPE_CHECKING:
    from .service import Changes, Decide

log = logging.getLogger("unitsync.journal")

LOG_NAME = "journal.log"
SNAPSHOT_NAME = "snapshot.bin"
LOCK_NAME = "lock"
_KILL_AT = os.environ.get("UNITSYNC_TEST_KILL_AT", "")
"""Testing only: the crash point at which a real agent process kills itself."""


class JournalError(Exception):
    """The journal cannot be trusted as it is; the message says what the operator can do."""


class Journal:
    def __init__(
        self,
        state_dir: Path,
        graph: Graph,
        generation: int,
        *,
        log_bytes: int,
        log_records: int,
        snapshot_bytes: int,
        compact_ratio: float,
        compact_min_records: int,
        fd: int,
        lock: contextlib.ExitStack,
    ) -> None:
        self.state_dir = state_dir
        self.graph = graph
        self.generation = generation
        self._fd = fd
        """The log, open for appending; replaced by compaction, closed by `close`."""
        self._lock = lock
        self._log_bytes = log_bytes
        self._log_records = log_records
        self._snapshot_bytes = snapshot_bytes
        self.compact_ratio = compact_ratio
        self.compact_min_records = compact_min_records
        self._pending: list[bytes] = []
        self._pending_records = 0
        self._appended = 0
        self._durable = 0
        self._work = trio.Event()
        self._flushed = trio.Event()
        self._broken: JournalError | None = None
        self._changes: Changes | None = None
        self.location = str(state_dir)
        self.shared = False
        """One agent's own graph: a boot is one of its records (`records.Boot`)."""
        self.fsyncs = 0
        """How many fsyncs of the log so far (group commit makes it far fewer than appends)."""

    # --- opening and recovery ----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        salvage: bool = False,
        compact_ratio: float = 4.0,
        compact_min_records: int = 10_000,
        locked: contextlib.ExitStack | None = None,
    ) -> Journal:
        """Recover the acknowledged state from the state dir (`journal.graph`).

        `locked` is the state dir's lock (`lock_state_dir`) if the caller took it already;
        else it is taken here. The journal holds the lock and the log's descriptor until
        `close()`; use it as a context manager.
        """
        with contextlib.ExitStack() as lock:
            lock.enter_context(locked if locked is not None else lock_state_dir(state_dir))
            with _collector_paused():  # recovery builds only acyclic data: nothing to collect
                recovered = _Recovery(state_dir, salvage).run()
            fd = os.open(state_dir / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            return cls(
                state_dir,
                recovered.graph,
                recovered.generation,
                log_bytes=recovered.log_bytes,
                log_records=recovered.log_records,
                snapshot_bytes=recovered.snapshot_bytes,
                compact_ratio=compact_ratio,
                compact_min_records=compact_min_records,
                fd=fd,
                lock=lock.pop_all(),
            )

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the log and release the state dir's lock."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._lock.close()

    # --- the service's store -------------------------------------------------------------------

    def listen(self, changes: Changes) -> None:
        self._changes = changes

    async def commit(
        self, decide: Decide, about: Sequence[str] | None, *, confirm_noop: bool = True
    ) -> list[Record]:
        """Decide (the graph applies the records as it decides), append, wait for the fsync.

        The service hears of the change before the fsync, so a waiter it wakes can have its
        own change in the same batch; nothing is acknowledged before the batch is on disk.
        """
        records = decide()
        seq = self.append(records)
        if records and self._changes is not None:
            self._changes.applied(records, seq)
        await self.durable(seq)
        return records

    async def settle(self) -> None:
        await self.durable(self._appended)

    @property
    def applied_seq(self) -> int:
        return self._appended

    # --- appending ---------------------------------------------------------------------------

    def append(self, records: list[Record]) -> int:
        """Buffer one command's records; return the sequence number to wait `durable` for."""
        if records:
            self._pending.append(logfile.entry(records))
            self._pending_records += len(records)
            self._appended += 1
            self._work.set()
        return self._appended

    @property
    def durable_seq(self) -> int:
        """Every append up to this sequence number is on disk."""
        return self._durable

    async def durable(self, seq: int) -> None:
        while self._durable < seq:
            if self._broken is not None:
                raise self._broken
            await self._flushed.wait()

    # --- the writer task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write and fsync batches until cancelled; then flush what is left, shielded."""
        task_status.started()
        try:
            while True:
                if not self._pending:
                    self._work = trio.Event()
                    await self._work.wait()
                await self._flush()
        except trio.Cancelled:  # an orderly stop: nothing accepted may stay behind
            with trio.CancelScope(shield=True):
                while self._pending:
                    await self._flush()
            raise
        except OSError as exc:  # disk full, I/O error: stop rather than acknowledge anything
            self._broken = JournalError(f"cannot write {self.state_dir / LOG_NAME}: {exc}")
            self._flushed.set()  # wake every waiter, to be told
            raise self._broken from exc

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        records, self._pending_records = self._pending_records, 0
        upto = self._appended
        # Taken now, the images hold exactly what this batch ends with.
        due = self._compaction_due(records)
        images = (self.graph.boot_image(), list(self.graph.images())) if due else None
        data = b"".join(batch)
        with trio.CancelScope(shield=True):  # a batch taken must be written, even at shutdown
            await trio.to_thread.run_sync(self._write, data)
        self._log_bytes += len(data)
        self._log_records += records
        self._durable = upto
        self._flushed.set()
        self._flushed = trio.Event()
        if images is not None:
            await trio.to_thread.run_sync(self._compact, *images)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._crash_point("entry-written")
        os.fsync(self._fd)
        self.fsyncs += 1

    # --- compaction --------------------------------------------------------------------------

    def _compaction_due(self, incoming: int) -> bool:
        records = self._log_records + incoming
        return records >= self.compact_min_records and (
            self._log_bytes >= self.compact_ratio * max(self._snapshot_bytes, 1)
        )

    def _compact(self, boot: BootImage, images: list[UnitImage]) -> None:
        """Steps 2 and 3 of the module docstring (step 1 is the batch just written)."""
        started = time.monotonic()
        self._crash_point("batch-written")
        generation = self.generation + 1
        data = logfile.snapshot(generation, boot, images)
        write_durably(self.state_dir / SNAPSHOT_NAME, data)
        self._crash_point("snapshot-written")
        new_fd = _fresh_log(self.state_dir, generation)
        self._crash_point("log-replaced")
        os.close(self._fd)
        self._fd, self.generation = new_fd, generation
        self._snapshot_bytes, self._log_bytes, self._log_records = len(data), 0, 0
        log.info(
            "compacted the journal: %d units in a %d-byte snapshot (%.0f ms)",
            len(images),
            len(data),
            (time.monotonic() - started) * 1000,
        )

    def _crash_point(self, step: str) -> None:
        """Where a crash is worth testing: in-process tests replace this method; a test of a
        real agent process names the step in UNITSYNC_TEST_KILL_AT and the agent SIGKILLs
        itself there, once, as a power cut or an OOM kill would."""
        if step == _KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


def lock_state_dir(state_dir: Path) -> contextlib.ExitStack:
    """Create the state dir (private) and take its lock: one agent per state dir.

    Returned as an ExitStack so the journal can own it from then on.
    """
    lock = contextlib.ExitStack()
    try:
        ensure_private_dir(state_dir, "choose another --state-dir")
        lock.enter_context(
            exclusive_lock(
                state_dir / LOCK_NAME,
                f"the state dir {state_dir}",
                "give this one another --state-dir",
            )
        )
    except SetupError as exc:
        lock.close()
        raise JournalError(str(exc)) from None
    return lock


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Without this, loading 30,000 units spends two thirds of its time in the cyclic GC."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fresh_log(state_dir: Path, generation: int) -> int:
    path = state_dir / LOG_NAME
    write_durably(path, logfile.log_header(generation))
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)


class _Recovery:
    """Snapshot + log -> graph, cutting a torn tail and refusing (or salvaging) damage."""

    def __init__(self, state_dir: Path, salvage: bool) -> None:
        self.state_dir = state_dir
        self.salvage = salvage
        self.log_path = state_dir / LOG_NAME
        self.snapshot_path = state_dir / SNAPSHOT_NAME
        self.generation = 0
        self.graph = Graph()
        self.snapshot_bytes = 0
        self.log_bytes = 0
        self.log_records = 0

    def run(self) -> _Recovery:
        for leftover in self.state_dir.glob("*.tmp"):  # a crash mid-write; never renamed
            leftover.unlink()
        self._load_snapshot()
        if not self.log_path.exists():
            os.close(_fresh_log(self.state_dir, self.generation))
            return self
        data = self.log_path.read_bytes()
        log_generation = self._log_generation(data)
        if log_generation < self.generation:
            log.info("finishing an interrupted compaction: the snapshot holds the old journal")
            os.close(_fresh_log(self.state_dir, self.generation))
            return self
        if log_generation > self.generation:
            raise JournalError(
                f"{self.log_path} continues snapshot generation {log_generation}, but "
                f"{self.snapshot_path} is generation {self.generation}: the snapshot is missing "
                "or old; restore it, or move both files aside to start empty"
            )
        self._replay(data)
        return self

    def _load_snapshot(self) -> None:
        if not self.snapshot_path.exists():
            return
        data = self.snapshot_path.read_bytes()
        try:
            self.generation, boot, images = logfile.read_snapshot(data)
        except logfile.Damaged as exc:
            raise JournalError(
                f"{self.snapshot_path} is damaged ({exc}); no file was changed. The snapshot "
                "cannot be salvaged: restore it from a backup, or move the state dir aside to "
                "start empty"
            ) from None
        self.graph = Graph.from_images(images, boot)
        self.snapshot_bytes = len(data)

    def _log_generation(self, data: bytes) -> int:
        try:
            return logfile.read_log_header(data)
        except logfile.Damaged as exc:
            raise JournalError(
                f"{self.log_path} is damaged ({exc}); no file was changed. Move it aside to "
                "start from the snapshot alone"
            ) from None

    def _replay(self, data: bytes) -> None:
        scan = logfile.Scan(end=logfile.LOG_HEADER.size)
        apply = self.graph.apply
        try:
            for records in logfile.entries(data, scan):
                for record in records:
                    apply(record)
        except logfile.Damaged as exc:
            self._damaged(data, scan, exc)
        except KeyError as exc:
            raise JournalError(
                f"{self.log_path} names unit {exc} before it is known, at byte offset "
                f"{scan.end}; the journal does not belong to this snapshot"
            ) from None
        if scan.torn:
            log.warning("%s: cut off a torn tail: %s", self.log_path, scan.torn)
            with open(self.log_path, "r+b") as file:
                file.truncate(scan.end)
                os.fsync(file.fileno())
        self.log_bytes, self.log_records = scan.end - logfile.LOG_HEADER.size, scan.count

    def _damaged(self, data: bytes, scan: logfile.Scan, exc: logfile.Damaged) -> None:
        if not self.salvage:
            raise JournalError(
                f"{self.log_path} is damaged: {exc}; no file was changed. To keep the "
                f"{scan.count} records before that offset and move the damaged file aside, "
                "start the agent with --salvage"
            ) from None
        aside = self.log_path.with_name(f"{LOG_NAME}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        os.rename(self.log_path, aside)
        write_durably(self.log_path, data[: scan.end])
        fsync_dir(self.state_dir)
        log.warning(
            "%s was damaged (%s): kept the %d records before it; the damaged file is now %s",
            self.log_path,
            exc,
            scan.count,
            aside,
        )
