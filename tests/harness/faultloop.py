"""The fault loop: a scripted workload through the service, with the nth disk operation failing.

The service and journal run as in the agent (minus the socket), on a recording disk
(`crashdisk.SimDisk`) behind a `faultdisk.FaultyDisk`, repeatably (`powerloss.repeatable`)
and on a mock clock, so that one fault always gives one run. Every commit (every change
a command makes durable) is watched; the run checks:

- each commit ends acknowledged, refused with NotDurable (exit 6, naming the state
  dir, saying what to do), or, when the journal stops, unknown (AgentGone: "may or may
  not have been saved"); none hangs, and nothing else is raised;
- between steps, with everything settled: the log ends with its last whole entry, and
  the graph the service serves is exactly the one the files hold; after a refusal,
  status still answers;
- no space from then on: the next change is refused too; once space returns (the
  fault lifted) the very next change is acknowledged by the same journal, no restart
  (the compaction the refusals owe goes first); then time passes (`PAUSE`), for what a
  journal owes after no room to be made on its timer;
- a stopped journal (EIO) raises JournalError; a start on a still-failing disk is
  refused clearly; once the disk is fixed the next start recovers;
- every (re)start recovers exactly the acknowledged changes, plus a prefix (in order)
  of the unknown ones, and nothing else.

`check_power_loss` then holds every power-loss state of the run's trace (crashdisk.py)
to the same rule, so a power failure in the middle of cutting back, rebuilding or
finishing a compaction is covered too: the changes acknowledged by then, plus a prefix
of those not yet settled; never one its client was told was refused. A change whose
client was told "unknown" stays unsettled until the next start finds it saved or lost:
after a failed fsync the crash disk may keep or lose it whatever is synced later
(fsyncgate), so until then either is right, and from then on only what that start found.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

from unitsync.agent.core.graph import Graph
from unitsync.agent.core.records import Record
from unitsync.agent.service import Service
from unitsync.agent.starting import start_when_ready
from unitsync.agent.store.journal import logfile
from unitsync.agent.store.journal.writer import (
    COMPACT_RETRY_MAX,
    LOG_NAME,
    SNAPSHOT_NAME,
    Journal,
    JournalError,
)
from unitsync.wire.errors import EXIT_NOT_DURABLE, AgentGone, NotDurable, Refused
from unitsync.wire.protocol import Complete, Fail, Forget, Reset, Start, Status, Want

from .crashdisk import SimDisk
from .faultdisk import Fault, FaultyDisk
from .powerloss import NEVER, canonical, quiet_recovery, recover, repeatable

WAIT_LIMIT = 60.0
"""Virtual seconds a `start` may wait before the workload moves on (it may be blocked by
a refused completion: that is the point)."""

Command = Callable[[Service], Awaitable[object]]


def want(unit: str, *deps: str) -> Command:
    return lambda service: service.want(Want(unit, list(deps)))


def start(unit: str, limit: float = WAIT_LIMIT) -> Command:
    async def run(service: Service) -> object:
        async def progress(_event: object) -> None:
            pass

        with trio.move_on_after(limit):
            request = Start(unit, rerun=True, token=f"t-{unit}")
            return await start_when_ready(service, request, progress)
        return "still waiting"

    return run


def complete(unit: str) -> Command:
    return lambda service: service.complete(Complete(unit, force=True))


def fail(unit: str, reason: str) -> Command:
    return lambda service: service.fail(Fail(unit, reason, force=True))


def reset(unit: str) -> Command:
    return lambda service: service.reset(Reset(unit))


def forget(unit: str) -> Command:
    return lambda service: service.forget(Forget(unit))


RESTART = "restart"
COMPACT = "compact"
BACKGROUND = "background"
JOIN = "join"
PAUSE = "pause"
"""Time passes with no change coming: the journal tries what it owes on its own timer (a
compaction, or the fresh log of one, that found no room)."""
PAUSE_SECONDS = 3 * COMPACT_RETRY_MAX

STEPS: list[list[Command] | tuple[str, ...]] = [
    [want("app", "db", "cache")],
    [start("db"), start("cache")],
    [complete("db"), fail("cache", "c" * 300), want("web", "app")],
    (COMPACT,),
    [want("extra", "db")],
    (PAUSE,),
    [fail("junk", "j" * 900), fail("junk", "k" * 900)],
    [forget("junk")],  # the log holds what no snapshot will: a compaction frees space
    [fail("extra", "e" * 500)],  # a compaction still owed (no room yet): room first
    (RESTART,),
    (BACKGROUND, "web"),  # a start of web, waiting for app, across the next steps
    [reset("cache"), complete("db")],
    [start("cache")],
    [complete("cache")],
    [start("app")],
    [complete("app")],  # releases web
    (JOIN,),
    [fail("db", "d" * 700), reset("app"), want("api", "db")],
    [complete("db"), want("api", "extra")],
]


@dataclass
class Commit:
    records: list[Record]
    submitted: int
    """The disk's checkpoint when the change was handed to the journal."""
    outcome: str = "pending"
    """ok, refused, unknown (the journal stopped), or lost (unknown, then not recovered)."""
    decided: int = NEVER
    """The disk's checkpoint when its client was answered."""
    settled: int = NEVER
    """The disk's checkpoint from which its fate is known: when it was acknowledged or
    refused; if its client was told "unknown", when the next start found it saved or lost."""


@dataclass
class FaultRun:
    folder: Path
    fault: Fault | None
    sim: SimDisk = field(init=False)
    disk: FaultyDisk = field(init=False)
    commits: list[Commit] = field(default_factory=list)
    refusals: int = 0
    stops: int = 0
    failed_starts: int = 0

    def __post_init__(self) -> None:
        self.sim = SimDisk(self.folder)
        self.disk = FaultyDisk(self.sim, self.fault)

    def problem(self, what: str) -> AssertionError:
        return AssertionError(f"{self.fault}: {what}")

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> FaultRun:
        try:
            with repeatable(str(self.fault)):
                trio.run(self._main, clock=trio.testing.MockClock(autojump_threshold=0))
        except BaseExceptionGroup as group:  # show the finding, not the nurseries around it
            error: BaseException = group
            while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]
            if isinstance(error, AssertionError):
                raise error from None
            raise
        return self

    async def _main(self) -> None:
        steps = list(STEPS)
        while steps:
            journal = self._open()
            service = Service(journal, socket=Path("unused"), state_dir=self.folder, clock=_now)
            self._spy(service)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(journal.run)
                    await self._steps(steps, service, journal, nursery)
                    nursery.cancel_scope.cancel()
            except* JournalError as group:
                self._stopped(group)
            finally:
                journal.close()
        self.disk.lift()
        self._open().close()

    def _open(self) -> Journal:
        """Start the journal, as the agent would be started again until it comes up."""
        while True:
            try:
                journal = Journal.open(self.folder, disk=self.disk, compact_min_records=NEVER)
            except JournalError as exc:
                if "then start the agent again" not in str(exc):
                    raise self.problem(f"unclear refusal to start: {exc}") from None
                self.failed_starts += 1
                self.disk.lift()  # the operator frees space or fixes the disk
                continue
            self._reconcile(canonical(journal.graph))
            return journal

    async def _steps(
        self, steps: list, service: Service, journal: Journal, nursery: trio.Nursery
    ) -> None:
        while steps:
            step = steps.pop(0)
            if step == (RESTART,):
                return
            if step == (COMPACT,):
                journal.compact_min_records, journal.compact_ratio = 0, 0.0
                continue
            if step == (PAUSE,):
                await trio.sleep(PAUSE_SECONDS)
            if step[0] == BACKGROUND:
                nursery.start_soon(self._command, service, start(step[1], limit=float("inf")))
            elif step in ((JOIN,), (PAUSE,)):
                await trio.testing.wait_all_tasks_blocked()
            else:
                refused_before = self.refusals
                async with trio.open_nursery() as commands:
                    for command in step:
                        commands.start_soon(self._command, service, command)
                journal.compact_min_records, journal.compact_ratio = NEVER, 4.0
                if self.refusals > refused_before:
                    await self._while_refusing(service)
            await trio.testing.wait_all_tasks_blocked()
            self._check_settled(service)

    async def _command(self, service: Service, command: Command) -> None:
        try:
            await command(service)
        except NotDurable as exc:
            self.refusals += 1
            message = str(exc)
            if exc.exit_code != EXIT_NOT_DURABLE or str(self.folder) not in message:
                raise self.problem(f"a refusal not naming the state dir: {message}") from None
            if "free some space" not in message:
                raise self.problem(f"a refusal not saying what to do: {message}") from None
        except AgentGone as exc:
            if "may or may not have been saved" not in str(exc):
                raise self.problem(f"an unclear stop: {exc}") from None
        except Refused:
            pass  # the graph refused it (it depends on what was refused before): no change

    async def _while_refusing(self, service: Service) -> None:
        """Reads go on; with the disk still full, changes are refused; then space returns."""
        await service.status(Status())
        if self.fault is None or not self.fault.persistent or self.disk.fault is None:
            return
        before = self.refusals
        await self._command(service, want("probe", "db"))
        if self.refusals == before:
            raise self.problem("a change was accepted while the disk was still full")
        self.disk.lift()  # space returns: the change makes room first (the compaction owed)
        before = len(self.commits)
        await self._command(service, fail("after", "space returned"))
        accepted = [c.outcome for c in self.commits[before:]]
        if accepted != ["ok"]:
            raise self.problem(f"space returned, but the next change ended {accepted}")
        await trio.sleep(PAUSE_SECONDS)  # and what is still owed, on the journal's timer

    # --- what is checked -------------------------------------------------------------------

    def _spy(self, service: Service) -> None:
        """Record every change submitted to the journal and what became of it."""
        real = service.commit

        async def commit(decide, about, *, confirm_noop=True):  # type: ignore[no-untyped-def]
            entries: list[Commit] = []

            def submitted() -> list[Record]:
                records = decide()
                if records:
                    entries.append(Commit(list(records), submitted=self.sim.last))
                    self.commits.append(entries[-1])
                return records

            def settle(outcome: str) -> None:
                for entry in entries:
                    entry.outcome, entry.decided = outcome, self.sim.last
                    if outcome != "unknown":
                        entry.settled = entry.decided

            try:
                records = await real(submitted, about, confirm_noop=confirm_noop)
            except NotDurable:
                settle("refused")
                raise
            except BaseException:
                settle("unknown")
                raise
            settle("ok")
            return records

        service.commit = commit  # type: ignore[method-assign]

    def _check_settled(self, service: Service) -> None:
        if any(commit.outcome == "unknown" for commit in self.commits):
            return  # the journal is stopping: the next start is checked instead
        data = self.sim.read(self.folder / LOG_NAME)
        assert data is not None
        scan = logfile.Scan(end=logfile.LOG_HEADER.size)
        try:
            for _ in logfile.entries(data, scan):
                pass
        except logfile.Damaged as exc:
            raise self.problem(f"part of an entry was left in the log, then more: {exc}") from None
        if scan.torn is not None:
            raise self.problem(f"the log was not cut back to its last whole entry: {scan.torn}")
        if any(commit.outcome == "pending" for commit in self.commits):
            raise self.problem("a change is still waiting for its acknowledgement")
        try:
            acknowledged = _replay(self.commits, "ok")
        except KeyError as exc:
            raise self.problem(f"an acknowledged change builds on a refused one ({exc})") from None
        if canonical(service.graph) != acknowledged:
            raise self.problem("the graph served is not the acknowledged changes")

    def _stopped(self, group: BaseExceptionGroup) -> None:
        self.stops += 1
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        if "Check the disk" not in str(error):
            raise self.problem(f"an unclear stop: {error}")
        if self.fault is None or self.fault.kind != "EIO":
            raise self.problem(f"the journal stopped: {error}")

    def _reconcile(self, recovered: bytes) -> None:
        """The recovered state is the acknowledged changes plus a prefix of the unknown ones."""
        unknown = [commit for commit in self.commits if commit.outcome == "unknown"]
        for commit in unknown:
            commit.settled = self.sim.last
        for survived in range(len(unknown) + 1):
            for commit in unknown[:survived]:
                commit.outcome = "ok"
            if _replay(self.commits, "ok") == recovered:
                for commit in unknown[survived:]:
                    commit.outcome = "lost"
                return
            for commit in unknown[:survived]:
                commit.outcome = "unknown"
        raise self.problem(
            f"recovered a state that is not the {sum(c.outcome == 'ok' for c in self.commits)} "
            f"acknowledged changes plus a prefix of the {len(unknown)} unknown ones"
        )


def check_power_loss(run: FaultRun, baseline: FaultRun | None = None) -> int:
    """Every power-loss state of the run's trace recovers to what its clients were told:
    the changes settled as saved by then plus a prefix of those not yet settled (module
    docstring). Where the trace is the same as `baseline`'s (a run checked already), it is
    not checked again. Returns how many states were checked."""
    checked, start = 0, _divergence(run, baseline)
    seen: dict[frozenset[tuple[str, bytes]], bytes] = {}
    with quiet_recovery():
        for checkpoint in run.sim.checkpoints[start:]:
            acked, open_, allowed = _allowed(run.commits, checkpoint.index)
            snapshots = (checkpoint.durable(SNAPSHOT_NAME), checkpoint.volatile.get(SNAPSHOT_NAME))
            for fates, files in checkpoint.states(str(run.fault)):
                checked += 1
                where = f"{run.fault}, power lost after disk operation {checkpoint.index} "
                where += f"({checkpoint.what}), fates {fates}"
                if files.get(SNAPSHOT_NAME) not in snapshots:
                    raise AssertionError(f"{where}: the snapshot is neither old nor new")
                key = frozenset(files.items())
                if key not in seen:
                    try:
                        seen[key] = recover(run.folder, SimDisk(run.folder, files))
                    except JournalError as exc:
                        raise AssertionError(f"{where}: recovery refused to start: {exc}") from None
                if seen[key] not in allowed:
                    raise AssertionError(
                        f"{where}: recovered neither the {acked} acknowledged changes nor "
                        f"those plus some of the {open_} not yet settled"
                    )
    return checked


def _allowed(commits: list[Commit], index: int) -> tuple[int, int, set[bytes]]:
    """After disk operation `index`: how many changes are settled as saved, how many are
    not settled, and the graphs a recovery may find (the saved ones, in order, with the
    first n unsettled ones among them)."""
    saved = [c.settled <= index and c.outcome == "ok" for c in commits]
    open_ = [c.submitted <= index < c.settled for c in commits]
    allowed = set()
    for n in range(sum(open_) + 1):
        ranks = itertools.accumulate(open_)  # among the unsettled: 1, 2, ...
        chosen = [
            commit
            for commit, is_saved, is_open, rank in zip(commits, saved, open_, ranks, strict=True)
            if is_saved or (is_open and rank <= n)
        ]
        with contextlib.suppress(KeyError):  # a saved change built on an unsettled one left out
            allowed.add(_replay(chosen))
    return sum(saved), sum(open_), allowed


def _divergence(run: FaultRun, baseline: FaultRun | None) -> int:
    """The first checkpoint at which `run`'s trace differs from `baseline`'s."""
    if baseline is None:
        return 0
    pairs = zip(run.sim.checkpoints, baseline.sim.checkpoints, strict=False)
    for checkpoint, twin in pairs:
        if (checkpoint.what, checkpoint.pending) != (twin.what, twin.pending):
            return max(0, checkpoint.index - 1)
    return min(len(run.sim.checkpoints), len(baseline.sim.checkpoints))


def _now() -> float:
    return 1000.0


def _replay(commits: list[Commit], outcome: str | None = None) -> bytes:
    """The graph after `commits` (those with `outcome`, if given), in order."""
    graph = Graph()
    for commit in commits:
        if outcome is None or commit.outcome == outcome:
            for record in commit.records:
                graph.apply(record)
    return canonical(graph)
