"""Agents sharing one graph through a real etcd cluster (SPEC §10), served in this process."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from unitsync.agent.core.records import Move
from unitsync.agent.serve.server import AgentConfig, run_agent
from unitsync.agent.service import Service
from unitsync.agent.store.etcd.batches import decode_changes
from unitsync.agent.store.etcd.client import EtcdUnavailable
from unitsync.agent.store.etcd.config import parse_store
from unitsync.agent.store.etcd.messages import RangeRequest, WatchResponse, prefix_end
from unitsync.agent.store.etcd.store import EtcdStore
from unitsync.client import AsyncClient
from unitsync.wire.errors import Refused
from unitsync.wire.protocol import Started

from harness.etcd_cluster import EtcdCluster

_prefixes = itertools.count()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A prefix of the test's own: tests share the module's cluster, never its keys."""
    return f"{request.node.name[:40]}-{next(_prefixes)}"


class Agents:
    """In-process agents on one etcd prefix, each with its own socket."""

    def __init__(self, nursery: trio.Nursery, base: Path, url: str) -> None:
        self.nursery, self.base, self.url = nursery, base, url
        self.count = 0

    async def start(self) -> tuple[Service, AsyncClient]:
        self.count += 1
        folder = self.base / f"a{self.count}"
        config = AgentConfig(folder / "agent.sock", folder / "state", etcd=parse_store(self.url))
        service: Service = await self.nursery.start(run_agent, config)
        return service, await AsyncClient.connect(config.socket)


def store_of(service: Service) -> EtcdStore:
    assert isinstance(service.store, EtcdStore)
    return service.store


def table(views: list) -> list[tuple]:
    """What `status` shows, without the one thing agents may differ on (who waits where)."""
    return [
        (v.name, v.status, v.reason, [d.unit for d in v.dependencies], v.history)
        for v in sorted(views, key=lambda view: view.name)
    ]


async def until(condition: Callable[[], bool], store: EtcdStore) -> None:
    """Wait for the replica to satisfy `condition` (it changes only as the watch applies)."""
    while not condition():
        await store._advanced.wait()


async def in_step(*services: Service) -> None:
    """Until each agent's replica holds what any of them holds. An agent acknowledges a
    change once its own replica has it; the others' watches bring it a moment later."""
    stores = [store_of(service) for service in services]
    latest = max(store.revision for store in stores)
    for store in stores:
        await until(lambda store=store: store.revision >= latest, store)  # type: ignore[misc]


async def start_app_waiting_on_db(host_a: AsyncClient, host_b: AsyncClient) -> Started:
    """`start app` on host A; once it waits, db runs and completes on host B; app's reply."""
    waiting = trio.Event()
    started: list[Started] = []

    async def on_progress(_event: object) -> None:
        waiting.set()

    async def start_app() -> None:
        started.append(await host_a.start("app", on_progress=on_progress))

    async with trio.open_nursery() as inner:
        inner.start_soon(start_app)
        await waiting.wait()
        await host_b.start("db")
        await host_b.complete("db")
    return started[0]


async def test_a_complete_on_one_agent_wakes_a_start_on_another(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (service_a, host_a), (service_b, host_b) = await agents.start(), await agents.start()
    await host_a.want("app", "db")
    started = await start_app_waiting_on_db(host_a, host_b)
    assert started.unit == "app"
    await in_step(service_a, service_b)
    assert table(await host_a.status()) == table(await host_b.status())
    app = (await host_b.status("app"))[0]
    assert app.status == "started" and app.dependencies[0].satisfied


async def test_a_watcher_on_one_host_sees_changes_made_on_another(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (service_a, _host_a), (service_b, host_b) = await agents.start(), await agents.start()
    await host_b.want("claude", "git")
    await in_step(service_a, service_b)
    async with await AsyncClient.connect(service_a.socket) as watcher:
        stream = watcher.watch()
        first = await stream.__anext__()
        await host_b.start("git")
        await host_b.complete("git")
        events = [await stream.__anext__() for _ in range(4)]
        await stream.aclose()  # type: ignore[attr-defined]
    assert sorted(u.name for u in first.units) == ["claude", "git"]  # type: ignore[union-attr]
    assert [(e.unit.name, e.unit.status, e.unit.ready) for e in events] == [  # type: ignore[union-attr]
        ("git", "started", True),
        ("claude", "pending", False),
        ("git", "completed", True),
        ("claude", "pending", True),
    ]


async def test_agents_apply_the_same_changes_in_the_same_order(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    """Changes made on both agents at once: each ends with the same units, edges and
    histories, and so does an agent that arrives later and lists them."""
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    started = [await agents.start() for _ in range(2)]
    clients = [client for _service, client in started]
    moves = 0  # acknowledged changes of state: each must be in a history, once

    async def churn(client: AsyncClient, me: int) -> None:
        nonlocal moves
        for i in range(15):
            unit = f"u{i % 4}"
            await client.want(unit, f"dep{(i + me) % 3}")
            await client.fail(unit, f"agent {me} step {i}", force=True)
            reply = await client.complete(unit, force=True)
            moves += 1 + (reply.message == f"{unit} completed")

    async with trio.open_nursery() as inner:
        for me, client in enumerate(clients):
            inner.start_soon(churn, client, me)
    (late_service, late) = await agents.start()
    await in_step(*(service for service, _client in started), late_service)
    views = [table(await client.status()) for client in [*clients, late]]
    assert views[0] == views[1] == views[2]
    assert sum(len(row[4]) for row in views[0]) == moves


@pytest.mark.parametrize(
    ("first", "second", "before"),
    [
        (("a", "b"), ("b", "a"), []),
        # Disjoint units: only P/edges makes the two changes conflict.
        (("x", "y"), ("z", "w"), [("y", "z"), ("w", "x")]),
    ],
    ids=["two-units", "through-others"],
)
async def test_two_agents_racing_to_close_a_cycle_exactly_one_wins(
    etcd: EtcdCluster,
    short_tmp: Path,
    prefix: str,
    nursery: trio.Nursery,
    first: tuple[str, str],
    second: tuple[str, str],
    before: list[tuple[str, str]],
) -> None:
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (_a, host_a), (_b, host_b) = await agents.start(), await agents.start()
    for round_ in range(15):
        name = {unit: f"{unit}{round_}" for unit in "abwxyz"}
        for unit, dep in before:
            await host_a.want(name[unit], name[dep])
        outcomes: dict[str, object] = {}
        async with trio.open_nursery() as race:
            race.start_soon(_want, outcomes, host_a, name[first[0]], name[first[1]])
            race.start_soon(_want, outcomes, host_b, name[second[0]], name[second[1]])
        refused = [o for o in outcomes.values() if isinstance(o, Refused)]
        assert len(refused) == 1, outcomes
        assert refused[0].code == "cycle"


async def test_an_answer_from_a_replica_behind_etcd_is_confirmed_first(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    """Host B starts a new run of `x`; host A's replica has not heard yet when a script on A
    completes `x`. A "was already completed" from A's replica would leave the run started
    for good: the agent confirms that answer against etcd first, catches up, completes."""
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (service_a, host_a), (service_b, host_b) = await agents.start(), await agents.start()
    await host_a.complete("x", force=True)
    held = _hold_watch(store_of(service_a))
    await host_b.start("x")
    reply = await host_a.complete("x")
    assert held.changes == 1  # B's start reached A late, when A asked etcd for the present
    assert reply.message == "x completed"
    await in_step(service_a, service_b)
    assert (await host_b.status("x"))[0].status == "completed"


async def test_a_start_woken_while_etcd_is_unreachable_waits_on(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    """Its dependency completes, then etcd stops answering before the start is committed:
    the start does not fail, it waits on and is committed once etcd answers again."""
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (service_a, host_a), (service_b, host_b) = await agents.start(), await agents.start()
    store_a = store_of(service_a)
    store_a.config = dataclasses.replace(store_a.config, timeout=0.3)
    await host_a.want("app", "db")
    refused, txn = [], store_a.client.txn

    async def unreachable_for_a_while(request, **options):  # type: ignore[no-untyped-def]
        if request.compare and len(refused) < 3:
            refused.append(request)
            raise EtcdUnavailable(["127.0.0.1:1: ConnectError"], maybe_applied=False)
        return await txn(request, **options)

    store_a.client.txn = unreachable_for_a_while  # type: ignore[method-assign]
    started = await start_app_waiting_on_db(host_a, host_b)
    assert len(refused) == 3
    assert started.unit == "app"
    await in_step(service_a, service_b)
    assert (await host_b.status("app"))[0].status == "started"


async def test_a_reset_of_more_units_than_one_txn_takes(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (service_a, host_a), (service_b, host_b) = await agents.start(), await agents.start()
    for i in range(0, 250, 50):
        await host_a.want("top", *(f"u{j}" for j in range(i, i + 50)))
    for i in range(250):
        await host_a.fail(f"u{i}", "broken", force=True)
    reply = await host_b.reset()
    assert reply.message == "reset every unit (250 changed)"
    await in_step(service_a, service_b)
    assert {v.status for v in await host_a.status()} == {"pending"}


async def test_a_want_of_more_new_units_than_one_txn_takes_is_refused(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (_a, host) = await agents.start()
    with pytest.raises(Refused, match="split the `want` into several"):
        await host.want("top", *(f"u{j}" for j in range(150)))
    with pytest.raises(Refused, match="unknown unit"):
        await host.status("top")


async def test_concurrent_changes_of_one_agent_share_txns(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    """16 clients of one agent fail 16 units at once: fewer txns than changes reach etcd
    (group commit), each change in exactly one of them, each acknowledged once."""
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (service, _client) = await agents.start()
    clients = [await AsyncClient.connect(service.socket) for _ in range(16)]

    async def fail_twice(client: AsyncClient, i: int) -> None:
        for round_ in range(2):
            await client.fail(f"u{i}", f"round {round_}", force=True)

    async with trio.open_nursery() as inner:
        for i, client in enumerate(clients):
            inner.start_soon(fail_twice, client, i)
    store = store_of(service)
    root = store.keys.changes
    reply = await store.client.range(RangeRequest(root, prefix_end(root)))
    txns = [decode_changes(kv.value) for kv in reply.kvs]
    changes = [
        [(r.unit, r.reason) for r in records if isinstance(r, Move)] for t in txns for records in t
    ]
    assert len(txns) < 32
    assert sorted(move for change in changes for move in change) == sorted(
        (f"u{i}", f"round {r}") for i in range(16) for r in range(2)
    )
    for view in await clients[0].status():
        assert [h.reason for h in view.history] == ["round 0", "round 1"]


async def test_a_forgotten_unit_stays_forgotten_when_the_graph_is_listed_again(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    """`forget` deletes the unit's key: an agent that lists the graph afterwards (started
    later, or restarted) does not bring the unit back, nor its edges."""
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (_a, host_a) = await agents.start()
    await host_a.want("typo", "db")
    await host_a.forget("typo")
    await host_a.want("typo2", "db")  # a name forgotten can be used again, afresh
    await host_a.forget("typo2")
    await host_a.want("typo2", "cache")
    (_b, host_b) = await agents.start()
    with pytest.raises(Refused, match="unknown unit"):
        await host_b.status("typo")
    [again] = await host_b.status("typo2")
    assert [d.unit for d in again.dependencies] == ["cache"]
    assert sorted(v.name for v in await host_b.status()) == ["cache", "db", "typo2"]


async def test_a_replica_whose_watch_fell_behind_a_compaction_lists_again(
    etcd: EtcdCluster, short_tmp: Path, prefix: str, nursery: trio.Nursery
) -> None:
    agents = Agents(nursery, short_tmp, etcd.url(prefix))
    (service_a, host_a), (service_b, host_b) = await agents.start(), await agents.start()
    await host_a.want("app", "db")
    store_a = store_of(service_a)
    behind, replica, boot = store_a.revision, store_a.graph, (await host_a.ping()).boot
    store_a.client.watch = _never  # type: ignore[method-assign]
    store_a._reopen_watch()  # A's watch stops, and does not resume meanwhile
    await host_b.start("db")
    await host_b.complete("db")
    await store_of(service_b).client.compact(store_of(service_b).revision)
    del store_a.client.watch  # back to the class's own method
    store_a._reopen_watch()
    await until(lambda: store_a.revision > behind, store_a)
    await in_step(service_a, service_b)
    assert table(await host_a.status()) == table(await host_b.status())
    assert (await host_a.status("db"))[0].status == "completed"
    assert store_a.graph is not replica and service_a.graph is store_a.graph  # listed afresh
    assert boot >= 1 and (await host_a.ping()).boot == boot  # this host's boot, carried over


async def _want(outcomes: dict[str, object], client: AsyncClient, unit: str, dep: str) -> None:
    try:
        outcomes[unit] = await client.want(unit, dep)
    except Refused as exc:
        outcomes[unit] = exc


async def _never(*_args: object, **_kw: object) -> None:
    await trio.sleep_forever()


class _Held:
    """What a held watch kept back, and how to let it through."""

    def __init__(self) -> None:
        self.holding = True
        self.backlog: list[WatchResponse] = []
        self.deliver: Callable[[WatchResponse], None] | None = None

    @property
    def changes(self) -> int:
        return sum(bool(response.events) for response in self.backlog)

    def release(self) -> None:
        self.holding = False
        assert self.deliver is not None
        for response in self.backlog:
            self.deliver(response)


def _hold_watch(store: EtcdStore) -> _Held:
    """Hold back what the store's watch brings until the store asks etcd for the present
    (the read that confirms an answer); then let it all through, in order."""
    held = _Held()
    watch, txn = store.client.watch, store.client.txn

    async def held_watch(request, on_response, *, silence):  # type: ignore[no-untyped-def]
        def hold(response: WatchResponse) -> None:
            if held.holding:
                held.backlog.append(response)
            else:
                on_response(response)

        held.deliver = on_response
        await watch(request, hold, silence=silence)

    async def confirming_txn(request, **options):  # type: ignore[no-untyped-def]
        reply = await txn(request, **options)
        if not request.compare and held.holding:  # a read of the present: the confirmation
            held.release()
        return reply

    store.client.watch = held_watch  # type: ignore[method-assign]
    store.client.txn = confirming_txn  # type: ignore[method-assign]
    store._reopen_watch()
    return held
