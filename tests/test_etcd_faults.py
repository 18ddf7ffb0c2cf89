"""What users see when etcd or an agent fails (SPEC §10): real etcd members, real agent
processes, real signals. Scripts talk to their agents as they always do."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from unitsync.agent.core.machine import MOVES, Go, Refuse
from unitsync.client import AsyncClient
from unitsync.wire.errors import EXIT_NOT_DURABLE, Refused, UnitsyncError
from unitsync.wire.protocol import UnitView

from conftest import in_thread, spawn_cli
from harness.etcd_cluster import EtcdAgent, EtcdCluster, agreed, blocked, statuses

# --- members and clusters going down ----------------------------------------------------------


async def test_one_member_of_three_killed_changes_nothing_for_users(
    fresh_etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    """Scripts keep changing units on two hosts while the cluster's leader is SIGKILLed:
    none of them sees an error, a waiter blocked before the kill is released after it, and
    every acknowledged change is in both agents' graphs."""
    etcd = fresh_etcd
    host_a, host_b = etcd_agents(etcd.url("ws")), etcd_agents(etcd.url("ws"))
    assert host_a.cli("want", "app", "db").returncode == 0
    waiter = blocked(spawn_cli("sync", "start", "app", "--timeout", "2m", socket=host_a.socket))
    acknowledged: Counter[str] = Counter()
    errors: list[BaseException] = []

    async def churn(agent: EtcdAgent, me: int, stop: trio.Event) -> None:
        async with await AsyncClient.connect(agent.socket) as client:
            for n in range(1_000_000):
                if stop.is_set():
                    return
                unit = f"busy{me}-{n // 50}"  # histories stay below their limit of 100
                try:
                    await client.fail(unit, f"round {n}", force=True)
                except UnitsyncError as exc:
                    errors.append(exc)
                    return
                acknowledged[unit] += 1

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for me in range(4):
            nursery.start_soon(churn, (host_a, host_b)[me % 2], me, stop)
        await trio.sleep(1)
        etcd.stop_member(etcd.leader(), signal.SIGKILL)
        before = sum(acknowledged.values())
        await trio.sleep(3)
        assert (await in_thread(host_b.cli, "start", "db")).returncode == 0
        assert (await in_thread(host_b.cli, "complete", "db")).returncode == 0
        stop.set()
    _out, err = waiter.communicate(timeout=60)
    assert errors == []
    assert waiter.returncode == 0, err
    assert sum(acknowledged.values()) > before  # changes went on after the kill
    units = agreed(host_a, host_b)
    assert {unit: len(units[unit][2]) for unit in acknowledged} == acknowledged


async def test_the_whole_cluster_down_fails_changes_and_waiters_wait(
    fresh_etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    etcd = fresh_etcd
    host_a = etcd_agents(etcd.url("ws"), "--etcd-timeout", "2s")
    host_b = etcd_agents(etcd.url("ws"), "--etcd-timeout", "2s")
    assert host_a.cli("want", "app", "db").returncode == 0
    assert host_b.cli("fail", "cache", "--reason", "before the outage", "--force").returncode == 0
    waiter = blocked(spawn_cli("sync", "start", "app", "--timeout", "5m", socket=host_a.socket))
    before = statuses(host_b)
    etcd.stop(signal.SIGKILL)

    refused = host_b.cli("complete", "db", "--force")
    assert refused.returncode == EXIT_NOT_DURABLE
    assert "etcd is unreachable" in refused.stderr and "nothing was changed" in refused.stderr
    for agent in (host_a, host_b):  # reads go on from each agent's replica
        shown = agent.cli("status", "app")
        assert shown.returncode == 0 and "db" in shown.stdout
    assert waiter.poll() is None

    for i in range(3):
        etcd.start_member(i, wait=False)
    etcd.wait_healthy()
    assert host_b.cli("complete", "db", "--force").returncode == 0
    _out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    after = agreed(host_a, host_b)
    assert after["app"][0] == "started" and after["db"][0] == "completed"
    for unit, (_status, _deps, history) in before.items():  # nothing acknowledged was lost
        assert after[unit][2][: len(history)] == history


HUNG_TIMEOUT = 1.5
"""--etcd-timeout of the agents facing a hung cluster: well below one member's own
request timeout (5 s), so a change that waited out the members in turn could not pass."""


def timed_change(agent: EtcdAgent, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`unitsync sync ARGS...` and how long the user waited for it (seconds)."""
    started = time.monotonic()
    result = agent.cli(*args)
    return result, time.monotonic() - started


def test_a_hung_cluster_fails_a_change_once_the_etcd_timeout_is_up(
    fresh_etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    """Every member SIGSTOPped: connections open, nothing answers. The change fails with
    exit 6 after --etcd-timeout (not after each member's own 5 s in turn: a member slow to
    answer gets the next one beside it); its txn was sent, so it may have been made. Once
    the members are back, the same agent makes changes again."""
    etcd = fresh_etcd
    host = etcd_agents(etcd.url("ws"), "--etcd-timeout", f"{HUNG_TIMEOUT}s")
    assert host.cli("want", "app", "db").returncode == 0
    for i in range(3):
        etcd.stop_member(i, signal.SIGSTOP)
    try:
        failed, took = timed_change(host, "fail", "db", "--reason", "during", "--force")
    finally:
        for i in range(3):
            etcd.resume_member(i)
    assert failed.returncode == EXIT_NOT_DURABLE, failed.stderr
    assert "it may or may not have been made" in failed.stderr
    first, *others = etcd.endpoints
    assert f"{first}: no answer in time" in failed.stderr
    for endpoint in others:  # hedged to, then ended by the change's own timeout
        assert f"{endpoint}: no answer in time" in failed.stderr
    assert took >= HUNG_TIMEOUT  # it waited for etcd as long as it was told to
    back_again(etcd, host)


def test_members_without_quorum_fail_a_change_once_the_etcd_timeout_is_up(
    fresh_etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    """Two members of three SIGSTOPped: the one the agent tries first is alive but cannot
    commit anything (it holds the proposal while it still thinks it has a leader, then says
    it has none). The change fails as when the whole cluster hangs, and the agent serves
    changes again once both are back."""
    etcd = fresh_etcd
    host = etcd_agents(etcd.url("ws"), "--etcd-timeout", f"{HUNG_TIMEOUT}s")
    assert host.cli("want", "app", "db").returncode == 0
    for i in (1, 2):
        etcd.stop_member(i, signal.SIGSTOP)
    try:
        failed, took = timed_change(host, "fail", "db", "--reason", "during", "--force")
    finally:
        for i in (1, 2):
            etcd.resume_member(i)
    assert failed.returncode == EXIT_NOT_DURABLE, failed.stderr
    assert "it may or may not have been made" in failed.stderr  # the stopped ones had it
    first, *others = etcd.endpoints
    alive = re.search(f"{re.escape(first)}: ([^;)]*)", failed.stderr)
    assert alive is not None and alive[1] in ("no answer in time", "etcdserver: no leader")
    for endpoint in others:
        assert f"{endpoint}: no answer in time" in failed.stderr
    assert took >= HUNG_TIMEOUT
    back_again(etcd, host)


def back_again(etcd: EtcdCluster, host: EtcdAgent) -> None:
    """Once every member answers again, the agent commits changes as before."""
    etcd.wait_healthy()
    done = host.cli("fail", "db", "--reason", "after the outage", "--force")
    assert done.returncode == 0, done.stderr
    assert statuses(host)["db"][2][-1]["reason"] == "after the outage"


async def test_an_agent_killed_and_restarted_lists_again_and_loses_nothing(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    host_a, host_b = etcd_agents(etcd.url("restart")), etcd_agents(etcd.url("restart"))
    assert host_a.cli("want", "app", "db", "cache").returncode == 0
    assert host_a.cli("fail", "other", "--reason", "before the kill", "--force").returncode == 0
    waiter = blocked(spawn_cli("sync", "start", "app", "--timeout", "2m", socket=host_a.socket))
    host_a.signal(signal.SIGKILL)
    for unit in ("db", "cache"):  # while host A is down
        assert host_b.cli("complete", unit, "--force").returncode == 0
    host_a.start()
    _out, err = waiter.communicate(timeout=60)  # it reconnected to the new agent, as always
    assert waiter.returncode == 0, err
    assert agreed(host_a, host_b)["other"][2][0]["reason"] == "before the kill"


# --- commits ---------------------------------------------------------------------------------


@dataclass
class CuttingProxy:
    """A TCP proxy in front of one etcd member that can drop etcd's answer to one txn:
    the request gets through and is committed, the connection closes before the reply."""

    upstream: int
    armed: bool = False
    cuts: int = 0
    port: int = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.upstream) as member:
            cut = False
            async with trio.open_nursery() as nursery:

                async def forward() -> None:
                    nonlocal cut
                    async for data in client:
                        if self.armed and data.startswith(b"POST /v3/kv/txn"):
                            self.armed, cut = False, True
                        await member.send_all(data)
                    nursery.cancel_scope.cancel()

                async def back() -> None:
                    async for data in member:
                        if cut:  # etcd answered: the agent never hears it
                            self.cuts += 1
                            nursery.cancel_scope.cancel()
                            return
                        await client.send_all(data)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(forward)
                nursery.start_soon(back)


async def test_a_txn_whose_answer_was_lost_is_applied_once(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent], nursery: trio.Nursery
) -> None:
    proxy = CuttingProxy(etcd.members[0].client_port)
    await nursery.start(proxy.serve)
    others = ",".join(etcd.endpoints[1:])
    # Started in a thread: the proxy, in this one, must relay the agent's first requests.
    host = await trio.to_thread.run_sync(
        etcd_agents, f"etcd://127.0.0.1:{proxy.port},{others}/lost"
    )
    warm_up = await in_thread(host.cli, "fail", "u", "--reason", "warm-up", "--force")
    assert warm_up.returncode == 0
    proxy.armed = True
    result = await in_thread(host.cli, "fail", "u", "--reason", "once")
    assert result.returncode == 0, result.stderr
    assert proxy.cuts == 1
    history = (await trio.to_thread.run_sync(statuses, host))["u"][2]
    assert [entry["reason"] for entry in history] == ["warm-up", "once"]


async def test_two_agents_racing_to_want_each_other_exactly_one_wins(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    host_a, host_b = etcd_agents(etcd.url("race")), etcd_agents(etcd.url("race"))
    for round_ in range(5):
        a, b = f"a{round_}", f"b{round_}"
        racers = [
            spawn_cli("sync", "want", a, b, socket=host_a.socket),
            spawn_cli("sync", "want", b, a, socket=host_b.socket),
        ]
        results = [(racer.wait(timeout=60), racer.stderr.read()) for racer in racers]  # type: ignore[union-attr]
        assert sorted(code for code, _err in results) == [0, 1], results
        assert any("would close a cycle" in err for _code, err in results)


# --- many agents, many clients, against the state machine ------------------------------------


@dataclass
class Acked:
    """What one client was told, in the order it was told."""

    moves: list[tuple[str, str]] = field(default_factory=list)
    """(unit, fail reason or "") of every acknowledged change of state."""
    edges: set[tuple[str, str]] = field(default_factory=set)


LEAVES = [f"leaf{i}" for i in range(6)]
TOPS = [f"top{i}" for i in range(6)]


async def random_client(client: AsyncClient, me: int, steps: int, acked: Acked) -> None:
    """Random operations: edges among tops and from tops to leaves (cycles get refused),
    starts of leaves (never waiting), fails, completes, resets of anything."""
    rng = random.Random(me)
    for step in range(steps):
        unit = rng.choice(TOPS + LEAVES)
        match rng.randrange(5):
            case 0:
                top, dep = rng.choice(TOPS), rng.choice(TOPS + LEAVES)
                try:
                    await client.want(top, dep)
                    acked.edges.add((top, dep))
                except Refused as exc:
                    assert exc.code in ("cycle", "invalid"), exc
            case 1:
                leaf = rng.choice(LEAVES)
                await client.start(leaf, rerun=True)
                acked.moves.append((leaf, ""))
            case 2:
                reason = f"c{me}-{step}"
                await client.fail(unit, reason, force=True)
                acked.moves.append((unit, reason))
            case 3:
                try:
                    reply = await client.complete(unit)
                except Refused as exc:
                    assert exc.code == "not_started", exc
                    continue
                if reply.message == f"{unit} completed":
                    acked.moves.append((unit, ""))
            case _:
                try:
                    reply = await client.reset(unit)
                except Refused as exc:  # a unit no command has named yet
                    assert exc.code == "unknown_unit", exc
                    continue
                if reply.message.endswith("(1 changed)"):
                    acked.moves.append((unit, ""))


async def test_three_agents_sixteen_clients_each_against_the_state_machine(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    """Every acknowledged change is in the graph once, every history is a walk the state
    machine allows, and every agent (and one that starts afterwards) shows the same graph."""
    hosts = [etcd_agents(etcd.url("model")) for _ in range(3)]
    acked = [Acked() for _ in range(48)]
    async with trio.open_nursery() as nursery:
        for me in range(48):
            client = await AsyncClient.connect(hosts[me % 3].socket)
            nursery.start_soon(random_client, client, me, 12, acked[me])
    late = etcd_agents(etcd.url("model"))
    views = [await _status(host) for host in [*hosts, late]]
    for other in views[1:]:
        assert other == views[0]
    graph = views[0]

    per_unit: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for client in acked:
        for unit, reason in client.moves:
            per_unit[unit].append(("", reason))
    for unit in TOPS + LEAVES:
        history = graph[unit].history if unit in graph else []
        assert len(history) == len(per_unit[unit]), unit  # none lost, none twice
        status = "pending"
        for entry in history:  # a walk the state machine allows, from pending
            assert entry.from_ == status, (unit, history)
            assert _allowed(entry.from_, entry.to), (unit, entry)
            status = entry.to
        assert graph[unit].status == status
        reasons = [entry.reason for entry in history if entry.to == "failed"]
        wanted = [reason for _, reason in per_unit[unit] if reason]
        assert sorted(reasons) == sorted(wanted)  # every acknowledged fail, once
    for client_acked in acked:  # each client's own changes, in the order it made them
        for unit in TOPS + LEAVES:
            mine = [r for u, r in client_acked.moves if u == unit and r]
            shown = [e.reason for e in graph.get(unit, _NO_UNIT).history if e.reason in mine]
            assert shown == mine
    edges = {(unit, d.unit) for unit, view in graph.items() for d in view.dependencies}
    assert edges == set().union(*(client.edges for client in acked))


_NO_UNIT = UnitView("", "pending", True, 0.0, "", [], 0, [], [], [])


def _allowed(source: str, target: str) -> bool:
    for (status, _command), outcome in MOVES.items():
        then = outcome.then if isinstance(outcome, Refuse) else outcome
        if status == source and isinstance(then, Go) and then.to == target:
            return True
    return False


async def _status(host: EtcdAgent) -> dict[str, UnitView]:
    """The agent's graph once its replica stops changing (the others' last changes may
    still be on their way to it)."""
    async with await AsyncClient.connect(host.socket) as client:
        previous: list[UnitView] | None = None
        while True:
            views = await client.status()
            for view in views:
                view.waiters, view.waiting_on = 0, []
            if views == previous:
                return {view.name: view for view in views}
            previous = views
            await trio.sleep(0.3)


async def test_a_member_that_hangs_is_left_for_another(
    fresh_etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    """A stopped member keeps its connections open and says nothing, not even a progress
    notification: the agents' calls move on to the next member, their watches are found
    stuck (a change etcd has is not brought, or nothing at all comes for the watch
    silence) and move on, and a waiter on one host is released by a `complete` on the
    other."""
    etcd = fresh_etcd
    options = ("--etcd-watch-silence", "2s")
    host_a, host_b = etcd_agents(etcd.url("ws"), *options), etcd_agents(etcd.url("ws"), *options)
    assert host_a.cli("want", "app", "db").returncode == 0
    waiter = blocked(spawn_cli("sync", "start", "app", "--timeout", "2m", socket=host_a.socket))
    etcd.stop_member(0, signal.SIGSTOP)  # the member both agents try first
    try:
        for command in ("start", "complete"):
            result = host_b.cli(command, "db")
            assert result.returncode == 0, result.stderr
        _out, err = waiter.communicate(timeout=120)
    finally:
        etcd.resume_member(0)
    assert waiter.returncode == 0, err
    log = host_a.log.read_text()
    assert "showed nothing for 2s" in log or "reopening it on the next member" in log
