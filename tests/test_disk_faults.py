"""Disk faults (SPEC §4): for every n, the nth disk operation fails, and nobody is lied to.

Each kind (ENOSPC, EDQUOT, EIO, a short write), once or from then on, for n = 1, 2, ...
until the workload no longer reaches operation n: see faultloop.py for what each run
checks. Then the behaviours one at a time, where a reader can see them.
"""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from unitsync.agent.broadcast import Watcher
from unitsync.agent.disk import REAL_DISK, RealDisk, append_all
from unitsync.agent.graph import Graph
from unitsync.agent.journal import LOG_NAME, Journal, JournalError, _Failed
from unitsync.agent.main import _setup_failure
from unitsync.agent.server import AgentConfig, run_agent
from unitsync.agent.service import Service
from unitsync.client.async_client import AsyncClient
from unitsync.wire.errors import AgentGone, NotDurable, UnitsyncError
from unitsync.wire.protocol import Complete, Start, Started, Status, Want

from faultdisk import KINDS, Fault, FaultyDisk
from faultloop import FaultRun, check_power_loss

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


def skip_the_cut_back(self: Journal) -> None:
    self._torn = False


def keep_the_refused_changes(self: Graph, durable: object) -> None:
    """The graph does not take over the durable state: the refused changes stay."""


def retry_after_eio(self: Journal, data: bytes) -> None:
    """The audit's patch to `Journal._write`: a failed fsync of a batch is retried, and the
    batch acknowledged if the retry succeeds (which, after fsyncgate, proves nothing)."""
    if self._torn:
        self._cut_back()
    assert self._fd is not None
    self._torn, doing = True, "writing to"
    try:
        append_all(self._disk, self._fd, data)
        doing = "fsync of"
        try:
            self._disk.fsync(self._fd)
        except OSError:
            self._disk.fsync(self._fd)  # the break
    except OSError as exc:
        failure = _Failed(doing, self.log_path, exc)
        if failure.no_space:
            self._cut_back()
        raise failure from exc
    self._torn = False
    self.fsyncs += 1


@pytest.mark.parametrize(
    ("breakage", "finding"),
    [
        (skip_the_cut_back, "part of an entry was left in the log"),
        (keep_the_refused_changes, "builds on a refused one|graph served is not the acknowledged"),
    ],
    ids=["no cut back", "no rollback"],
)
def test_the_fault_loop_catches_a_broken_journal(
    folder: Path, monkeypatch: pytest.MonkeyPatch, breakage: object, finding: str
) -> None:
    owner = Journal if breakage is skip_the_cut_back else Graph
    name = "_cut_back" if breakage is skip_the_cut_back else "become"
    monkeypatch.setattr(owner, name, breakage)
    with pytest.raises(AssertionError, match=finding):
        for n in range(1, 60):
            FaultRun(folder, Fault("ENOSPC", n, persistent=True)).run()


# --- one behaviour at a time, on real files --------------------------------------------------


class Agent:
    """The journal and service as the agent runs them (worker threads and all), minus the
    socket, on real files behind a disk that can be told to fail."""

    def __init__(self, folder: Path) -> None:
        self.disk = FaultyDisk(REAL_DISK)
        self.journal = Journal.open(folder, disk=self.disk)
        self.service = Service(
            self.journal.graph, self.journal, socket=Path("unused"), state_dir=folder
        )

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
                waiter.result = await service.start(Start(unit, token="t"), progress)
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
        await service.start(Start("db"), progress=_ignore)
        waiter = await Waiter.start(service, "app", nursery)
        watcher = Watcher(service.watch_filter(None))
        service.hub.watchers.add(watcher)
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
    monkeypatch.setattr(Journal, "_write", retry_after_eio)
    with pytest.raises(AssertionError, match=r"recovered neither the .* acknowledged") as caught:
        for n in range(1, 60):
            run = FaultRun(folder, Fault("EIO", n, persistent=False)).run()  # passes
            if "fsync!" in run.disk.calls:
                check_power_loss(run, baseline=clean)
    print(f"\nretry after EIO: {caught.value}")
