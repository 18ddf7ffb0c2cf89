"""One run at a time (SPEC §11, issue 19's sequences 3, 4 and 5), through the real CLI.

A second `run` of a unit whose run goes on is refused; `--rerun` supersedes the old run,
which stops its command and exits; nothing the old run does afterwards changes the unit;
`reset` leaves live runs alone unless `--force`; and the README's retry recipe holds in
any order. Real agents, real `run`s, real services (`sh` and `sleep`, each with a marker in
its command line so that this test can tell its copies apart from anything else).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from unitsync.agent.serve.server import AgentConfig
from unitsync.agent.service import Service
from unitsync.client import AsyncClient, Client
from unitsync.client.owners import owner
from unitsync.wire.errors import Refused, Superseded
from unitsync.wire.protocol import Order

from conftest import AgentProcess, ours, run_cli, sock
from harness.etcd_cluster import EtcdAgent, EtcdCluster

LIMIT = 60.0
"""Bounds every wait, so that a broken build fails instead of hanging; never asserted."""


def units(socket: Path) -> dict[str, dict]:
    printed = json.loads(run_cli("sync", "status", "-o", "json", socket=socket).out)
    return {unit["name"]: unit for unit in printed["units"]}


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def status_of(socket: Path, name: str) -> str | None:
    return units(socket).get(name, {}).get("status")


def copies(command: str) -> list[int]:
    """Live processes of this session running exactly `command` (a service's `sleep 6001`):
    a suite running beside this one has its own."""
    wanted = [word.encode() for word in command.split()]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:  # (bytes: other processes' command lines need not be UTF-8)
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if argv == wanted and state != b"Z" and ours(int(entry.name)):
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def cleaned_up(*markers: str) -> Iterator[None]:
    """Whatever the test leaves behind with these markers is killed at the end."""
    try:
        yield
    finally:
        for marker in markers:
            for pid in copies(marker):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def service(marker: int, *, ignore_term: bool = False) -> list[str]:
    """A service that prints `ready` and sleeps; `sleep MARKER` tells its copies apart."""
    trap = "trap '' TERM; " if ignore_term else ""
    return ["sh", "-c", f"{trap}echo ready; exec sleep {marker}"]


SPAWNED: list[subprocess.Popen[str]] = []
"""The `run`s a test started: whatever is left of them when it ends is killed."""


@pytest.fixture(autouse=True)
def no_run_left_behind() -> Iterator[None]:
    yield
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=LIMIT)


def spawn_run(socket: Path, *args: str) -> subprocess.Popen[str]:
    """`unitsync sync run ARGS` in the background, stdout discarded, stderr read by tests."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", "sync", "run", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, UNITSYNC_SOCKET=str(socket)),
    )
    SPAWNED.append(proc)
    return proc


def read_err_until(proc: subprocess.Popen[str], needle: str) -> str:
    """What `proc` wrote on stderr up to and including `needle`."""
    assert proc.stderr is not None
    fd, seen = proc.stderr.fileno(), ""
    deadline = time.monotonic() + LIMIT
    while needle not in seen:
        assert time.monotonic() < deadline, f"{needle!r} never came; got {seen!r}"
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536).decode()
            assert chunk, f"{needle!r} never came; stderr closed after {seen!r}"
            seen += chunk
    return seen


def owned_by(socket: Path, name: str, pid: int) -> bool:
    unit = units(socket).get(name, {})
    return unit.get("status") == "completed" and (unit.get("owner") or {}).get("pid") == pid


# --- sequence 3: a service run twice ---------------------------------------------------------


def test_a_second_run_of_a_running_service_is_refused_and_rerun_supersedes_the_first(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    with cleaned_up("sleep 6001", "sleep 6002"):
        first = spawn_run(s, "svc", "--ready-log", "ready", "--", *service(6001))
        wait_for(lambda: owned_by(s, "svc", first.pid), "the first copy ready")

        again = run_cli(
            "sync", "run", "svc", "--ready-log", "ready", "--", *service(6001), socket=s
        )
        assert again.code == 1
        assert (
            f"unitsync: unit 'svc' is completed and its run goes on: `unitsync sync run` "
            f"(pid {first.pid}, sh -c 'echo ready; exec sleep 6001'), which still runs; use "
            f"--rerun to start a new run anyway (that `run` then stops its command), or stop "
            f"that run first (`unitsync sync stop svc`); not running sh"
        ) in again.err
        assert len(copies("sleep 6001")) == 1  # one copy runs, not two
        assert [h["to"] for h in units(s)["svc"]["history"]] == ["started", "completed"]

        second = spawn_run(s, "svc", "--rerun", "--ready-log", "ready", "--", *service(6002))
        _out, err = first.communicate(timeout=LIMIT)
        assert first.returncode == 0, err
        assert f"svc: superseded by a new run (pid {second.pid}); stopping\n" in err
        assert copies("sleep 6001") == []  # its command was stopped, group and all
        wait_for(lambda: owned_by(s, "svc", second.pid), "the new copy ready")
        svc = units(s)["svc"]
        assert [(h["from"], h["to"], h["reason"]) for h in svc["history"]][-2:] == [
            ("completed", "started", "new run"),
            ("started", "completed", ""),
        ]
        assert svc["owner"]["alive"] is True

        run_cli("sync", "want", "api", "svc", socket=s)
        assert run_cli("sync", "start", "api", socket=s).code == 0
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=LIMIT)


def test_killing_a_superseded_run_never_changes_the_unit(agent_process: AgentProcess) -> None:
    """The old `run` stops a service that ignores SIGTERM (SIGKILL comes 10 s later); killed
    meanwhile, by SIGTERM or SIGKILL, it changes nothing: the unit is the new run's."""
    s = sock(agent_process)
    with cleaned_up("sleep 6003", "sleep 6004"):
        first = spawn_run(s, "svc", "--ready-log", "ready", "--", *service(6003, ignore_term=True))
        wait_for(lambda: owned_by(s, "svc", first.pid), "the first copy ready")
        second = spawn_run(s, "svc", "--rerun", "--ready-log", "ready", "--", *service(6004))
        read_err_until(first, f"svc: superseded by a new run (pid {second.pid}); stopping")
        wait_for(lambda: owned_by(s, "svc", second.pid), "the new copy ready")
        before = units(s)["svc"]

        first.send_signal(signal.SIGTERM)  # passed on to its service, which ignores it
        first.send_signal(signal.SIGKILL)  # its connection drops without a report
        first.communicate(timeout=LIMIT)
        time.sleep(0.5)  # (nothing to wait for: a lost run would fail the unit at once)
        assert units(s)["svc"] == before

        run_cli("sync", "want", "api", "svc", socket=s)
        assert run_cli("sync", "start", "api", socket=s).code == 0
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=LIMIT)


def test_start_rerun_supersedes_a_plain_run_which_stops_its_command(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    with cleaned_up("sleep 6005"):
        job = spawn_run(s, "job", "--", "sleep", "6005")
        wait_for(lambda: status_of(s, "job") == "started", "job started")
        refused = run_cli("sync", "start", "job", socket=s)
        assert refused.code == 1
        assert (
            f"by `unitsync sync run` (pid {job.pid}, sleep 6005), which still runs" in refused.err
        )
        assert "use --rerun to start a new run (that `run` then stops its command)" in refused.err
        assert run_cli("sync", "start", "job", "--rerun", socket=s).code == 0
        _out, err = job.communicate(timeout=LIMIT)
        assert job.returncode == 0
        assert err.endswith(f"job: superseded by a new run (pid {os.getpid()}); stopping\n")
        assert copies("sleep 6005") == []
        job_unit = units(s)["job"]
        assert job_unit["status"] == "started"  # the new run's, not the old command's end
        assert job_unit["owner"]["pid"] == os.getpid()


def test_a_run_superseded_while_the_agent_restarted_stops_when_it_comes_back(
    agent_process: AgentProcess,
) -> None:
    """A `run` away (frozen) across an agent restart finds its run superseded when it takes
    it back: it stops its command as if it had been told at once."""
    s = sock(agent_process)
    with cleaned_up("sleep 6006"):
        job = spawn_run(s, "job", "--", "sleep", "6006")
        wait_for(lambda: status_of(s, "job") == "started", "job started")
        job.send_signal(signal.SIGSTOP)
        try:
            agent_process.kill()
            agent_process.start()
            assert run_cli("sync", "start", "job", "--rerun", socket=s).code == 0
        finally:
            job.send_signal(signal.SIGCONT)
        _out, err = job.communicate(timeout=LIMIT)
        assert job.returncode == 0, err
        assert f"job: superseded by a new run (pid {os.getpid()}) while the agent restarted" in err
        assert copies("sleep 6006") == []
        assert units(s)["job"]["owner"]["pid"] == os.getpid()


# --- sequence 4: reset while services run ----------------------------------------------------


def test_reset_leaves_live_runs_alone_and_force_supersedes_them(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    with cleaned_up("sleep 6011", "sleep 6012"):
        db = spawn_run(s, "db", "--ready-log", "ready", "--", *service(6011))
        web = spawn_run(s, "web", "--want", "db", "--ready-log", "ready", "--", *service(6012))
        assert run_cli("sync", "run", "lint", "--", "true", socket=s).code == 0
        assert run_cli("sync", "run", "flaky", "--", "false", socket=s).code == 1
        wait_for(lambda: owned_by(s, "db", db.pid) and owned_by(s, "web", web.pid), "ready")

        refused = run_cli("sync", "reset", "db", socket=s)
        assert refused.code == 1
        assert (
            f"unit 'db' is completed and its run goes on: `unitsync sync run` (pid {db.pid},"
            in (refused.err)
        )
        assert "or use --force to reset it anyway (that `run` then stops its command)" in (
            refused.err
        )
        assert "stop that run first (`unitsync sync stop db`)" in refused.err  # not `kill`

        result = run_cli("sync", "reset", "--all", socket=s)
        assert result.code == 1
        assert result.out == "reset every unit (2 changed; left alone: db, web)\n"
        lines = result.err.splitlines()
        assert [line.split(" is completed")[0] for line in lines] == [
            "unitsync: left alone: unit 'db'",
            "unitsync: left alone: unit 'web'",
        ]
        assert f"(pid {db.pid}, sh -c 'echo ready; exec sleep 6011'), which still runs" in lines[0]
        now = units(s)
        assert {name: now[name]["status"] for name in now} == {
            "db": "completed",
            "web": "completed",
            "lint": "pending",
            "flaky": "pending",
        }
        assert now["db"]["owner"]["alive"] and now["web"]["owner"]["alive"]
        assert len(copies("sleep 6011")) == len(copies("sleep 6012")) == 1

        forced = run_cli("sync", "reset", "--all", "--force", socket=s)
        assert (forced.code, forced.out, forced.err) == (0, "reset every unit (2 changed)\n", "")
        for proc, name in ((db, "db"), (web, "web")):
            _out, err = proc.communicate(timeout=LIMIT)
            assert proc.returncode == 0, err
            assert f"{name}: superseded by `unitsync sync reset --force`; stopping\n" in err
        assert copies("sleep 6011") == copies("sleep 6012") == []
        now = units(s)
        assert {name: (now[name]["status"], now[name]["owner"]) for name in now} == {
            name: ("pending", None) for name in ("db", "web", "lint", "flaky")
        }
        assert now["db"]["history"][-1]["reason"] == "reset --force"


# --- sequence 5: the retry recipe --------------------------------------------------------------

WORKSPACE = {
    "clone": ("--once", "--", "sh", "-c", "echo clone >> ran"),
    "fetch": ("--", "sh", "-c", "echo fetch >> ran"),
    "build": ("--want", "fetch", "--", "sh", "-c", "echo build >> ran; test -e fixed"),
    "test": ("--want", "build", "--", "sh", "-c", "echo test >> ran"),
    "db": ("--ready-log", "ready", "--", *service(6021)),
    "app": ("--want", "build", "--want", "db", "--ready-log", "ready", "--", *service(6022)),
    "smoke": ("--want", "app", "--want", "clone", "--", "sh", "-c", "echo smoke >> ran"),
}
"""A workspace's scripts, one `run` each; `build` fails until `fixed` exists."""
DEPENDENCIES = {"build": ["fetch"], "test": ["build"], "app": ["build", "db"], "smoke": ["app"]}
SERVICES = ("db", "app")


def run_workspace(
    socket: Path, cwd: Path, order: list[str], scripts: dict[str, subprocess.Popen[str]]
) -> dict[str, int | None]:
    """Start every script, one after the other in `order`, each once the agent has seen the
    one before (so the order is the one given), into `scripts`; the exit status of each
    that ended (services still running: None)."""
    scripts.clear()
    for name in order:
        moves = len(units(socket).get(name, {}).get("history", []))
        scripts[name] = subprocess.Popen(
            [sys.executable, "-m", "unitsync.cli", "sync", "run", name, *WORKSPACE[name]],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, UNITSYNC_SOCKET=str(socket)),
        )
        SPAWNED.append(scripts[name])
        wait_for(
            lambda name=name, moves=moves: (
                scripts[name].poll() is not None or seen_by_agent(socket, name, moves)
            ),
            f"{name} to reach the agent",
        )
    for name in order:
        if name not in SERVICES:
            scripts[name].wait(timeout=LIMIT)
    wait_for(
        lambda: all(
            scripts[name].poll() is not None or status_of(socket, name) in ("completed", "failed")
            for name in SERVICES
        ),
        "the services to be ready or to end",
    )
    return {name: proc.poll() for name, proc in scripts.items()}


@contextlib.contextmanager
def ended(scripts: dict[str, subprocess.Popen[str]]) -> Iterator[None]:
    """The scripts still running at the end (services) are stopped and waited for."""
    try:
        yield
    finally:
        for proc in scripts.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=LIMIT)


def seen_by_agent(socket: Path, name: str, moves: int) -> bool:
    """`run NAME` is waiting in the agent, or its unit moved since it had `moves` moves."""
    unit = units(socket).get(name)
    return unit is not None and (unit["waiters"] > 0 or len(unit["history"]) > moves)


def status_when(history: list[dict], at: float) -> str:
    """A unit's status at time `at`, from its history."""
    before = [h for h in history if h["at"] <= at]
    return before[-1]["to"] if before else "pending"


@pytest.mark.parametrize("order", ["dependents first", "shuffled"])
def test_the_retry_recipe_reruns_the_scripts_in_any_order(
    agent_process: AgentProcess, tmp_path: Path, order: str
) -> None:
    s = sock(agent_process)
    names = list(WORKSPACE)
    if order == "dependents first":
        names = ["smoke", "app", "test", "build", "fetch", "db", "clone"]
    else:
        random.shuffle(names)
    first_scripts: dict[str, subprocess.Popen[str]] = {}
    scripts: dict[str, subprocess.Popen[str]] = {}
    with cleaned_up("sleep 6021", "sleep 6022"), ended(first_scripts), ended(scripts):
        first = run_workspace(s, tmp_path, list(WORKSPACE), first_scripts)
        assert first == {
            "clone": 0,
            "fetch": 0,
            "build": 1,
            "test": 4,
            "db": None,
            "app": 4,
            "smoke": 4,
        }, first

        # The recipe: reset the failed units, then run the scripts again, in any order.
        recipe = run_cli("sync", "reset", "--failed", socket=s)
        assert (recipe.code, recipe.out) == (0, "reset every failed unit (4 changed)\n")
        (tmp_path / "fixed").touch()
        (tmp_path / "ran").write_text("")
        again = run_workspace(s, tmp_path, names, scripts)

        assert again == {  # db still runs: its second `run` is refused; nothing exits 4
            "clone": 0,
            "fetch": 0,
            "build": 0,
            "test": 0,
            "db": 1,
            "app": None,
            "smoke": 0,
        }, f"{again} in the order {names}"
        ran = (tmp_path / "ran").read_text().split()
        assert sorted(ran) == ["build", "fetch", "smoke", "test"], ran  # clone is one-time
        now = units(s)
        assert {name: now[name]["status"] for name in now} == dict.fromkeys(names, "completed")
        for unit, deps in DEPENDENCIES.items():  # each started only once its deps were done
            began = now[unit]["history"][-2]
            assert began["to"] == "started", now[unit]["history"]
            for dep in deps:
                assert status_when(now[dep]["history"], began["at"]) == "completed", (unit, dep)


# --- the clients: tokens and orders ------------------------------------------------------------


async def test_a_trio_unit_block_superseded_by_a_rerun_changes_nothing_when_it_ends(
    agent: Service, config: AgentConfig
) -> None:
    """The trio client sends its block's token with the block's end: once another start
    superseded the block's run, neither its completion nor its failure counts."""
    async with AsyncClient(config.socket) as mine, AsyncClient(config.socket) as other:
        async with mine.unit("job"):
            await other.start("job", rerun=True)
        [job] = await other.status("job")
        assert job.status == "started"
        assert [(h.from_, h.to, h.reason) for h in job.history] == [
            ("pending", "started", ""),
            ("started", "started", "new run"),
        ]
        with pytest.raises(RuntimeError):
            async with mine.unit("job2"):
                await other.start("job2", rerun=True)
                raise RuntimeError("the block failed")
        [job2] = await other.status("job2")
        assert job2.status == "started"
        assert (await other.complete("job")).message == "job completed"


async def test_reports_of_a_superseded_run_change_nothing_and_say_so(
    agent: Service, config: AgentConfig
) -> None:
    async with AsyncClient(config.socket) as client:
        await client.start("svc", token="old")
        await client.start("svc", rerun=True, token="new")
        before = await client.status("svc")
        reply = await client.complete("svc", token="old")
        assert reply.message == (
            "svc: this run was superseded by a newer run; its report changed nothing"
        )
        await client.fail("svc", "exited with status 1", token="old")
        await client.set_reason("svc", "booting", token="old")
        assert await client.status("svc") == before
        await client.set_reason("svc", "booting", token="new")
        await client.complete("svc", token="new")
        [svc] = await client.status("svc")
        assert (svc.status, svc.reason) == ("completed", "")


def test_a_held_run_is_pushed_an_order_when_superseded(agent_process: AgentProcess) -> None:
    """The blocking client holding a run learns of a newer one without asking: the agent
    pushes an `Order` on the connection that holds the run."""
    s = sock(agent_process)
    me = owner(os.getpid(), "run")
    with Client(s) as holder, Client(s) as other:
        holder.start("svc", owner=me, hold=True)
        holder.complete("svc", hold=True)
        with pytest.raises(Refused, match="its run goes on"):
            other.start("svc")
        other.start("svc", rerun=True)
        fd = holder.fileno()
        assert fd is not None and select.select([fd], [], [], LIMIT)[0]
        [order] = holder.take_orders()
        token = holder.holding["svc"].token
        assert order == Order("svc", "supersede", token, "a new run")
        reply = holder.complete("svc")  # sent with the held run's token: changes nothing
        assert "superseded" in reply.message
        holder.fail("svc", "exited with status 1")
        assert units(s)["svc"]["status"] == "started"
    log = agent_process.stop()[1]
    assert "svc: its run was superseded by a new run; telling its `run` to stop its command" in log
    assert "svc: ignored its end from a run superseded by a new run" in log
    assert log.count("svc: ignored") == 1  # logged once per run, not per report


def test_taking_back_a_superseded_run_is_refused_as_superseded(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    me = owner(os.getpid(), "run")
    with Client(s) as holder:
        holder.start("svc", owner=me, hold=True)
        agent_process.kill()
        agent_process.start()
        with Client(s) as other:
            with pytest.raises(Refused, match="already started"):
                other.start("svc")  # not yet back, but within its grace: still its run
            other.start("svc", rerun=True)
        with pytest.raises(Superseded, match="superseded by a new run while the agent restarted"):
            holder.take_back("svc")


async def test_orders_reach_only_the_connection_that_holds_the_run(
    agent: Service, config: AgentConfig
) -> None:
    """An in-process check of the push itself: an idle connection that holds nothing is
    told nothing, and the holder's connection goes on serving requests after its order."""
    async with AsyncClient(config.socket) as bystander:
        await bystander.ping()
        await trio.to_thread.run_sync(lambda: _held_and_superseded(config.socket))
        assert (await bystander.ping()).pid == os.getpid()


def _held_and_superseded(socket: Path) -> None:
    me = owner(os.getpid(), "run")
    with Client(socket) as holder, Client(socket) as other:
        holder.start("svc", owner=me, hold=True)
        other.start("svc", rerun=True)
        fd = holder.fileno()
        assert fd is not None and select.select([fd], [], [], LIMIT)[0]
        assert [order.what for order in holder.take_orders()] == ["supersede"]
        assert holder.ping().pid == os.getpid()  # the same connection, still serving


# --- one graph across hosts --------------------------------------------------------------------


def test_a_rerun_on_another_host_supersedes_the_run_held_here(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    """It is the applied change that supersedes, whichever agent made it: a `--rerun` on
    host B reaches the `run` holding the unit through host A's agent (SPEC §10, §11)."""
    url = etcd.url("one-run")
    host_a = etcd_agents(url, "--host-id", "host-a")
    host_b = etcd_agents(url, "--host-id", "host-b")
    with cleaned_up("sleep 6031", "sleep 6032"):
        first = spawn_run(host_a.socket, "svc", "--ready-log", "ready", "--", *service(6031))
        wait_for(lambda: owned_by(host_b.socket, "svc", first.pid), "host B to see svc ready")
        refused = host_b.cli("run", "svc", "--ready-log", "ready", "--", *service(6032))
        assert refused.returncode == 1
        assert f"`unitsync sync run` (pid {first.pid}," in refused.stderr
        assert "the agent cannot tell whether it still runs" in refused.stderr  # not guessed
        second = spawn_run(
            host_b.socket, "svc", "--rerun", "--ready-log", "ready", "--", *service(6032)
        )
        _out, err = first.communicate(timeout=LIMIT)
        assert first.returncode == 0, err
        assert f"svc: superseded by a new run (pid {second.pid}); stopping\n" in err
        assert copies("sleep 6031") == []
        wait_for(lambda: owned_by(host_a.socket, "svc", second.pid), "host A to see the new run")
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=LIMIT)
