"""Group commit of the etcd store (`agent/etcd_batch.py`), against an etcd that answers
as a test says: which changes share a txn, what a failed compare does to the others, and
etcd's limit on a txn's size. (Real etcd, through real agents: `test_etcd_store.py`.)"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
import trio.testing

from unitsync.agent.core.records import Move
from unitsync.agent.store.etcd.batches import (
    MAX_TXN_OPS,
    Batches,
    Committed,
    Conflict,
    Parts,
    decode_changes,
    read,
)
from unitsync.agent.store.etcd.client import EtcdUnavailable
from unitsync.agent.store.etcd.messages import (
    Compare,
    Header,
    KeyValue,
    Op,
    PutRequest,
    RangeResponse,
    ResponseOp,
    TxnRequest,
    TxnResponse,
)
from unitsync.wire.errors import NotDurable


def key(unit: str) -> bytes:
    return f"P/units/{unit}".encode()


def parts(unit: str, *reading: str, mods: dict[str, int] | None = None) -> Parts:
    """A change that writes `unit` and reads `reading`, as the replica saw them (`mods`)."""
    mods = mods or {}
    compared = [unit, *reading]
    return Parts(
        compares=[Compare(key(u), "MOD", mod_revision=mods.get(u, 0)) for u in compared],
        success=[Op(request_put=PutRequest(key(unit), b"image"))],
        failure=[read(key(u)) for u in compared],
        records=[Move(unit, "failed", 1.0, f"{unit} failed")],
        lease=7,
        writes=frozenset([unit]),
        reads=frozenset(reading),
        edges=False,
        exclusive=False,
        expected={key(u): mods.get(u, 0) for u in compared},
        size=5,
    )


@dataclass
class Etcd:
    """Takes txns and answers them as `answer` says; `hold` keeps the next one back."""

    answer: Callable[[TxnRequest], TxnResponse]
    seen: list[TxnRequest] = field(default_factory=list)
    hold: trio.Event | None = None

    async def txn(self, request: TxnRequest, *, deadline: float = math.inf) -> TxnResponse:
        self.seen.append(request)
        if self.hold is not None:
            await self.hold.wait()
        return self.answer(request)


def committed(request: TxnRequest) -> TxnResponse:
    return TxnResponse(Header(100 + len(request.success)), succeeded=True)


def batches_on(etcd: Etcd) -> Batches:
    keys = iter(range(1, 1000))
    return Batches(
        etcd,  # type: ignore[arg-type]
        warn=lambda _message: None,
        unreachable=lambda exc, sent: f"{exc} (sent: {sent})",
        stamp=Op(request_put=PutRequest(b"P/latest")),
        change_key=lambda: f"P/changes/a/{next(keys)}".encode(),
    )


async def test_changes_queued_while_a_txn_is_out_share_the_next_one() -> None:
    etcd = Etcd(committed, hold=trio.Event())
    batches = batches_on(etcd)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batches.run)
        first = batches.enter(parts("a"), math.inf)
        await trio.testing.wait_all_tasks_blocked()  # `a` is out, held
        others = [batches.enter(parts(u), math.inf) for u in "bcd"]
        assert etcd.hold is not None
        etcd.hold.set()
        outcomes = [await p.result() for p in [first, *others] if p is not None]
        nursery.cancel_scope.cancel()
    assert [len(decode_changes(t.success[-2].request_put.value)) for t in etcd.seen] == [1, 3]
    assert all(isinstance(outcome, Committed) for outcome in outcomes)
    assert all(t.success[-1].request_put.key == b"P/latest" for t in etcd.seen)


def test_a_change_that_depends_on_one_in_flight_is_not_queued() -> None:
    """Writes what another writes or reads, or reads what another writes: it waits for it
    and is decided again; changes that only read the same unit go together."""
    batches = batches_on(Etcd(committed))
    a = batches.enter(parts("a", "shared"), math.inf)
    assert a is not None
    assert batches.enter(parts("a"), math.inf) is None  # writes what a writes
    assert batches.enter(parts("shared"), math.inf) is None  # writes what a reads
    assert batches.enter(parts("x", "a"), math.inf) is None  # reads what a writes
    assert batches.enter(parts("b", "shared"), math.inf) is not None  # reads what a reads
    batches.leave(a)
    assert batches.enter(parts("a"), math.inf) is not None  # once a has left


async def test_a_compare_failed_by_one_change_fails_only_that_change() -> None:
    """The txn of b and c fails because another agent changed b: b is told (Conflict, to be
    decided again), c goes into the next txn as it was, and commits."""

    def answer(request: TxnRequest) -> TxnResponse:
        if any(c.key == key("b") for c in request.compare):  # b moved on to revision 50
            now = {key("b"): 50}
            responses = [ResponseOp(RangeResponse())]  # the change key: absent
            for op in request.failure[1:]:
                found = now.get(op.request_range.key)  # type: ignore[union-attr]
                kvs = [KeyValue(op.request_range.key, mod_revision=found)] if found else []  # type: ignore[union-attr]
                responses.append(ResponseOp(RangeResponse(kvs=kvs)))
            return TxnResponse(Header(60), succeeded=False, responses=responses)
        return committed(request)

    etcd = Etcd(answer, hold=trio.Event())
    batches = batches_on(etcd)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batches.run)
        first = batches.enter(parts("a"), math.inf)
        await trio.testing.wait_all_tasks_blocked()
        b, c = batches.enter(parts("b"), math.inf), batches.enter(parts("c"), math.inf)
        assert first is not None and b is not None and c is not None
        assert etcd.hold is not None
        etcd.hold.set()
        outcome_b, outcome_c = await b.result(), await c.result()
        nursery.cancel_scope.cancel()
    assert isinstance(outcome_b, Conflict) and outcome_b.current == {key("b"): 50}
    assert isinstance(outcome_c, Committed)
    sent = [[m.unit for change in decode_changes(t.success[-2].request_put.value)
             for m in change] for t in etcd.seen]  # fmt: skip
    assert sent == [["a"], ["b", "c"], ["c"]]


async def test_an_answer_lost_then_found_commits_the_whole_batch_once() -> None:
    """The first attempt's answer is lost; the next, sent unchanged, fails its compares and
    finds the batch's change key: every change of it was committed, by the first."""
    attempts: list[TxnRequest] = []

    def answer(request: TxnRequest) -> TxnResponse:
        attempts.append(request)
        if len(attempts) == 1:
            raise EtcdUnavailable(["m0: the connection broke"], maybe_applied=True)
        change_key = request.compare[0].key
        found = RangeResponse(kvs=[KeyValue(change_key, mod_revision=42)])
        return TxnResponse(Header(43), False, [ResponseOp(found)])

    batches = batches_on(Etcd(answer))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batches.run)
        pending = [batches.enter(parts(u), math.inf) for u in "ab"]
        outcomes = [await p.result() for p in pending if p is not None]
        nursery.cancel_scope.cancel()
    assert attempts[0] == attempts[1]  # sent again unchanged
    assert outcomes == [Committed(42, outcomes[0].asked)] * 2  # type: ignore[union-attr]


async def test_a_change_whose_time_is_up_before_it_was_sent_was_not_made() -> None:
    def unreachable(_request: TxnRequest) -> TxnResponse:
        raise EtcdUnavailable(["m0: cannot connect"], maybe_applied=False)

    batches = batches_on(Etcd(unreachable))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batches.run)
        pending = batches.enter(parts("a"), trio.current_time() + 0.2)
        assert pending is not None
        outcome = await pending.result()
        nursery.cancel_scope.cancel()
    assert isinstance(outcome, NotDurable) and "sent: False" in str(outcome)


def test_a_txn_takes_changes_up_to_etcds_limit_on_operations() -> None:
    """Each change here compares 3 keys: 42 fit beside the change key's compare."""
    batches = batches_on(Etcd(committed))
    for i in range(60):
        assert batches.enter(parts(f"u{i}", f"r{i}a", f"r{i}b"), math.inf) is not None
    first = batches._take()
    assert len(first) == (MAX_TXN_OPS - 1) // 3
    request = batches._merged(first, b"P/changes/a/1")
    assert max(len(request.compare), len(request.success), len(request.failure)) <= MAX_TXN_OPS
    assert len(batches._take()) == 60 - len(first)
