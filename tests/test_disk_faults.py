"""Disk faults (SPEC §4): for every n, the nth disk operation fails, and nobody is lied to.

Each kind (ENOSPC, EDQUOT, EIO, a short write), once or from then on, for n = 1, 2, ...
until the workload no longer reaches operation n: see faultloop.py for what each run
checks. Then the behaviours one at a time, where a reader can see them.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from unitsync.agent.core.graph import Graph
from unitsync.agent.main import _setup_failure
from unitsync.agent.serve.server import AgentConfig, run_agent
from unitsync.agent.service import Service
from unitsync.agent.starting import start_when_ready
from unitsync.agent.store.journal.disk import REAL_DISK, RealDisk
from unitsync.agent.store.journal.writer import (
    COMPACT_RETRY_MAX,
    LOG_NAME,
    SNAPSHOT_NAME,
    Journal,
    JournalError,
    _Failed,
)
from unitsync.client import AsyncClient
from unitsync.wire.errors import AgentGone, NotDurable, UnitsyncError
from unitsync.wire.protocol import Complete, Reset, Start, Started, Status, Want

from harness.faultdisk import KINDS, Fault, FaultyDisk
from harness.faultloop import FaultRun, check_power_loss
from harness.powerloss import inline_threads as threads_inline

POWER_LOSS_TOO = {("ENOSPC", False), ("ENOSPC", True), ("short", False)}
"""Fault loops whose every trace is also crashed at every operation (faultloop.py). EDQUOT
takes ENOSPC's path, and a short write from then on is many single ones."""


def power_checked(kind: str, persistent: bool, run: FaultRun) -> bool:
    """Whether `run`'s trace is crashed at every operation too: those of POWER_LOSS_TOO, and
    every EIO run in which an fsync failed, whose writes the crash disk may then keep or
    lose for good (fsyncgate): what was acknowledged must survive that, whatever came after."""
    return (kind, persistent) in POWER_LOSS_TOO or (kind == "EIO" and "fsync!" in run.disk.calls)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from-then-on"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_nth_operation_fails_for_every_n(folder: Path, kind: str, persistent: bool) -> None:
    clean = FaultRun(folder, None).run()
    assert clean.refusals == clean.stops == 0
    power_losses = check_power_loss(clean)
    runs: list[FaultRun] = []
    for n in itertools.count(1):
        run = FaultRun(folder, Fault(kind, n, persistent)).run()
        if not run.disk.hits:
            break  # the workload is over before operation n
        runs.append(run)
        if power_checked(kind, persistent, run):
            power_losses += check_power_loss(run, baseline=clean)
    assert len(runs) > (10 if kind == "short" else 40), f"only {len(runs)} operations to fail"
    refusals = sum(run.refusals for run in runs)
    stops = sum(run.stops for run in runs)
    print(
        f"\n{kind} {'from then on' if persistent else 'once'}: n = 1..{len(runs)}, "
        f"{refusals} changes refused, {stops} stops, {power_losses} power-loss states"
    )
    if kind == "short":
        assert refusals == stops == 0
    elif kind == "EIO":
        assert stops > 0 and refusals == 0
    else:
        assert refusals > 0 and stops == 0


def skip_the_cut_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that failed part way is not cut back: its part stays in the log."""

    def cut_back(self: Journal) -> None:
        self._torn = False  # the break

    monkeypatch.setattr(Journal, "_cut_back", cut_back)


def keep_the_refused_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal does not take the durable state back: the refused changes stay."""
    real = Journal._durable_state

    def durable_state(self: Journal) -> tuple[Graph, Path]:
        _durable, mount = real(self)
        return self.graph, mount  # the break

    monkeypatch.setattr(Journal, "_durable_state", durable_state)


def retry_after_eio(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's patch to `Journal._write`: a failed fsync of a batch is retried, and the
    batch acknowledged if the retry succeeds (which, after fsyncgate, proves nothing)."""
    real = Journal._sync_batch

    def sync_batch(self: Journal, fd: int) -> None:
        try:
            real(self, fd)
        except OSError:
            real(self, fd)  # the break

    monkeypatch.setattr(Journal, "_sync_batch", sync_batch)


@pytest.mark.parametrize(
    ("breakage", "finding"),
    [
        (skip_the_cut_back, "part of an entry was left in the log"),
        (keep_the_refused_changes, "builds on a refused one|graph served is not the acknowledged"),
    ],
    ids=["no cut back", "no rollback"],
)
def test_the_fault_loop_catches_a_broken_journal(
    folder: Path, monkeypatch: pytest.MonkeyPatch, breakage: Any, finding: str
) -> None:
    breakage(monkeypatch)
    with pytest.raises(AssertionError, match=finding):
        for n in range(1, 60):
            FaultRun(folder, Fault("ENOSPC", n, persistent=True)).run()


def snapshot_before_the_rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compaction a refusal makes snapshots the graph as it was before the refused
    changes were undone: the snapshot holds changes its clients were told were refused."""
    real_refuse, real_compact_now = Journal._refuse, Journal._compact_now
    stale: dict[Journal, object] = {}

    async def refuse(self: Journal, failure: _Failed) -> None:
        stale[self] = (self.graph.boot_image(), list(self.graph.images()))  # the break
        try:
            await real_refuse(self, failure)
        finally:
            stale.pop(self, None)

    async def compact_now(self: Journal, images: object, only_if_smaller: bool) -> None:
        await real_compact_now(self, stale.get(self, images), only_if_smaller)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "_refuse", refuse)
    monkeypatch.setattr(Journal, "_compact_now", compact_now)


def fresh_log_before_its_snapshot_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fresh log a compaction owes (its snapshot renamed, then no room) is written, on
    the retry, without first syncing the folder that names the new snapshot."""
    real = Journal._compact

    def compact(self: Journal, boot: object, images: object, only_if_smaller: bool) -> bool:
        if self._fd is None:
            self._snapshot_named = True  # the break
        return real(self, boot, images, only_if_smaller)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "_compact", compact)


def room_made_with_the_batch_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compaction that makes room before a batch snapshots the graph in memory, which
    already holds the batch, instead of the durable state."""

    def compact(self: Journal) -> bool:
        return self._compact(self.graph.boot_image(), list(self.graph.images()), True)

    monkeypatch.setattr(Journal, "_compact_durable_state", compact)


@pytest.mark.parametrize(
    ("breakage", "finding"),
    [
        (snapshot_before_the_rollback, "recovered a state|recovered neither"),
        (fresh_log_before_its_snapshot_is_named, "recovery refused to start"),
        (room_made_with_the_batch_in_it, "recovered a state|recovered neither"),
    ],
    ids=[
        "compaction after a refusal keeps the refused",
        "retried fresh log before its snapshot",
        "room made with the batch in it",
    ],
)
def test_the_fault_loop_catches_a_broken_compaction_after_no_room(
    folder: Path, monkeypatch: pytest.MonkeyPatch, breakage: Any, finding: str
) -> None:
    """The paths a full disk takes since the journal compacts itself to make room (after a
    refusal, on a timer, at a start-up that had no room to copy the log) are held to the
    same rules: each break below is caught by the fault loop and its power-loss states."""
    clean = FaultRun(folder, None).run()
    breakage(monkeypatch)
    with pytest.raises(AssertionError, match=finding) as caught:
        for persistent in (False, True):
            for n in range(1, 70):
                run = FaultRun(folder, Fault("ENOSPC", n, persistent)).run()
                check_power_loss(run, baseline=clean)
    print(f"\n{breakage.__name__}: {caught.value}")


# --- one behaviour at a time, on real files --------------------------------------------------


class Agent:
    """The journal and service as the agent runs them (worker threads and all), minus the
    socket, on real files behind a disk that can be told to fail."""

    def __init__(self, folder: Path) -> None:
        self.disk = FaultyDisk(REAL_DISK)
        self.journal = Journal.open(folder, disk=self.disk)
        self.service = Service(self.journal, socket=Path("unused"), state_dir=folder)

    def fail_from_now_on(self, kind: str) -> None:
        self.disk.fault = Fault(kind, self.disk.ops + 1, persistent=True)

    def fail_next(self, kind: str, op: str) -> None:
        """Make the next `op` (e.g. fsync) fail once with `kind`."""
        self.disk.fault = Fault(kind, 0, persistent=False)
        self.disk.fail_only = op


class Waiter:
    """A `start` in the background, as a blocked client; `result` once it returns."""

    def __init__(self) -> None:
        self.result: object = None
        self.done = trio.Event()

    @classmethod
    async def start(cls, service: Service, unit: str, nursery: trio.Nursery) -> Waiter:
        """Return once the start waits."""
        waiter, waiting = cls(), trio.Event()

        async def progress(_event: object) -> None:
            waiting.set()

        async def run() -> None:
            try:
                waiter.result = await start_when_ready(service, Start(unit, token="t"), progress)
            except UnitsyncError as exc:
                waiter.result = exc
            waiter.done.set()

        nursery.start_soon(run)
        await waiting.wait()
        return waiter


async def test_a_full_disk_refuses_changes_while_reads_and_waits_go_on(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "state")
    service = agent.service
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.journal.run)
        await service.want(Want("app", ["db"]))
        await start_when_ready(service, Start("db"), progress=_ignore)
        waiter = await Waiter.start(service, "app", nursery)
        with service.watching(None) as watcher:
            log = tmp_path / "state" / LOG_NAME
            size = log.stat().st_size

            agent.fail_from_now_on("ENOSPC")  # the disk fills up
            with pytest.raises(NotDurable) as refused:
                await service.complete(Complete("db"))
            assert refused.value.exit_code == 6
            assert str(tmp_path / "state") in str(refused.value)
            assert "free some space there and retry" in str(refused.value)
            assert log.stat().st_size == size  # cut back to the last whole entry
            await trio.testing.wait_all_tasks_blocked()
            units = {view.name: view for view in (await service.status(Status())).units}
            assert (units["db"].status, units["app"].status, units["app"].waiters) == (
                "started",  # the completion was undone
                "pending",
                1,  # and the start of app goes on waiting
            )
            assert not waiter.done.is_set()
            assert await watcher.next() is None  # the watcher is sent a fresh full view
            with pytest.raises(NotDurable):
                await service.want(Want("web", ["app"]))

            agent.disk.lift()  # space returns: no restart needed
            await service.complete(Complete("db"))
            await waiter.done.wait()
            assert isinstance(waiter.result, Started)
        nursery.cancel_scope.cancel()
    agent.journal.close()
    recovered = Journal.open(tmp_path / "state")
    assert {name: unit.status for name, unit in recovered.graph.units.items()} == {
        "app": "started",
        "db": "completed",
    }
    recovered.close()


@pytest.fixture
def inline_threads() -> Iterator[None]:
    """Disk work in the trio thread, so a mock clock does not run ahead of it."""
    with threads_inline():
        yield


async def churn(service: Service, unit: str, changes: int) -> None:
    """`changes` changes of one unit (start, complete, reset, ...): the log grows, the graph
    does not (a unit keeps its last 100 transitions)."""
    for i in range(changes):
        if i % 3 == 0:
            await start_when_ready(service, Start(unit), progress=_ignore)
        elif i % 3 == 1:
            await service.complete(Complete(unit))
        else:
            await service.reset(Reset(unit))


async def test_a_journal_that_fills_its_disk_compacts_itself_once_there_is_room(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    """The log of one unit's 600 changes is what fills the disk: the refusal makes the
    journal try a compaction (none fits yet); once space returns it compacts on its own
    timer, with no change coming, and changes are taken again. (Disk work runs inline, so
    the mock clock stands still while it does.)"""
    folder = tmp_path / "state"
    agent = Agent(folder)
    service = agent.service
    log, snapshot = folder / LOG_NAME, folder / SNAPSHOT_NAME
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.journal.run)
        await churn(service, "u", 600)
        full_log = log.stat().st_size
        agent.fail_from_now_on("ENOSPC")
        with pytest.raises(NotDurable):
            await start_when_ready(service, Start("u"), progress=_ignore)
        await trio.testing.wait_all_tasks_blocked()
        refused_at = agent.disk.calls.index("write!")
        assert "create!" in agent.disk.calls[refused_at:]  # a snapshot was tried at once
        assert log.stat().st_size == full_log and not snapshot.exists()  # no room for it

        agent.disk.lift()  # space returns; no change comes
        await trio.sleep(2 * COMPACT_RETRY_MAX)
        assert snapshot.exists() and log.stat().st_size < full_log / 20
        await start_when_ready(service, Start("u"), progress=_ignore)  # and changes are taken again
        nursery.cancel_scope.cancel()
    agent.journal.close()
    with Journal.open(folder) as recovered:
        assert recovered.graph.units["u"].status == "started"
        assert len(recovered.graph.units["u"].history) == 100


async def test_a_start_with_no_room_to_copy_the_log_compacts_once_there_is(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    """A start-up that cannot copy the log syncs it in place (a full disk), and owes the
    compaction that frees the disk: it is made once space returns, with no change coming."""
    folder = tmp_path / "state"
    agent = Agent(folder)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.journal.run)
        await churn(agent.service, "u", 600)
        nursery.cancel_scope.cancel()
    agent.journal.close()
    full_log = (folder / LOG_NAME).stat().st_size

    disk = FaultyDisk(REAL_DISK, Fault("ENOSPC", 2, persistent=True))  # full after its first sync
    with Journal.open(folder, disk=disk) as journal:
        assert "create!" in disk.calls  # the copy of the log found no room
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            await trio.sleep(2 * COMPACT_RETRY_MAX)
            assert (folder / LOG_NAME).stat().st_size == full_log  # tried, and tries again
            disk.lift()
            await trio.sleep(2 * COMPACT_RETRY_MAX)
            assert (folder / LOG_NAME).stat().st_size < full_log / 20
            assert (folder / SNAPSHOT_NAME).exists()
            nursery.cancel_scope.cancel()
    with Journal.open(folder) as recovered:
        assert recovered.graph.units["u"].status == "pending"  # its last change, a reset


async def test_a_failed_fsync_stops_the_journal_and_is_never_retried(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "state")
    service = agent.service
    with pytest.raises(BaseExceptionGroup) as stopped:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.journal.run)
            await service.want(Want("app", ["db"]))
            synced = (tmp_path / "state" / LOG_NAME).read_bytes()
            agent.fail_next("EIO", "fsync")
            with pytest.raises(AgentGone, match="may or may not have been saved"):
                await service.want(Want("web", ["app"]))
    assert stopped.group_contains(JournalError, match="fsync of .* failed: Input/output error")
    assert stopped.group_contains(JournalError, match="Check the disk")
    failed_at = agent.disk.calls.index("fsync!")
    assert "fsync" not in agent.disk.calls[failed_at + 1 :]  # no retry, as if it were safe
    agent.journal.close()
    assert (tmp_path / "state" / LOG_NAME).read_bytes() == synced
    recovered = Journal.open(tmp_path / "state")  # the next start: the last synced state
    assert set(recovered.graph.units) == {"app", "db"}
    recovered.close()


async def _ignore(_event: object) -> None:
    pass


async def test_a_failed_fsync_tells_the_client_and_stops_the_agent(
    config: AgentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end, over the socket: the client hears its change may be lost (exit 3),
    and the agent stops with the reason (main prints it and exits 1)."""
    real_fsync = RealDisk.fsync
    disk_broken = False

    def fsync(disk: RealDisk, fd: int) -> None:
        if disk_broken:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(disk, fd)

    monkeypatch.setattr(RealDisk, "fsync", fsync)
    with pytest.raises(BaseExceptionGroup) as stopped:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_agent, config)
            async with await AsyncClient.connect(config.socket) as client:
                await client.want("app", "db")
                disk_broken = True
                with pytest.raises(AgentGone, match="may or may not have been saved") as told:
                    await client.want("web", "app")
    assert told.value.exit_code == 3
    assert "fsync of" in str(told.value) and str(config.state_dir) in str(told.value)
    assert stopped.group_contains(JournalError, match="Check the disk")
    assert _setup_failure(stopped.value) is not None  # main prints it and exits 1


def test_the_power_checked_fault_loop_catches_a_retry_after_eio(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[retry after EIO]: every run of the fault loop passes with the retry (the change is
    acknowledged, and the files hold it); only a power loss shows it was never on disk."""
    clean = FaultRun(folder, None).run()
    retry_after_eio(monkeypatch)
    with pytest.raises(AssertionError, match=r"recovered neither the .* acknowledged") as caught:
        for n in range(1, 60):
            run = FaultRun(folder, Fault("EIO", n, persistent=False)).run()  # passes
            if "fsync!" in run.disk.calls:
                check_power_loss(run, baseline=clean)
    print(f"\nretry after EIO: {caught.value}")
