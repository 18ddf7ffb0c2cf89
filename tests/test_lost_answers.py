"""A start whose store's answer was lost (SPEC §10: etcd took the change, and the partition
took its answer) never makes a second run, however the unit moves on meanwhile.

The store here is the real journal, behind a wrapper that makes a change and then reports
its answer lost (`MaybeMade`), as the etcd store does when etcd stops answering after an
attempt reached it; like etcd, it "recovers unaided", so the start waits and tries again.
`tests/test_history.py` found this with real partitions: a start retried after its run had
been ended by another script began a second run with the same token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from unitsync.agent.core.records import Move, Record
from unitsync.agent.service import Service
from unitsync.agent.starting import start_when_ready
from unitsync.agent.store.base import Decide, MaybeMade
from unitsync.agent.store.journal.writer import Journal
from unitsync.wire.errors import NotDurable, Superseded, UnitsyncError
from unitsync.wire.protocol import Fail, Start, Started, Waiting

from harness.powerloss import inline_threads as threads_inline


@pytest.fixture
def inline_threads() -> Iterator[None]:
    """Disk work in the trio thread, so the mock clock does not run ahead of it."""
    with threads_inline():
        yield


class LosingAnswers:
    """The journal, whose next change is made and then reported lost."""

    recovers_unaided = True

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.lose_next = False
        self.lost = trio.Event()
        self.made: list[Record] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.journal, name)

    async def commit(
        self, decide: Decide, about: Sequence[str] | None, *, confirm_noop: bool = True
    ) -> list[Record]:
        records = await self.journal.commit(decide, about, confirm_noop=confirm_noop)
        self.made += records
        if self.lose_next and records:
            self.lose_next = False
            self.lost.set()
            raise MaybeMade("etcd stopped answering: the change may or may not have been made")
        return records


async def _quiet(_waiting: Waiting) -> None:
    pass


async def _lost_start(service: Service, token: str, outcome: list[object]) -> None:
    start = Start("u5", rerun=True, token=token)
    try:
        outcome.append(await start_when_ready(service, start, _quiet))
    except UnitsyncError as exc:
        outcome.append(exc)


def _runs_begun(store: LosingAnswers) -> list[str]:
    return [r.token for r in store.made if type(r) is Move and r.to == "started"]


@pytest.fixture
async def agent(tmp_path: Path, inline_threads: None) -> Any:
    store = LosingAnswers(Journal.open(tmp_path))
    service = Service(store, socket=Path("unused"), state_dir=tmp_path)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.journal.run)
        await start_when_ready(service, Start("u5", token="first"), _quiet)
        await service.fail(Fail("u5", "boom"))  # a failed unit: `start --rerun` begins a run
        yield store, service
        nursery.cancel_scope.cancel()
    store.journal.close()


async def test_a_start_whose_run_was_ended_meanwhile_is_told_so_and_never_runs_twice(
    agent: tuple[LosingAnswers, Service], autojump_clock: trio.testing.MockClock
) -> None:
    store, service = agent
    store.lose_next = True
    outcome: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_lost_start, service, "lost", outcome)
        await store.lost.wait()  # its run began; the answer did not come back
        await service.fail(Fail("u5", "ended by another script"))
        await start_when_ready(service, Start("u5", rerun=True, token="other"), _quiet)
        await service.fail(Fail("u5", "and that run too"))
    [told] = outcome
    assert isinstance(told, Superseded), told
    assert "this start began a run at" in str(told) and "u5 is now failed" in str(told)
    assert _runs_begun(store) == ["first", "lost", "other"]  # the lost start's run once


async def test_a_start_whose_run_is_still_under_way_gets_that_run(
    agent: tuple[LosingAnswers, Service], autojump_clock: trio.testing.MockClock
) -> None:
    store, service = agent
    store.lose_next = True
    outcome: list[object] = []
    await _lost_start(service, "lost", outcome)  # it tries again a second later: its own run
    [told] = outcome
    assert isinstance(told, Started), told
    assert _runs_begun(store) == ["first", "lost"]


async def test_a_start_that_cannot_tell_whether_its_run_began_says_so(
    agent: tuple[LosingAnswers, Service], autojump_clock: trio.testing.MockClock
) -> None:
    """The graph read afresh meanwhile (etcd listed again after a partition): the changes in
    between were never seen one by one, so the start cannot know its run from another."""
    store, service = agent
    store.lose_next = True
    outcome: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_lost_start, service, "lost", outcome)
        await store.lost.wait()
        await service.fail(Fail("u5", "ended by another script"))
        service.runs_begun.clear()  # as a rebuilt graph leaves it: nothing seen one by one
        service.replaced(store.applied_seq)
    [told] = outcome
    assert isinstance(told, NotDurable) and "may or may not have been made" in str(told), told
    assert _runs_begun(store) == ["first", "lost"]
