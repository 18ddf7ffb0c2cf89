"""The durable journal: every accepted change is on disk before it is acknowledged.

The state dir holds `journal.log` (append-only entries), at most one
`snapshot.bin`, and `lock`. Appends are buffered on the trio thread; one writer
task turns everything buffered into a single write and a single fsync in a
worker thread (group commit), then wakes every waiter that batch covered. Every
file operation goes through a `disk.Disk`, so tests can crash it or make it fail.

Compaction writes a snapshot of the live graph and starts a fresh log. Each
log names the generation of the snapshot it continues, so a crash between any
two steps recovers the same state:

    1. the batch that ends generation G is fsynced in the G log
    2. snapshot.tmp (generation G+1) written, fsynced, renamed, folder fsynced
    3. journal.tmp (header G+1) written, fsynced, renamed, folder fsynced

On recovery a log older than the snapshot is wholly contained in it and is
replaced by an empty log of the snapshot's generation. So once the snapshot is
renamed into place, the old log must never grow again.

When the disk fails (SPEC §4):

- No space (ENOSPC, EDQUOT) for a batch: the log is cut back to its last whole
  entry (truncate, fsync) and every change not yet durable is refused with
  `NotDurable`. The journal applies each change to its graph as it appends it (so
  commands sharing a group commit see each other), and later changes may build on a
  refused one, so all of them are refused together, and the graph is rebuilt from the
  durable files by the same code as a restart (compaction keeps that short): it
  replaces the journal's graph, and the service hears of it (`Changes.replaced`, as
  when etcd lists afresh). Nothing retries a change: the next change just tries again,
  so changes work as soon as there is room.
- A journal that fills its disk by itself frees it: a refusal makes the writer try a
  compaction at once (the snapshot of the live graph is usually far smaller than the
  log), if it would take less room than the snapshot and log it replaces. Until one
  succeeds a compaction is owed: each batch is preceded by a compaction of the durable
  state (`_make_room`), and refused without being tried if that finds no room, so the
  log never takes the room its compaction needs, a little freed space at a time; with no
  batch coming it is tried on a backoff in time (COMPACT_RETRY_FIRST doubling to
  COMPACT_RETRY_MAX). So are a fresh log that found no room after its snapshot was
  renamed into place (changes are refused until it is written), and the compaction a
  start-up owes because it had no room to copy the log (`_Recovery._settle`).
- Any other failure (EIO above all), of a write or of an fsync: the kernel may
  have dropped the unwritten pages and forgotten the error, so no retry can be
  trusted (fsyncgate). Waiters are told `AgentGone` (their change may or may not
  be saved) and given STOP_GRACE to say so; then `run` raises `JournalError` and
  the agent stops. The next start recovers the last synced state.

The graph's id (SPEC §11) is in every log header and snapshot (`logfile`): made when the
state dir is created, carried through every compaction. A state dir written before graphs
had ids takes one on its first open, made durable by the log's rewrite on recovery.

As the service's `Store` (`agent/store/base.py`), the journal is the one-host case: a
command is decided once, its records are applied to the journal's graph as they are
appended, and the caller waits for the batch's fsync. A boot is one of its records
(`records.Boot`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import math
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import trio

from unitsync.wire.errors import AgentGone, NotDurable
from unitsync.wire.graph_id import new_graph_id
from unitsync.wire.host.backoff import Backoff

from ...core.graph import Graph
from ...core.records import BootImage, Record, UnitImage
from ...files import SetupError, ensure_private_dir, exclusive_lock
from ..base import Changes, Decide
from . import logfile
from .disk import REAL_DISK, Disk, append_all, close_quietly, write_durably, write_temp

log = logging.getLogger("unitsync.journal")

LOG_NAME = "journal.log"
SNAPSHOT_NAME = "snapshot.bin"
LOCK_NAME = "lock"
_KILL_AT = os.environ.get("UNITSYNC_TEST_KILL_AT", "")
"""Testing only: the crash point at which a real agent process kills itself."""

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The failures that leave the disk healthy: refuse the change, keep serving."""
STOP_GRACE = 0.5
"""Seconds a journal that cannot go on gives the requests it failed to tell their clients why."""
COMPACT_RETRY_FIRST = 0.25
"""After a compaction found no room: the first retry, soon (a user freeing space is seen
within a second)."""
COMPACT_RETRY_MAX = 4.0
"""The longest wait between retries while the disk stays full: changes work again within
seconds of space returning, for one snapshot attempt (which fails at its first write) every
few seconds while it does not."""


class JournalError(Exception):
    """The journal cannot be trusted as it is; the message says what the operator can do."""


class _Failed(Exception):
    """A file operation of the journal failed: what it was doing, to which file, and why."""

    def __init__(self, doing: str, path: Path, error: OSError) -> None:
        super().__init__(f"{doing} {path} failed: {error.strerror or error}")
        self.error = error

    @property
    def no_space(self) -> bool:
        return self.error.errno in NO_SPACE


@contextlib.contextmanager
def _doing(what: str, path: Path) -> Iterator[None]:
    """Turn an OSError inside the block into a `_Failed` naming the step and the file."""
    try:
        yield
    except OSError as exc:
        raise _Failed(what, path, exc) from exc


class Journal:
    def __init__(
        self,
        state_dir: Path,
        graph: Graph,
        generation: int,
        *,
        graph_id: str,
        log_bytes: int,
        log_records: int,
        snapshot_bytes: int,
        compact_ratio: float,
        compact_min_records: int,
        fd: int,
        lock: contextlib.ExitStack,
        disk: Disk,
        settled_in_place: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.log_path = state_dir / LOG_NAME
        self.snapshot_path = state_dir / SNAPSHOT_NAME
        self.graph = graph
        """The graph as the durable files and the appends since hold it; replaced whole
        when changes are refused (`_refuse`)."""
        self.generation = generation
        self.graph_id = graph_id
        """The graph's identity (SPEC §11): in every log header and snapshot, for good."""
        self._disk = disk
        self._fd: int | None = fd
        """The log, open for appending; None while a compaction's fresh log is not written."""
        self._torn = False
        """The log may end in part of an entry (a write failed): cut it back before appending."""
        self._snapshot_named = True
        """False from a snapshot's rename until the folder's fsync has made it durable."""
        self._lock = lock
        self._log_bytes = log_bytes
        """Bytes of whole, synced entries in the log (after its header)."""
        self._log_records = log_records
        self._snapshot_bytes = snapshot_bytes
        self.compact_ratio = compact_ratio
        self.compact_min_records = compact_min_records
        self._compaction_owed: str | None = "start-up" if settled_in_place else None
        """Why a compaction is owed for lack of space (a refusal, a compaction or a start-up
        that found no room), None if none is: tried at `_retry_at`, and again with backoff."""
        self._retry_at = 0.0
        """trio time before which no compaction is tried (after one found no room)."""
        self._retry_delays = Backoff(COMPACT_RETRY_FIRST, COMPACT_RETRY_MAX)
        self._compact_tries = 0
        """Compactions that found no room since the last that did."""
        self._pending: list[bytes] = []
        self._pending_records = 0
        self._appended = 0
        self._durable = 0
        self._barrier = 0
        """The latest append the graph in memory reflects: what an empty append waits for."""
        self._refused: list[tuple[int, int, str]] = []
        """Appends in (after, upto] were refused, and the message saying why."""
        self._refused_upto = 0
        self._refusing = 0
        """Changes refused since the last successful write (for the log)."""
        self._gone: str | None = None
        """Set when the journal stops: what each waiting client is told."""
        self._work = trio.Event()
        self._flushed = trio.Event()
        self._broken: JournalError | None = None
        self._changes: Changes | None = None
        self.location = str(state_dir.absolute())
        self.recovers_unaided = False
        """A change refused for want of room goes through only once someone frees some."""
        self.replica_behind_since: float | None = None
        """The journal is this agent's own: never behind anything."""
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
        disk: Disk = REAL_DISK,
    ) -> Journal:
        """Recover the acknowledged state from the state dir (`journal.graph`).

        `locked` is the state dir's lock (`lock_state_dir`) if the caller took it already;
        else it is taken here. The journal holds the lock and the log's descriptor until
        `close()`; use it as a context manager.
        """
        with contextlib.ExitStack() as lock:
            lock.enter_context(locked if locked is not None else lock_state_dir(state_dir))
            try:
                with _collector_paused():  # recovery builds only acyclic data: nothing to collect
                    recovered = _Recovery(state_dir, disk, salvage).run()
                with _doing("opening", state_dir / LOG_NAME):
                    fd = disk.open_append(state_dir / LOG_NAME)
            except _Failed as failure:
                fix = "free some space there" if failure.no_space else "check the disk (dmesg)"
                raise JournalError(
                    f"cannot recover the journal: {failure}; {fix}, then start the agent again"
                ) from None
            return cls(
                state_dir,
                recovered.graph,
                recovered.generation,
                graph_id=recovered.graph_id,
                log_bytes=recovered.log_bytes,
                log_records=recovered.log_records,
                snapshot_bytes=recovered.snapshot_bytes,
                compact_ratio=compact_ratio,
                compact_min_records=compact_min_records,
                fd=fd,
                lock=lock.pop_all(),
                disk=disk,
                settled_in_place=recovered.settled_in_place,
            )

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the log and release the state dir's lock."""
        if self._fd is not None:
            close_quietly(self._disk, self._fd)
            self._fd = None
        self._lock.close()

    # --- the service's store -------------------------------------------------------------------

    def listen(self, changes: Changes) -> None:
        self._changes = changes

    async def commit(
        self, decide: Decide, about: Sequence[str] | None, *, confirm_noop: bool = True
    ) -> list[Record]:
        """Decide, apply and append, then wait for the fsync.

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
        await self.durable(self._barrier)

    async def begin_boot(self, identity: str, *, now: float, host: str) -> int:
        """A new boot is one record of the journal; the graph's `Boot` starts every unit
        over (SPEC §7). `host` plays no part: this graph is one host's own."""
        await self.commit(lambda: self.graph.begin_boot(identity, now=now), None)
        return self.graph.boot

    @property
    def applied_seq(self) -> int:
        """The last change the graph holds: refused ones are undone, so not those."""
        return self._barrier

    # --- appending ---------------------------------------------------------------------------

    def append(self, records: list[Record]) -> int:
        """Apply one command's records to the graph and buffer them; return the sequence
        number to wait `durable` for."""
        if records:
            apply = self.graph.apply
            for record in records:
                apply(record)
            self._pending.append(logfile.entry(records))
            self._pending_records += len(records)
            self._appended += 1
            self._barrier = self._appended
            self._work.set()
        return self._barrier

    @property
    def durable_seq(self) -> int:
        """Every append up to this sequence number is on disk (or was refused)."""
        return self._durable

    async def durable(self, seq: int) -> None:
        """Return once append `seq` is on disk; raise NotDurable if it was refused, or
        AgentGone if the journal stopped before it was."""
        while True:
            if seq <= self._refused_upto:  # rare: only after the disk ran out of space
                for after, upto, message in self._refused:
                    if after < seq <= upto:
                        raise NotDurable(message)
            if self._durable >= seq:
                return
            if self._gone is not None:
                raise AgentGone(self._gone)
            await self._flushed.wait()

    # --- the writer task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write and fsync batches until cancelled; then flush what is left, shielded.

        Raises JournalError when the disk fails in a way no retry can be trusted with.
        """
        task_status.started()
        try:
            while True:
                if not self._pending:
                    self._work = trio.Event()
                    with trio.move_on_at(self._retry_deadline()):
                        await self._work.wait()
                    if not self._pending:  # no change came: time for an owed compaction
                        await self._compact_owed()
                        continue
                await self._flush()
        except trio.Cancelled:  # an orderly stop: nothing accepted may stay behind
            with trio.CancelScope(shield=True):
                while self._pending:
                    await self._flush()
            raise

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        records, self._pending_records = self._pending_records, 0
        upto = self._appended
        room_first = self._compaction_owed is not None and self._fd is not None
        # Taken now, the images hold exactly what this batch ends with.
        due, only_if_smaller = (False, False) if room_first else self._compaction_due(records)
        images = (self.graph.boot_image(), list(self.graph.images())) if due else None
        data = b"".join(batch)
        with trio.CancelScope(shield=True):  # a batch taken must be written, even at shutdown
            try:
                if room_first:  # the log must not take the room its compaction needs
                    await self._make_room()
                await trio.to_thread.run_sync(self._write, data)
            except _Failed as failure:
                if not failure.no_space:
                    await self._stop(failure)
                await self._refuse(failure)
                return
            self._written(len(data), records, upto)
            if images is not None:
                await self._compact_now(images, only_if_smaller)

    def _write(self, data: bytes) -> None:
        """In a worker thread: append `data` to the log and fsync it."""
        if self._fd is None:
            self._start_fresh_log()
        if self._torn:
            self._cut_back()
        disk, fd = self._disk, self._fd
        assert fd is not None
        self._torn = True
        doing = "writing to"
        try:
            append_all(disk, fd, data)
            self._crash_point("entry-written")
            doing = "fsync of"
            self._sync_batch(fd)
        except OSError as exc:
            failure = _Failed(doing, self.log_path, exc)
            if failure.no_space:
                self._cut_back()
            raise failure from exc
        self._torn = False
        self.fsyncs += 1

    def _sync_batch(self, fd: int) -> None:
        """Make the batch just written durable: one fsync, never retried. A failed fsync
        may have dropped the pages it was to write, and a second would then succeed with
        them never on disk (fsyncgate): the failure is final (`_stop`)."""
        self._disk.fsync(fd)

    def _written(self, size: int, records: int, upto: int) -> None:
        self._log_bytes += size
        self._log_records += records
        self._durable = upto
        if self._refusing:
            log.info(
                "changes are saved again in %s (%d refused while there was no room)",
                self.state_dir,
                self._refusing,
            )
            self._refusing = 0
        self._wake()

    def _wake(self) -> None:
        self._flushed.set()
        self._flushed = trio.Event()

    # --- when the disk fails -----------------------------------------------------------------

    def _cut_back(self) -> None:
        """Drop whatever follows the last whole entry, durably, before anything is appended."""
        assert self._fd is not None
        with _doing("cutting back", self.log_path):
            self._disk.truncate(self._fd, logfile.LOG_HEADER.size + self._log_bytes)
            self._disk.fsync(self._fd)
        self._torn = False

    async def _refuse(self, failure: _Failed) -> None:
        """No room: refuse every change not yet durable and undo them all in memory."""
        try:
            graph, mount = await trio.to_thread.run_sync(self._durable_state)
        except (_Failed, JournalError) as exc:
            await self._stop(exc)
        # From here to the end nothing awaits: appends that came in meanwhile are refused too.
        after, upto = self._durable, self._appended
        self._pending, self._pending_records = [], 0
        if failure.error.errno == errno.EDQUOT:
            why, fix = f"the disk quota on {mount} is used up", "free some space or raise the quota"
        else:
            why, fix = f"the disk {mount} is full", "free some space there"
        message = (
            f"not saved: {why} ({failure}), so nothing changed; {fix} and retry: the agent "
            "takes changes again as soon as there is room, without a restart"
        )
        if not self._refusing:
            log.warning("%s: refusing changes until there is room; reads and waits go on", failure)
        if self._refused and self._refused[-1][0] == after:  # still refusing since `after`
            self._refusing += upto - self._refused[-1][1]
            self._refused[-1] = (after, upto, message)
        else:
            self._refusing += upto - after
            self._refused.append((after, upto, message))
        self._refused_upto = upto
        self._barrier = after
        self.graph = graph
        if self._changes is not None:
            self._changes.replaced(upto)
        self._wake()
        # The graph is the durable state again: the journal may be what fills the disk.
        self._compaction_owed = self._compaction_owed or "a change was refused"
        if trio.current_time() >= self._retry_at:
            await self._compact_now((graph.boot_image(), list(graph.images())), True)

    def _durable_state(self) -> tuple[Graph, Path]:
        """In a worker thread: the graph as the durable files hold it, and the disk they are on."""
        with _collector_paused():
            graph = _Recovery(self.state_dir, self._disk, salvage=False).run(repair=False).graph
        return graph, _mount_point(self.state_dir)

    async def _stop(self, failure: Exception) -> NoReturn:
        """Tell every waiter its change may be lost, then stop the agent: nothing is retried."""
        self._gone = (
            f"the agent is stopping: {failure}; this change may or may not have been saved: "
            "once an agent runs again, look with `unitsync sync status`"
        )
        log.error("%s; stopping (nothing is retried once a write or fsync failed)", failure)
        if self._torn:  # so the next start finds no part of what nobody was told was saved
            await trio.to_thread.run_sync(self._cut_back_quietly)
        self._wake()
        with trio.CancelScope(shield=True):
            await trio.sleep(STOP_GRACE)
        why = (
            "The kernel may have dropped what was not yet written, so the agent stops rather "
            "than retry. Check the disk (dmesg, df), then start the agent again: it recovers "
            "the last synced state"
            if isinstance(failure, _Failed)
            else "The agent stopped"
        )
        raise JournalError(f"{failure}. {why}") from failure

    def _cut_back_quietly(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self._disk.truncate(self._fd, logfile.LOG_HEADER.size + self._log_bytes)

    # --- compaction --------------------------------------------------------------------------

    def _compaction_due(self, incoming: int) -> tuple[bool, bool]:
        """Is a compaction due after the batch of `incoming` records, and is it owed for
        lack of space only (then worth running only if it frees space)?"""
        if trio.current_time() < self._retry_at:
            return False, False
        records = self._log_records + incoming
        by_size = (
            records >= self.compact_min_records
            and self._log_bytes >= self.compact_ratio * max(self._snapshot_bytes, 1)
        )
        return by_size or self._compaction_owed is not None, not by_size

    def _retry_deadline(self) -> float:
        """When the writer, idle, tries an owed compaction (or a fresh log) on its own."""
        return self._retry_at if self._compaction_owed is not None else math.inf

    async def _compact_owed(self) -> None:
        """With no change pending (the graph is exactly the durable state): the compaction
        owed for lack of space (or the fresh log one could not write), if it is time."""
        if self._compaction_owed is None or trio.current_time() < self._retry_at:
            return
        images = (self.graph.boot_image(), list(self.graph.images()))
        await self._compact_now(images, only_if_smaller=True)

    async def _make_room(self) -> None:
        """Before a batch, while a compaction is owed for lack of space: compact the durable
        state first. If that finds no room, the batch is refused (`_Failed`) without being
        tried: what room there is, the compaction needs, and it frees far more."""
        try:
            done = await trio.to_thread.run_sync(self._compact_durable_state)
        except JournalError as exc:  # the files do not read back: as when refusing
            await self._stop(exc)
        except _Failed as failure:
            if not failure.no_space:
                raise
            self._put_off(failure)
            if self._fd is not None:  # (else the snapshot is in place: the log goes on)
                raise
            return
        if done:
            self._compacted()
        else:
            self._compaction_owed = None

    def _compact_durable_state(self) -> bool:
        """In a worker thread: compact to the state the files hold (`_compact`), if it takes
        less room than they do."""
        with _collector_paused():
            graph = _Recovery(self.state_dir, self._disk, salvage=False).run(repair=False).graph
        return self._compact(graph.boot_image(), list(graph.images()), True)

    async def _compact_now(
        self, images: tuple[BootImage, list[UnitImage]], only_if_smaller: bool
    ) -> None:
        """Compact to `images` (the durable state) in a worker thread; put off on no room."""
        with trio.CancelScope(shield=True):  # its steps are the journal's state: finish them
            try:
                done = await trio.to_thread.run_sync(self._compact, *images, only_if_smaller)
            except _Failed as failure:
                if not failure.no_space:
                    await self._stop(failure)
                self._put_off(failure)
                return
        if done:
            self._compacted()
        else:  # it would not free space: nothing owed until the next refusal
            self._compaction_owed = None

    def _put_off(self, failure: _Failed) -> None:
        """A compaction (or its fresh log) found no room: try again after the backoff."""
        self._compaction_owed = self._compaction_owed or "a compaction found no room"
        self._compact_tries += 1
        delay = self._retry_delays.next()
        self._retry_at = trio.current_time() + delay
        if self._compact_tries == 1:
            log.warning(
                "could not compact the journal (%s); trying again in %gs, backing off to "
                "every %gs while there is no room",
                failure,
                delay,
                COMPACT_RETRY_MAX,
            )

    def _compacted(self) -> None:
        if self._compact_tries:
            log.info(
                "the journal is compacted after %d tries that found no room", self._compact_tries
            )
        self._compaction_owed, self._compact_tries = None, 0
        self._retry_at = 0.0
        self._retry_delays.reset()

    def _compact(self, boot: BootImage, images: list[UnitImage], only_if_smaller: bool) -> bool:
        """Steps 2 and 3 of the module docstring (step 1 is the batch just written), in a
        worker thread. False if, `only_if_smaller`, it would not take less room than the
        snapshot and log it replaces (nothing is written then). `_Failed` if a step failed:
        with no room for the snapshot, nothing changed; for the fresh log, changes wait for
        it (`_fd` is None)."""
        if self._fd is None:  # the snapshot is in place; its fresh log found no room
            self._start_fresh_log()
            return True
        started = time.monotonic()
        self._crash_point("batch-written")
        generation = self.generation + 1
        data = logfile.snapshot(generation, boot, images, self.graph_id)
        if only_if_smaller and len(data) >= self._snapshot_bytes + self._log_bytes:
            return False
        disk = self._disk
        try:
            with _doing("writing", self.snapshot_path):
                disk.rename(write_temp(disk, self.snapshot_path, data), self.snapshot_path)
        except _Failed as failure:
            if failure.no_space:
                with contextlib.suppress(OSError):
                    disk.unlink(self.snapshot_path.with_name(SNAPSHOT_NAME + ".tmp"))
            raise
        # A restart may find the new snapshot from now on: the old log must not grow again.
        close_quietly(disk, self._fd)  # type: ignore[arg-type]
        self._fd, self.generation, self._snapshot_named = None, generation, False
        self._snapshot_bytes, self._log_bytes, self._log_records = len(data), 0, 0
        self._start_fresh_log()
        self._crash_point("log-replaced")
        log.info(
            "compacted the journal: %d units in a %d-byte snapshot (%.0f ms)",
            len(images),
            len(data),
            (time.monotonic() - started) * 1000,
        )
        return True

    def _start_fresh_log(self) -> None:
        """Step 3 of compaction, which a full disk may put off until the next batch."""
        if not self._snapshot_named:  # a new log must never be found without its snapshot
            with _doing("syncing the folder of", self.snapshot_path):
                self._disk.fsync_dir(self.state_dir)
            self._snapshot_named = True
            self._crash_point("snapshot-written")
        with _doing("writing a fresh", self.log_path):
            _write_fresh_log(self._disk, self.state_dir, self.generation, self.graph_id)
            self._fd = self._disk.open_append(self.log_path)
        self._torn = False

    def _crash_point(self, step: str) -> None:
        """Where a crash is worth testing: in-process tests replace this method; a test of a
        real agent process names the step in UNITSYNC_TEST_KILL_AT and the agent SIGKILLs
        itself there, once, as a power cut or an OOM kill would."""
        if step == _KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


def lock_state_dir(state_dir: Path, serving: Path | None = None) -> contextlib.ExitStack:
    """Create the state dir (private) and take its lock: one agent per state dir. The lock
    file records our pid and `serving`, the socket this agent serves, so a client whose
    agent cannot start here can tell which socket the state dir's agent is at.

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
                str(serving) if serving is not None else "",
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


def _write_fresh_log(disk: Disk, state_dir: Path, generation: int, graph_id: str) -> None:
    write_durably(disk, state_dir / LOG_NAME, logfile.log_header(generation, graph_id))


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding `path`: the disk to name when it is full."""
    try:
        device = os.stat(path).st_dev
        while path.parent != path and os.stat(path.parent).st_dev == device:
            path = path.parent
    except OSError:
        pass
    return path


class _Recovery:
    """Snapshot + log -> graph, cutting a torn tail and refusing (or salvaging) damage."""

    def __init__(self, state_dir: Path, disk: Disk, salvage: bool) -> None:
        self.state_dir = state_dir
        self.disk = disk
        self.salvage = salvage
        self.log_path = state_dir / LOG_NAME
        self.snapshot_path = state_dir / SNAPSHOT_NAME
        self.generation = 0
        self.graph_id = ""
        """The graph's id, from the snapshot or the log; made here for a new state dir, or
        one written before graphs had ids (`_take_graph_id`)."""
        self.graph = Graph()
        self.snapshot_bytes = 0
        self.log_bytes = 0
        self.log_records = 0
        self.settled_in_place = False
        """There was no room to copy the log: a compaction is owed once there is."""

    def run(self, *, repair: bool = True) -> _Recovery:
        """Load the durable state; with `repair`, also finish what a crash left half done
        (temp files, a torn tail, a missing log) and make durable what was found. Without,
        no file is changed."""
        if repair:
            with _doing("syncing the folder of", self.log_path):  # what names it finds, first
                self.disk.fsync_dir(self.state_dir)
            self._remove_leftovers()
        self._load(repair)
        return self

    def _load(self, repair: bool) -> None:
        self._load_snapshot()
        with _doing("reading", self.log_path):
            data = self.disk.read(self.log_path)
        header = None if data is None else self._log_header(data)
        self._take_graph_id(header)
        if data is None or header is None:
            if repair:
                self._fresh_log()
            return
        if header.generation < self.generation:
            if repair:
                log.info("finishing an interrupted compaction: the snapshot holds the old journal")
                self._fresh_log()
            return
        if header.generation > self.generation:
            raise JournalError(
                f"{self.log_path} continues snapshot generation {header.generation}, but "
                f"{self.snapshot_path} is generation {self.generation}: the snapshot is missing "
                "or old; restore it, or move both files aside to start empty"
            )
        self._replay(data, header, repair)

    def _take_graph_id(self, header: logfile.LogHeader | None) -> None:
        """The snapshot's id, else the log's; a new one for a new state dir, or for one
        written before graphs had ids (the log rewritten on this open makes it durable)."""
        logged = header.graph if header is not None else ""
        same_generation = header is not None and header.generation == self.generation
        if self.graph_id and logged and same_generation and logged != self.graph_id:
            raise JournalError(
                f"{self.log_path} belongs to graph {logged}, but {self.snapshot_path} to "
                f"graph {self.graph_id}: the two files come from different state dirs; no "
                "file was changed. Put back the journal that goes with the snapshot, or move "
                "both aside to start empty"
            )
        self.graph_id = self.graph_id or logged
        if not self.graph_id:
            self.graph_id = new_graph_id()
            if header is not None or self.snapshot_bytes:
                log.info(
                    "the state dir %s was written before graphs had ids: its graph is now %s",
                    self.state_dir,
                    self.graph_id,
                )

    def _remove_leftovers(self) -> None:
        """A temp file is a crash mid-write, never renamed: nothing in it was acknowledged."""
        for name in self.disk.names(self.state_dir):
            if name.endswith(".tmp"):
                with _doing("removing", self.state_dir / name):
                    self.disk.unlink(self.state_dir / name)

    def _fresh_log(self) -> None:
        with _doing("writing a fresh", self.log_path):
            _write_fresh_log(self.disk, self.state_dir, self.generation, self.graph_id)

    def _load_snapshot(self) -> None:
        with _doing("reading", self.snapshot_path):
            data = self.disk.read(self.snapshot_path)
        if data is None:
            return
        try:
            snapshot = logfile.read_snapshot(data)
        except logfile.Damaged as exc:
            raise JournalError(
                f"{self.snapshot_path} is damaged ({exc}); no file was changed. The snapshot "
                "cannot be salvaged: restore it from a backup, or move the state dir aside to "
                "start empty"
            ) from None
        self.generation, self.graph_id = snapshot.generation, snapshot.graph
        self.graph = Graph.from_images(snapshot.units, snapshot.boot)
        self.snapshot_bytes = len(data)

    def _log_header(self, data: bytes) -> logfile.LogHeader:
        try:
            return logfile.read_log_header(data)
        except logfile.Damaged as exc:
            raise JournalError(
                f"{self.log_path} is damaged ({exc}); no file was changed. Move it aside to "
                "start from the snapshot alone"
            ) from None

    def _replay(self, data: bytes, header: logfile.LogHeader, repair: bool) -> None:
        scan = logfile.Scan(end=header.size)
        apply = self.graph.apply
        try:
            for records in logfile.entries(data, scan):
                for record in records:
                    apply(record)
        except logfile.Damaged as exc:
            self._damaged(data, scan, exc, repair)
        except KeyError as exc:
            raise JournalError(
                f"{self.log_path} names unit {exc} before it is known, at byte offset "
                f"{scan.end}; the journal does not belong to this snapshot"
            ) from None
        if repair:
            if scan.torn:
                log.warning("%s: cut off a torn tail: %s", self.log_path, scan.torn)
            self._settle(data[: scan.end], header)
        self.log_bytes, self.log_records = scan.end - header.size, scan.count

    def _settle(self, data: bytes, header: logfile.LogHeader) -> None:
        """Make the log recovery found durable before anything is acknowledged on top of it:
        a process that died (or failed) between a write and its fsync left it in the page
        cache only (the names were synced first, in `run`).

        Its whole entries are copied to a fresh file (temp, fsync, rename, fsync of the
        folder) rather than fsynced in place: if the last agent's fsync failed, the kernel
        may have marked its pages clean and told that agent alone, so an fsync here would
        succeed with those bytes never on disk (fsyncgate). Pages this process writes and
        syncs are its own to hear about. With no room for the copy it is fsynced in place, as
        a full disk is far likelier than a restart after a failed fsync.

        The copy has the header of today's format, with the graph's id: how a log written
        before graphs had ids takes one, durably. That one cannot be synced in place: with
        no room for its copy, the agent does not start (it says to free some space)."""
        fresh = logfile.log_header(header.generation, self.graph_id)
        in_place = data[: header.size] == fresh
        try:
            with _doing("copying", self.log_path):
                write_durably(self.disk, self.log_path, fresh + data[header.size :])
        except _Failed as failure:
            if not (failure.no_space and in_place):
                raise
            log.warning("%s; syncing it in place instead", failure)
            with contextlib.suppress(OSError):
                self.disk.unlink(self.log_path.with_name(LOG_NAME + ".tmp"))
            with _doing("syncing", self.log_path):
                fd = self.disk.open_append(self.log_path)
                try:
                    self.disk.truncate(fd, len(data))
                    self.disk.fsync(fd)
                finally:
                    close_quietly(self.disk, fd)
                self.disk.fsync_dir(self.state_dir)
            self.settled_in_place = True

    def _damaged(self, data: bytes, scan: logfile.Scan, exc: logfile.Damaged, repair: bool) -> None:
        if not (self.salvage and repair):
            raise JournalError(
                f"{self.log_path} is damaged: {exc}; no file was changed. To keep the "
                f"{scan.count} records before that offset and move the damaged file aside, "
                "start the agent with --salvage"
            ) from None
        aside = self.log_path.with_name(f"{LOG_NAME}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        with _doing("salvaging", self.log_path):
            self.disk.rename(self.log_path, aside)
            write_durably(self.disk, self.log_path, data[: scan.end])  # syncs the rename too
        log.warning(
            "%s was damaged (%s): kept the %d records before it; the damaged file is now %s",
            self.log_path,
            exc,
            scan.count,
            aside,
        )
