"""Network partitions between real hosts (SPEC §10): etcd members and agents each in a
network namespace of their own (`harness/hosts.py`), cut apart by nftables rules or a
host's link set down, while scripts use the real CLI against the agents, as users would.

Every wait here is for an event (a process ending, an agent showing something), bounded
only by a limit a hang would reach; nothing depends on how fast the machine is."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from unitsync.client import AsyncClient
from unitsync.wire.errors import EXIT_NOT_DURABLE, UnitsyncError

from conftest import in_thread, spawn_cli
from harness.etcd_cluster import EtcdAgent, agreed, blocked, statuses
from harness.hosts import MEMBERS, Workspace

T = TypeVar("T")

ETCD_TIMEOUT = 2.0
"""--etcd-timeout of agents whose changes are meant to fail: short, so tests are too."""
EVENT_LIMIT = 180.0
"""How long to wait for something an agent is about to show: only a hang reaches it."""


@pytest.fixture
def spawn(hosts: Callable[..., Workspace]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """`conftest.spawn_cli`, each process stopped when the test ends, passed or failed, and
    before the hosts go (a `run` then reports its end and stops its service; a waiting
    `start` would otherwise wait out its timeout)."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, socket: Path) -> subprocess.Popen[str]:
        started.append(spawn_cli(*args, socket=socket))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
    for proc in started:
        try:
            proc.communicate(timeout=EVENT_LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def until(get: Callable[[], T], good: Callable[[T], object], what: str) -> T:
    """The first value `get` returns that is `good`, asked again until it comes."""
    deadline = time.monotonic() + EVENT_LIMIT
    while not good(value := get()):
        assert time.monotonic() < deadline, f"never saw {what}: {value}"
        time.sleep(0.1)
    return value


def shown(agent: EtcdAgent, *args: str) -> subprocess.CompletedProcess[str]:
    result = agent.cli(*args)
    assert result.returncode == 0, result.stderr
    return result


def behind_since(agent: EtcdAgent) -> float | None:
    """`replica_behind_since` of `status -o json`."""
    return json.loads(shown(agent, "status", "-o", "json").stdout)["replica_behind_since"]


def transitions(history: list[dict]) -> list[str]:
    return [f"{entry['from']}->{entry['to']}" for entry in history]


# --- an agent cut off from etcd ----------------------------------------------------------------


def test_an_agent_cut_off_from_etcd(
    hosts: Callable[..., Workspace], spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """Host a0 loses etcd (both ways) while a1 goes on. On a0: a change fails within
    --etcd-timeout with exit 6, saying whether it may have been made; `status` says since
    when its copy is behind; its waiting `start` keeps waiting. After the heal it resumes
    with what a1 did meanwhile, and nothing is applied twice."""
    ws = hosts(agent_options=["--etcd-timeout", f"{ETCD_TIMEOUT:g}s"])
    a0, a1, _a2 = ws.agents
    shown(a0, "want", "app", "db")
    waiter = blocked(spawn("sync", "start", "app", "--timeout", "30m", socket=a0.socket))
    ws.cut("a0", MEMBERS)

    began = time.monotonic()
    refused = a0.cli("fail", "during", "--reason", "while cut off", "--force")
    assert refused.returncode == EXIT_NOT_DURABLE, refused.stderr
    assert time.monotonic() - began >= ETCD_TIMEOUT  # it gave etcd all the time it was told
    maybe = "it may or may not have been made" in refused.stderr
    assert maybe or "nothing was changed" in refused.stderr, refused.stderr

    table = until(
        lambda: shown(a0, "status").stdout,
        lambda out: "replica behind since" in out,
        "a0's status saying its replica is behind",
    )
    assert "this agent cannot reach etcd, so what it shows may be out of date" in table
    assert "replica behind since" in shown(a0, "status", "app").stdout
    since = behind_since(a0)
    assert since is not None and since <= time.time()
    assert behind_since(a1) is None  # the other hosts are current

    shown(a1, "start", "db")  # db runs on a1 meanwhile; a0 cannot know
    shown(a1, "complete", "db")
    assert waiter.poll() is None

    ws.heal()
    _out, err = waiter.communicate(timeout=EVENT_LIMIT)
    assert waiter.returncode == 0, err
    until(lambda: behind_since(a0), lambda since: since is None, "a0's replica current")
    units = agreed(*ws.agents)
    assert transitions(units["db"][2]) == ["pending->started", "started->completed"]
    assert transitions(units["app"][2]) == ["pending->started"]  # one start, once
    during = [e for e in units.get("during", ("", [], []))[2] if e["reason"] == "while cut off"]
    assert len(during) <= (1 if maybe else 0)  # "nothing was changed" meant it


def test_a_one_way_cut_fails_changes_the_same_way(hosts: Callable[..., Workspace]) -> None:
    """Only the packets from etcd to a0 are dropped: a0's requests arrive, their answers do
    not. Its change fails with exit 6 and may have been made (it was sent); the other hosts
    see it if it was, once; after the heal a0 agrees with them."""
    ws = hosts(agent_options=["--etcd-timeout", f"{ETCD_TIMEOUT:g}s"])
    a0, a1, _a2 = ws.agents
    shown(a0, "fail", "u", "--reason", "before", "--force")
    ws.cut(MEMBERS, "a0", one_way=True)
    refused = a0.cli("fail", "u", "--reason", "one way", "--force")
    assert refused.returncode == EXIT_NOT_DURABLE, refused.stderr
    assert "it may or may not have been made" in refused.stderr
    ws.heal()
    reasons = [entry["reason"] for entry in agreed(*ws.agents)["u"][2]]
    assert reasons in (["before"], ["before", "one way"])
    assert reasons == [entry["reason"] for entry in statuses(a1)["u"][2]]


# --- members cut off ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["from everyone", "from the other members"])
async def test_a_minority_member_cut_off_is_invisible(
    hosts: Callable[..., Workspace], spawn: Callable[..., subprocess.Popen[str]], how: str
) -> None:
    """m0, the member every agent tries first and watches, is cut off while 6 clients on 3
    hosts change units and a `start` on a0 waits for a `complete` on a1: no command fails,
    the waiter is released, every change is in every agent's graph once, and no agent says
    its copy is behind."""
    ws = await trio.to_thread.run_sync(hosts)
    a0, a1, _a2 = ws.agents
    shown(a0, "want", "app", "db")
    waiter = blocked(spawn("sync", "start", "app", "--timeout", "30m", socket=a0.socket))
    if how == "from everyone":
        ws.unplug("m0")
    else:
        ws.cut("m0", MEMBERS[1:])
    errors: list[BaseException] = []
    acknowledged: Counter[str] = Counter()

    async def churn(agent: EtcdAgent, me: int) -> None:
        async with await AsyncClient.connect(agent.socket) as client:
            for n in range(40):
                try:
                    await client.fail(f"u{me}", f"round {n}", force=True)
                except UnitsyncError as exc:
                    errors.append(exc)
                    return
                acknowledged[f"u{me}"] += 1

    async with trio.open_nursery() as nursery:
        for me in range(6):
            nursery.start_soon(churn, ws.agents[me % 3], me)
        for command in ("start", "complete"):
            done = await in_thread(a1.cli, command, "db")
            assert done.returncode == 0, done.stderr
    _out, err = waiter.communicate(timeout=EVENT_LIMIT)
    assert waiter.returncode == 0, err
    assert errors == []
    assert [behind_since(agent) for agent in ws.agents] == [None, None, None]
    units = agreed(*ws.agents)
    assert {unit: len(units[unit][2]) for unit in acknowledged} == acknowledged
    ws.heal()


def test_the_majority_cut_off_from_everyone_then_healed(
    hosts: Callable[..., Workspace], spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """m1 and m2 unplugged: the one member left has no quorum. Every agent's changes fail
    with exit 6 and a message naming etcd, every agent says its copy is behind, a waiting
    `start` waits; after the heal all of it goes on without a restart."""
    ws = hosts(agent_options=["--etcd-timeout", f"{ETCD_TIMEOUT:g}s"])
    shown(ws.agents[0], "want", "app", "db")
    waiter = blocked(spawn("sync", "start", "app", "--timeout", "30m", socket=ws.agents[0].socket))
    ws.unplug("m1", "m2")
    for i, agent in enumerate(ws.agents):
        refused = agent.cli("fail", f"x{i}", "--reason", "no quorum", "--force")
        assert refused.returncode == EXIT_NOT_DURABLE, refused.stderr
        assert refused.stderr.startswith("unitsync: etcd"), refused.stderr
        assert "retry" in refused.stderr or "once etcd is back" in refused.stderr
    for agent in ws.agents:
        until(lambda agent=agent: behind_since(agent), bool, f"{agent.log} saying it is behind")
    assert waiter.poll() is None

    ws.heal()
    ws.wait_healthy()
    for command in ("start", "complete"):
        shown(ws.agents[1], command, "db")
    _out, err = waiter.communicate(timeout=EVENT_LIMIT)
    assert waiter.returncode == 0, err
    for i, agent in enumerate(ws.agents):
        shown(agent, "fail", f"y{i}", "--reason", "after the heal", "--force")
    for agent in ws.agents:
        until(lambda agent=agent: behind_since(agent), lambda since: since is None, "current")
    units = agreed(*ws.agents)
    assert all(units[f"y{i}"][0] == "failed" for i in range(3))
    assert units["app"][0] == "started"


# --- a service held by `run` on a host cut off ------------------------------------------------


def test_a_service_whose_host_is_cut_off_is_kept(
    hosts: Callable[..., Workspace], spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """`run` holds a ready service on a0 when a0 is cut off from etcd. The unit is kept, not
    failed: the other hosts go on showing it completed, owned by a0's `run`, and their
    dependents start. The end the `run` reports while a0 is cut off (the service exits)
    cannot be recorded then; a0 records it, with the reason the `run` gave, once it
    reaches etcd again."""
    ws = hosts(agent_options=["--etcd-timeout", f"{ETCD_TIMEOUT:g}s"])
    a0, a1, _a2 = ws.agents
    go = ws.base / "go"
    service = spawn(
        "sync", "run", "svc", "--ready-log", "ready", "--",
        "sh", "-c", f"echo ready; while [ ! -e {go} ]; do sleep 0.05; done; exit 3",
        socket=a0.socket,
    )  # fmt: skip
    svc = until(
        lambda: statuses(a1).get("svc", ("pending", [], [])),
        lambda unit: unit[0] == "completed",
        "svc ready, seen from a1",
    )
    ws.cut("a0", MEMBERS)
    until(lambda: behind_since(a0), bool, "a0 saying it is cut off")
    assert a0.cli("fail", "probe", "--force").returncode == EXIT_NOT_DURABLE

    seen = json.loads(shown(a1, "status", "svc", "-o", "json").stdout)
    assert seen["status"] == "completed" and seen["history"] == svc[2]
    assert seen["owner"]["kind"] == "run"  # still a0's `run`'s
    shown(a1, "want", "web", "svc")
    shown(a1, "start", "web")  # a dependent on another host starts: svc is kept

    go.touch()  # the service ends while a0 is cut off
    _out, err = service.communicate(timeout=EVENT_LIMIT)
    assert service.returncode == 3  # the service's own status, as always
    assert "recording its end failed" in err and "this agent records it once etcd is back" in err
    assert statuses(a1)["svc"][0] == "completed"

    ws.heal()
    failed = until(
        lambda: agreed(*ws.agents)["svc"],
        lambda unit: unit[0] == "failed",
        "svc failed on every host",
    )
    assert failed[2][-1]["reason"] == "exited with status 3 after being ready"
    assert transitions(failed[2]) == ["pending->started", "started->completed",
                                      "completed->failed"]  # fmt: skip
