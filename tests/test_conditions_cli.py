"""`want --on completed|started|finished` as scripts use it (SPEC §14, issue 25): fresh
`unitsync` processes against a real agent process, one with etcd, and the Python clients.

Each condition meets a dependency that completes, fails after it started, fails before it
started, and never starts; failures cascade as each condition says; a condition changed
while a `start` waits takes effect at once; `status`, `-o dot`, `-o mermaid`, `timeline`
and `critical-chain` show it; an agent restart keeps it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from unitsync.cli.timeline.text import precise
from unitsync.client import Client
from unitsync.wire.errors import UsageError

from conftest import AgentProcess, run_cli, sock, spawn_cli
from harness.etcd_cluster import EtcdAgent, EtcdCluster

WAIT_LIMIT = 60
"""Seconds a waiting `start` gets to end once it should: only a real hang reaches it."""


SPAWNED: list[subprocess.Popen[str]] = []
"""The waiting `start`s of the running test (they wait forever: `--timeout 0`)."""


@pytest.fixture(autouse=True)
def no_waiter_left() -> Iterator[None]:
    """A test that fails while a `start` waits leaves no process behind."""
    yield
    while SPAWNED:
        waiter = SPAWNED.pop()
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate(timeout=WAIT_LIMIT)


def waiting_start(s: Path, unit: str, *options: str) -> subprocess.Popen[str]:
    """`start UNIT` in the background, returned once it says it waits."""
    waiter = spawn_cli("sync", "start", unit, "--timeout", "0", *options, socket=s)
    SPAWNED.append(waiter)
    assert waiter.stderr is not None
    line = waiter.stderr.readline()
    assert line.startswith(f"{unit}: waiting for "), line
    return waiter


def ended(waiter: subprocess.Popen[str]) -> tuple[int, str]:
    _out, err = waiter.communicate(timeout=WAIT_LIMIT)
    return waiter.returncode, err


def view(s: Path, unit: str) -> dict:
    result = run_cli("sync", "status", unit, "-o", "json", socket=s)
    assert result.code == 0, result.err
    return json.loads(result.out)


def cli(s: Path, *args: str) -> str:
    result = run_cli("sync", *args, socket=s)
    assert result.code == 0, result.err
    return result.out


CONDITIONS = ["completed", "started", "finished"]


@pytest.mark.parametrize("on", CONDITIONS)
def test_a_dependency_that_completes(agent_process: AgentProcess, on: str) -> None:
    """`started` lets api go as soon as db starts; the others wait for its completion."""
    s = sock(agent_process)
    assert cli(s, "want", "api", "db", "--on", on).strip() == (
        "api now wants db" + ("" if on == "completed" else f" on {on}")
    )
    waiter = waiting_start(s, "api")
    cli(s, "start", "db")
    if on == "started":
        code, err = ended(waiter)
        assert view(s, "db")["status"] == "started"  # api ran beside db
    else:
        assert waiter.poll() is None and view(s, "api")["waiters"] == 1
    cli(s, "complete", "db")
    if on != "started":
        code, err = ended(waiter)
    assert code == 0 and "note:" not in err
    api = view(s, "api")
    assert api["status"] == "started" and api["reason"] == ""
    assert api["dependencies"] == [
        {"unit": "db", "required": on, "current": "completed", "satisfied": True}
    ]


@pytest.mark.parametrize("on", CONDITIONS)
def test_a_dependency_that_fails_after_it_started(agent_process: AgentProcess, on: str) -> None:
    """Only `completed` cascades a failure after db started: `started` went ahead at db's
    start, `finished` goes ahead on its failure and says so."""
    s = sock(agent_process)
    cli(s, "want", "api", "db", "--on", on)
    waiter = waiting_start(s, "api")
    cli(s, "start", "db")
    cli(s, "fail", "db", "--reason", "port 5432 in use")
    code, err = ended(waiter)
    api = view(s, "api")
    if on == "completed":
        assert code == 4
        assert "cannot start api: dependency db failed (port 5432 in use)" in err
        assert (api["status"], api["reason"]) == ("failed", "dependency db failed")
        return
    assert code == 0
    assert api["status"] == "started"
    satisfied = {"unit": "db", "required": on, "current": "failed", "satisfied": True}
    assert api["dependencies"] == [satisfied]
    if on == "finished":  # it went ahead on a failed dependency: said, and kept
        assert "note: api went ahead although db failed" in err
        assert api["reason"] == "went ahead although db failed"
        assert api["history"][-1]["reason"] == "went ahead although db failed"
        table = cli(s, "status")
        assert "went ahead although db failed" in table
        assert "finished  failed   yes" in cli(s, "status", "api")


@pytest.mark.parametrize("on", CONDITIONS)
def test_a_dependency_that_fails_before_it_started(agent_process: AgentProcess, on: str) -> None:
    """A failure before db ever started fails api under `completed` and `started`; under
    `finished` api goes ahead."""
    s = sock(agent_process)
    cli(s, "want", "api", "db", "--on", on)
    waiter = waiting_start(s, "api")
    cli(s, "fail", "db", "--reason", "no disk")
    code, err = ended(waiter)
    if on == "finished":
        assert code == 0 and "note: api went ahead although db failed" in err
        assert view(s, "api")["status"] == "started"
    else:
        assert code == 4 and "dependency db failed (no disk)" in err
        assert view(s, "api")["status"] == "failed"


@pytest.mark.parametrize("on", CONDITIONS)
def test_a_dependency_that_never_starts(agent_process: AgentProcess, on: str) -> None:
    """Every condition waits for a dependency that does nothing, until the start's own
    timeout (exit 5); nothing is changed."""
    s = sock(agent_process)
    cli(s, "want", "api", "db", "--on", on)
    result = run_cli("sync", "start", "api", "--timeout", "1s", socket=s)
    assert result.code == 5 and "timed out after 1s" in result.err
    api = view(s, "api")
    assert (api["status"], api["dependencies"][0]["satisfied"]) == ("pending", False)


def test_cascades_follow_each_edge_of_a_chain(agent_process: AgentProcess) -> None:
    """disk fails before anything started. db (completed) fails with it, before it ever
    started; so web (started on db) fails too; docs (finished on web) goes ahead."""
    s = sock(agent_process)
    cli(s, "want", "db", "disk")
    cli(s, "want", "web", "db", "--on", "started")
    cli(s, "want", "docs", "web", "--on", "finished")
    waiters = {unit: waiting_start(s, unit) for unit in ("db", "web", "docs")}
    cli(s, "fail", "disk", "--reason", "full")
    outcomes = {unit: ended(waiter) for unit, waiter in waiters.items()}
    assert outcomes["db"][0] == 4 and "dependency disk failed" in outcomes["db"][1]
    assert outcomes["web"][0] == 4 and "dependency db failed" in outcomes["web"][1]
    assert outcomes["docs"][0] == 0
    statuses = {u["name"]: (u["status"], u["reason"]) for u in units(s)}
    assert statuses == {
        "disk": ("failed", "full"),
        "db": ("failed", "dependency disk failed"),
        "web": ("failed", "dependency db failed"),
        "docs": ("started", "went ahead although web failed"),
    }


def test_a_started_edge_does_not_cascade_a_failure_after_the_start(
    agent_process: AgentProcess,
) -> None:
    """db started, then failed: a later start of web (started on db) proceeds, a later
    start of api (completed on db) fails."""
    s = sock(agent_process)
    cli(s, "want", "web", "db", "--on", "started")
    cli(s, "want", "api", "db")
    cli(s, "start", "db")
    cli(s, "fail", "db")
    assert run_cli("sync", "start", "web", socket=s).code == 0
    assert run_cli("sync", "start", "api", socket=s).code == 4


def units(s: Path) -> list[dict]:
    return json.loads(cli(s, "status", "-o", "json"))["units"]


def test_changing_a_condition_while_a_start_waits_takes_effect_at_once(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    cli(s, "want", "api", "db")
    waiter = waiting_start(s, "api")
    cli(s, "start", "db")
    assert waiter.poll() is None and view(s, "api")["waiters"] == 1  # completed: it waits
    same = run_cli("sync", "want", "api", "db", socket=s)
    assert (same.out, same.err) == ("api already wants db\n", "")  # idempotent
    changed = run_cli("sync", "want", "api", "db", "--on", "started", socket=s)
    assert changed.code == 0
    assert changed.out == "api now wants db on started\n"
    assert changed.err == "note: api now wants db on started (was completed)\n"
    assert ended(waiter)[0] == 0  # woken by the change: db has started
    assert view(s, "db")["status"] == "started"
    assert view(s, "api")["dependencies"][0]["required"] == "started"
    # A script that declares its edges without --on (every boot) keeps the condition.
    again = run_cli("sync", "want", "api", "db", socket=s)
    assert (again.out, again.err) == ("api already wants db on started\n", "")
    run_cli("sync", "run", "api", "--want", "db", "--rerun", "--", "true", socket=s)
    assert view(s, "api")["dependencies"][0]["required"] == "started"


def test_an_unknown_condition_is_a_usage_error_listing_the_three(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    result = run_cli("sync", "want", "api", "db", "--on", "ready", socket=s)
    assert result.code == 2
    assert "invalid value 'ready' for --on: choose one of completed, started, finished" in (
        result.err
    )
    assert "usage: unitsync sync want UNIT DEP [DEP...] [--on completed|started|finished]" in (
        result.err
    )
    assert run_cli("sync", "status", "api", socket=s).code == 1  # nothing was declared


def test_graphs_and_timelines_show_conditions(agent_process: AgentProcess) -> None:
    """dot and mermaid label the edges that are not `completed`; the critical chain ends a
    `started` edge at the dependency's start; timeline JSON says each edge's condition."""
    s = sock(agent_process)
    cli(s, "want", "api", "db", "--on", "started")
    cli(s, "want", "api", "logs", "--on", "finished")
    cli(s, "want", "api", "git")
    cli(s, "start", "git")
    cli(s, "complete", "git")
    cli(s, "start", "logs")
    cli(s, "fail", "logs")
    cli(s, "start", "db")  # the last thing api waited for: the chain's next step
    cli(s, "start", "api")
    cli(s, "complete", "api")
    cli(s, "complete", "db")  # after api: a `completed` edge would have held api up till now
    dot = cli(s, "status", "-o", "dot")
    nodes = [line for line in dot.splitlines() if "[label=" in line and "->" not in line]
    ids = {line.split()[0]: line for line in nodes}
    node = {name: n for n, line in ids.items() for name in ("api", "db", "logs", "git")
            if f'label="{name}\\n' in line}  # fmt: skip
    assert f'  {node["api"]} -> {node["db"]} [label="started", style=dashed];' in dot
    assert f'  {node["api"]} -> {node["logs"]} [label="finished", style=dotted];' in dot
    assert f"  {node['api']} -> {node['git']};" in dot
    mermaid = cli(s, "status", "-o", "mermaid")
    assert f"  {node['api']} -. started .-> {node['db']}" in mermaid
    assert f"  {node['api']} -. finished .-> {node['logs']}" in mermaid
    assert f"  {node['api']} --> {node['git']}" in mermaid

    timeline = json.loads(cli(s, "timeline", "-o", "json"))
    rows = {row["name"]: row for row in timeline["units"]}
    assert rows["api"]["required"] == {"db": "started", "logs": "finished", "git": "completed"}
    chain = cli(s, "critical-chain", "api").splitlines()
    assert 'For a unit wanted --on started, "@" is the time it started.' in chain
    [db_line] = [line for line in chain if "db" in line]
    at = precise(rows["db"]["started"] - timeline["origin"])  # its start, not its end
    assert db_line.startswith(f"└─db @{at} +") and db_line.endswith("(wanted on started)")


def test_an_agent_restart_and_a_workspace_restart_keep_conditions(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    cli(s, "want", "api", "db", "--on", "started")
    cli(s, "want", "api", "logs", "--on", "finished")
    agent_process.stop()
    agent_process.extra = ("--boot-id", "second")  # a new boot: a workspace restart
    agent_process.start()
    deps = {d["unit"]: d["required"] for d in view(s, "api")["dependencies"]}
    assert deps == {"db": "started", "logs": "finished"}
    waiter = waiting_start(s, "api")  # every unit is pending again: the new boot's
    cli(s, "start", "db")
    assert waiter.poll() is None  # logs has not finished
    cli(s, "fail", "logs")
    assert ended(waiter)[0] == 0


def test_the_python_clients_take_on(agent_process: AgentProcess) -> None:
    with Client(sock(agent_process)) as client:
        reply = client.want("api", "db", on="started")
        assert reply.message == "api now wants db on started"
        reply = client.want("api", "db", on="finished")
        assert reply.notes == ["api now wants db on finished (was started)"]
        reply = client.want("api", "db", "cache")  # db keeps its condition; cache is new
        assert (reply.message, reply.notes) == ("api now wants db on finished, cache", [])
        with pytest.raises(
            UsageError, match=r"unknown condition 'soon'.*completed, started, finished"
        ):
            client.want("api", "db", on="soon")  # type: ignore[arg-type]
        [api] = client.status("api")
    assert [(d.unit, d.required) for d in api.dependencies] == [
        ("db", "finished"),
        ("cache", "completed"),
    ]


def test_conditions_in_a_graph_shared_through_etcd(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    """A condition set on host A is what a start on host B waits by, and a change made on
    B wakes it there too."""
    url = etcd.url("conditions")
    host_a, host_b = etcd_agents(url), etcd_agents(url)
    assert host_a.cli("want", "api", "db").returncode == 0
    waiter = subprocess.Popen(
        [*host_b.command[:3], "sync", "start", "api", "--timeout", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "UNITSYNC_SOCKET": str(host_b.socket)},
    )
    SPAWNED.append(waiter)
    assert waiter.stderr is not None
    assert waiter.stderr.readline().startswith("api: waiting for db")
    assert host_a.cli("start", "db").returncode == 0
    assert waiter.poll() is None
    changed = host_a.cli("want", "api", "db", "--on", "started")
    assert changed.returncode == 0 and "(was completed)" in changed.stderr
    assert waiter.wait(timeout=WAIT_LIMIT) == 0
    shown = json.loads(host_b.cli("status", "api", "-o", "json").stdout)
    assert shown["dependencies"][0]["required"] == "started"
