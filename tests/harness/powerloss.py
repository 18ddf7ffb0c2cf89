"""The power-loss harness: run a workload on a `SimDisk`, then check every crash state.

A workload is a list of operations: `append` (one group commit of one to three
changes), `compaction` (a change whose batch compacts the journal) and `restart`
(close and reopen; a process restart keeps the page cache). The journal runs as in
the agent, except that a seed always gives the same trace of disk operations
(`repeatable`).

`check` then takes every checkpoint of that trace and every state a power loss there
can leave (`crashdisk.py`), and holds each to the oracle:

1. the snapshot is exactly the old one or the new one;
2. recovery succeeds, and recovers the submitted changes applied in order up to some
   point at or after the last acknowledged one (so nothing is lost, nothing invented);
3. recovery's own operations are crashed the same way, and each of those states
   recovers to the same graph;
4. recovering a second time gives the same graph and changes no file.

A failure names the seed, the workload operation, the disk operation and the fates.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import random
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio
import trio.testing

from unitsync.agent.core.graph import Graph, Refused
from unitsync.agent.core.records import Record
from unitsync.agent.store.journal.writer import SNAPSHOT_NAME, Journal, JournalError

from .crashdisk import Checkpoint, SimDisk

OPS = ("append", "compaction", "restart")
UNITS = [f"unit-{i}" for i in range(6)]
NEVER = 10**9
"""A compaction threshold no workload reaches: only `compaction` compacts."""
REASON_SIZES = (0, 30, 300, 700)
"""Reasons of these lengths make batches that end inside, at and past sector boundaries."""

_encoder = msgspec.msgpack.Encoder()


def canonical(graph: Graph) -> bytes:
    """Everything the graph holds, as comparable bytes."""
    return _encoder.encode(sorted(graph.images(), key=lambda image: image.name))


@dataclass
class Trace:
    """One workload's run: its disk, and what was submitted and acknowledged when."""

    seed: str
    ops: Sequence[str]
    disk: SimDisk
    states: list[bytes] = field(default_factory=list)
    """The graph after each submitted change; states[0] before any."""
    submitted: list[int] = field(default_factory=list)
    """The checkpoint after which change k+1 was submitted."""
    acked: list[int] = field(default_factory=list)
    """The checkpoint after which change k+1 was acknowledged (acks come in order)."""
    op_starts: list[int] = field(default_factory=list)
    """The checkpoint at which workload operation i began."""

    def where(self, checkpoint: Checkpoint) -> str:
        i = bisect.bisect_right(self.op_starts, checkpoint.index) - 1
        op = f"workload op {i} ({self.ops[i]})" if i >= 0 else "opening the journal"
        return (
            f"seed {self.seed!r}, {op}, power lost after disk operation {checkpoint.index} "
            f"({checkpoint.what})"
        )


@dataclass
class Report:
    workloads: int = 0
    checkpoints: int = 0
    states: int = 0
    """Power-loss states built (every combination of fates, or the samples)."""
    recovered: int = 0
    """Distinct states recovered (identical states are recovered once)."""
    recovery_states: int = 0
    """States left by a power loss during a recovery, each recovered again."""
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.workloads} workloads, {self.checkpoints} crash points, {self.states} "
            f"power-loss states ({self.recovered} distinct, each recovered), "
            f"{self.recovery_states} states of crashed recoveries, {self.seconds:.1f} s"
        )


# --- running a workload --------------------------------------------------------------------


@contextlib.contextmanager
def repeatable(seed: str) -> Iterator[None]:
    """One seed, one trace: worker-thread calls run inline in the trio thread, and trio's
    scheduler (which shuffles the tasks it runs, to shake out ordering bugs) draws from
    a generator seeded with `seed`, as pytest-trio does for hypothesis."""
    scheduler = trio._core._run._r
    state = scheduler.getstate()
    scheduler.seed(seed)
    try:
        with inline_threads():
            yield
    finally:
        scheduler.setstate(state)


@contextlib.contextmanager
def inline_threads() -> Iterator[None]:

    async def run_sync(fn: Callable[..., Any], *args: Any, **_kw: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    real = trio.to_thread.run_sync
    trio.to_thread.run_sync = run_sync  # type: ignore[assignment]
    try:
        yield
    finally:
        trio.to_thread.run_sync = real


def random_ops(seed: int, count: int) -> list[str]:
    """A long workload: mostly appends, with compactions and restarts among them."""
    return random.Random(seed).choices(OPS, weights=(6, 2, 2), k=count)


def run_workload(folder: Path, seed: str, ops: Sequence[str], disk: SimDisk | None = None) -> Trace:
    trace = Trace(seed, ops, disk or SimDisk(folder))
    with repeatable(seed):
        trio.run(_drive, trace, folder)
    return trace


async def _drive(trace: Trace, folder: Path) -> None:
    rng = random.Random(trace.seed)
    clock = itertools.count(1.0)
    journal = Journal.open(folder, disk=trace.disk, compact_min_records=NEVER)
    trace.states.append(canonical(journal.graph))
    try:
        for i, op in enumerate(trace.ops):
            trace.op_starts.append(trace.disk.last)
            if op == "restart":
                journal.close()
                journal = Journal.open(folder, disk=trace.disk, compact_min_records=NEVER)
                assert canonical(journal.graph) == trace.states[-1], (
                    f"seed {trace.seed!r}, op {i}: a clean restart lost or invented changes"
                )
                continue
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                if op == "compaction":
                    journal.compact_min_records, journal.compact_ratio = 0, 0.0
                count = 1 if op == "compaction" else rng.randint(1, 3)
                await _commit(journal, trace, count, lambda graph: _change(graph, rng, next(clock)))
                await trio.testing.wait_all_tasks_blocked()  # the compaction, if any, is done
                journal.compact_min_records, journal.compact_ratio = NEVER, 4.0
                nursery.cancel_scope.cancel()
    finally:
        journal.close()


async def _commit(
    journal: Journal, trace: Trace, count: int, change: Callable[[Graph], list[Record]]
) -> None:
    """Apply and submit `count` changes (one group commit), then wait for each acknowledgement."""
    seqs = []
    for _ in range(count):
        records = change(journal.graph)
        if records:
            seqs.append(journal.append(records))
            trace.submitted.append(trace.disk.last)
            trace.states.append(canonical(journal.graph))
    for seq in seqs:
        await journal.durable(seq)
        trace.acked.append(trace.disk.last)


def _change(graph: Graph, rng: random.Random, now: float) -> list[Record]:
    """A random command's records (none if the graph refused it)."""
    name, dep = rng.choice(UNITS), rng.choice(UNITS)
    reason = "".join(rng.choices(string.ascii_lowercase, k=rng.choice(REASON_SIZES)))
    try:
        match rng.randrange(5):
            case 0:
                return graph.want(name, [dep], now=now)[0]
            case 1:
                records = graph.admit(name, rerun=True, now=now)
                if graph.readiness(name).ready:
                    records += graph.start(name, rerun=True, now=now, token=reason[:16])
                return records
            case 2:
                return graph.complete(name, force=True, now=now)
            case 3:
                return graph.fail(name, reason, now=now, force=True)
            case _:
                return graph.reset(name, now=now)
    except Refused:
        return _new_unit(graph, rng, now)


def _new_unit(graph: Graph, rng: random.Random, now: float) -> list[Record]:
    """A change that is never refused: a new unit wanting an old one."""
    return graph.want(f"new-{len(graph.units)}", [rng.choice(UNITS)], now=now)[0]


# --- checking every crash state ------------------------------------------------------------


@contextlib.contextmanager
def quiet_recovery() -> Iterator[None]:
    """Recovery logs every torn tail it cuts; thousands of them say nothing here."""
    logger = logging.getLogger("unitsync.journal")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check(trace: Trace, folder: Path, report: Report) -> None:
    """Hold every power-loss state of `trace` to the oracle (module docstring)."""
    started = time.monotonic()
    seen: dict[frozenset[tuple[str, bytes]], bytes] = {}
    where_found: dict[bytes, list[int]] = {}
    for k, state in enumerate(trace.states):
        where_found.setdefault(state, []).append(k)
    with quiet_recovery():
        for checkpoint in trace.disk.checkpoints:
            report.checkpoints += 1
            acked = bisect.bisect_right(trace.acked, checkpoint.index)
            submitted = bisect.bisect_right(trace.submitted, checkpoint.index)
            snapshots = (checkpoint.durable(SNAPSHOT_NAME), checkpoint.volatile.get(SNAPSHOT_NAME))
            for fates, files in checkpoint.states(trace.seed):
                report.states += 1

                def fail(problem: str) -> None:
                    raise AssertionError(f"{trace.where(checkpoint)}, fates {fates}: {problem}")  # noqa: B023

                if files.get(SNAPSHOT_NAME) not in snapshots:
                    fail("the snapshot is neither the old one nor the new one")
                key = frozenset(files.items())
                if key not in seen:
                    seen[key] = _recover_checked(folder, files, report, fail)
                found = where_found.get(seen[key], [])
                if not any(acked <= k <= submitted for k in found):
                    fail(
                        f"recovered a state that is not the first k submitted changes for any "
                        f"k in {acked}..{submitted} (acknowledged..submitted); it matches "
                        f"k in {found or 'nothing ever submitted'}"
                    )
    report.workloads += 1
    report.seconds += time.monotonic() - started


def _recover_checked(
    folder: Path, files: dict[str, bytes], report: Report, fail: Callable[[str], None]
) -> bytes:
    """Recover `files`; crash that recovery everywhere; recover again. Return the graph."""
    report.recovered += 1
    disk = SimDisk(folder, files)
    try:
        recovered = recover(folder, disk)
    except JournalError as exc:
        fail(f"recovery refused to start: {exc}")
    for checkpoint in disk.checkpoints[1:]:  # a power loss during the recovery itself
        for fates, crashed in checkpoint.states(f"recovery:{checkpoint.index}"):
            if crashed == files:
                continue  # lost everything recovery did: that state is the one just recovered
            report.recovery_states += 1
            try:
                again = recover(folder, SimDisk(folder, crashed))
            except JournalError as exc:
                fail(f"power lost during recovery ({checkpoint.what}, {fates}): {exc}")
            if again != recovered:
                fail(f"power lost during recovery ({checkpoint.what}, {fates}) changed the state")
    before = disk.files
    if recover(folder, disk) != recovered:
        fail("recovering a second time gave another state")
    if disk.files != before:
        fail(f"recovering a second time changed files again ({disk.checkpoints[-1].what})")
    return recovered


def recover(folder: Path, disk: SimDisk) -> bytes:
    """Open the journal on `disk` (as a start would) and return the graph it recovered."""
    journal = Journal.open(folder, disk=disk)
    try:
        return canonical(journal.graph)
    finally:
        journal.close()
