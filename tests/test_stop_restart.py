"""Services that stay up (issue 24): `sync stop`, `sync restart` and `run --restart` policies.

Real parts throughout: a real agent process, the real CLI as subprocesses, real services
(Python's HTTP server, `sh -c` loops, a crasher that exits 1 after it is ready), real
signals. Nothing here asserts how long anything took: every wait is for an event, bounded
by LIMIT only so that a broken build fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import AgentProcess, run_cli, sock
from harness.etcd_cluster import EtcdAgent, EtcdCluster

LIMIT = 60.0
"""Bounds every wait, so that a broken build fails instead of hanging; never asserted."""


# --- helpers --------------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def view(agent: AgentProcess, name: str) -> dict:
    """`status NAME -o json`, as a script reads it ({} for a unit not yet known)."""
    shown = run_cli("sync", "status", name, "-o", "json", socket=sock(agent))
    return json.loads(shown.out) if shown.code == 0 else {}


def status(agent: AgentProcess, name: str) -> tuple[str | None, str | None]:
    found = view(agent, name)
    return found.get("status"), found.get("reason")


def spawn(agent: AgentProcess, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """`unitsync sync ARGS` in its own process (its own group: a test may signal it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", "sync", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=dict(os.environ, UNITSYNC_SOCKET=str(sock(agent))),
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def http_server(port: int) -> list[str]:
    return [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", str(port)]


@contextlib.contextmanager
def ending(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Whatever happens in the test, its `run`s end: SIGTERM, which a `run` passes on to its
    command's group and outlives until the group is gone (SIGKILL would orphan it)."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()  # a `run` stops its command's group, then exits
                try:
                    proc.wait(timeout=LIMIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.communicate(timeout=LIMIT)


def crasher(tmp_path: Path) -> list[str]:
    """A service ready at once (it makes `up`), that exits 1 once `crash` exists; each
    start counts itself in `starts`."""
    script = (
        "echo x >> starts; touch up; "
        "while [ ! -e crash ]; do sleep 0.02; done; rm -f crash up; exit 1"
    )
    return ["sh", "-c", script]


def starts(tmp_path: Path) -> int:
    path = tmp_path / "starts"
    return len(path.read_text().split()) if path.exists() else 0


READY_UP = ("--ready-cmd", "test -e up", "--ready-interval", "20ms")


# --- restart policies -----------------------------------------------------------------------


def test_a_crash_restarts_the_service_and_a_dependent_waiting_meanwhile_proceeds(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    """crash -> `started` (restarting, dependents wait) -> ready again -> the dependent
    that started during the restart proceeds, and never fails."""
    web = spawn(
        agent_process,
        "run", "web", *READY_UP, "--restart", "on-failure", "--restart-delay", "3s",
        "--", *crasher(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    with ending(web):
        wait_for(lambda: status(agent_process, "web")[0] == "completed", "web ready")
        (tmp_path / "crash").touch()
        restarting = ("started", "restarting in 3s after exit status 1 (restart 1 of 5)")
        wait_for(lambda: status(agent_process, "web") == restarting, "web restarting")
        app = spawn(agent_process, "run", "app", "--want", "web", "--", "true")
        with ending(app):
            assert app.wait(timeout=LIMIT) == 0, app.communicate()
        shown = view(agent_process, "web")
        assert shown["status"] == "completed" and shown["restarts"] == 1
        assert starts(tmp_path) == 2
        ready_again = shown["history"][-1]["at"]
        app_started = next(h for h in view(agent_process, "app")["history"] if h["to"] == "started")
        assert app_started["at"] >= ready_again  # it waited for the restarted web
        restart = shown["history"][-2]
        assert (restart["from"], restart["to"], restart["restart"]) == (
            "completed",
            "started",
            True,
        )
        web.send_signal(signal.SIGTERM)
        assert web.wait(timeout=LIMIT) != 0  # a forwarded signal ends it: never restarted
    assert starts(tmp_path) == 2


def test_past_the_limit_the_unit_fails_and_run_exits_with_the_commands_status(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    script = "echo x >> starts; touch up; sleep 0.2; rm -f up; exit 3"
    result = run_cli(
        "sync", "run", "web", *READY_UP, "--restart", "always", "--restart-delay", "50ms",
        "--restart-limit", "2", "--", "sh", "-c", script,
        socket=sock(agent_process), cwd=tmp_path, timeout=LIMIT,
    )  # fmt: skip
    assert result.code == 3, result.err
    shown = view(agent_process, "web")
    assert shown["status"] == "failed"
    assert shown["reason"] == (
        "exited with status 3 after being ready; gave up after 2 restarts in 5m"
    )
    assert shown["restarts"] == 2 and starts(tmp_path) == 3
    reasons = [h["reason"] for h in shown["history"] if h["restart"]]
    assert reasons == [
        "restarting in 0.05s after exit status 3 (restart 1 of 2)",
        "restarting in 0.1s after exit status 3 (restart 2 of 2)",  # doubled
    ]
    assert "web: restarting in 0.05s after exit status 3 (restart 1 of 2)" in result.err
    table = run_cli("sync", "status", socket=sock(agent_process)).out.splitlines()
    column = table[1].index("RESTARTS")  # (a column only once a unit restarted)
    assert table[2][column:].split()[0] == "2"
    timeline = run_cli("sync", "timeline", socket=sock(agent_process)).out
    assert "  restart 1  restarted" in timeline and "  restart 2  failed" in timeline
    data = json.loads(run_cli("sync", "timeline", "-o", "json", socket=sock(agent_process)).out)
    assert [r["outcome"] for r in data["units"][0]["restarts"]] == ["restarted", "failed"]


def test_a_plain_command_is_retried_until_it_succeeds_and_only_then_completed(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    script = "echo x >> starts; [ -e ok ]"  # fails until `ok` exists
    app = spawn(
        agent_process,
        "run", "setup", "--restart", "on-failure", "--restart-delay", "200ms",
        "--restart-limit", "10", "--", "sh", "-c", script,
        cwd=tmp_path,
    )  # fmt: skip
    with ending(app):
        wait_for(lambda: starts(tmp_path) >= 2, "a retry")
        state, reason = status(agent_process, "setup")
        assert state == "started" and reason is not None  # retrying: not failed meanwhile
        assert reason.startswith("restarting in ") and "after exit status 1 (restart " in reason
        (tmp_path / "ok").touch()
        assert app.wait(timeout=LIMIT) == 0
    shown = view(agent_process, "setup")
    tries = starts(tmp_path)
    assert shown["status"] == "completed" and shown["restarts"] == tries - 1
    assert [h["to"] for h in shown["history"]] == ["started"] * tries + ["completed"]


def test_ctrl_c_on_a_run_waiting_to_restart_ends_it_without_restarting(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    web = spawn(
        agent_process,
        "run", "web", *READY_UP, "--restart", "on-failure", "--restart-delay", "1m",
        "--", *crasher(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    with ending(web):
        wait_for(lambda: status(agent_process, "web")[0] == "completed", "web ready")
        (tmp_path / "crash").touch()
        wait_for(lambda: "restarting in 1m" in (status(agent_process, "web")[1] or ""), "waiting")
        web.send_signal(signal.SIGINT)
        assert web.wait(timeout=LIMIT) == 130
        _out, err = web.communicate()
    assert "web: SIGINT while waiting to restart it; not restarting" in err
    assert status(agent_process, "web") == ("failed", "stopped by SIGINT while waiting to restart")
    assert starts(tmp_path) == 1


def test_the_policy_and_its_count_survive_an_agent_restart(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    """The `run` reconnects and keeps its policy and count; the agent kept the unit's."""
    web = spawn(
        agent_process,
        "run", "web", *READY_UP, "--restart", "on-failure", "--restart-delay", "50ms",
        "--restart-limit", "2", "--", *crasher(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    with ending(web):
        wait_for(lambda: status(agent_process, "web")[0] == "completed", "web ready")
        (tmp_path / "crash").touch()
        wait_for(lambda: view(agent_process, "web").get("restarts") == 1, "a first restart")
        wait_for(lambda: status(agent_process, "web")[0] == "completed", "web ready again")
        code, _log = agent_process.stop()
        assert code == 0
        agent_process.start()
        wait_for(lambda: (view(agent_process, "web").get("owner") or {}).get("alive"), "back")
        (tmp_path / "crash").touch()
        wait_for(lambda: view(agent_process, "web").get("restarts") == 2, "a second restart")
        wait_for(lambda: status(agent_process, "web")[0] == "completed", "ready a third time")
        (tmp_path / "crash").touch()  # the third crash is past the limit of 2
        assert web.wait(timeout=LIMIT) == 1
        _out, err = web.communicate()
    assert "took the run back" in err
    assert status(agent_process, "web")[1] == (
        "exited with status 1 after being ready; gave up after 2 restarts in 5m"
    )


# --- stop and restart -----------------------------------------------------------------------


def test_stop_ends_the_service_leaves_the_unit_pending_and_a_new_run_starts_it(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    port = free_port()
    srv = spawn(agent_process, "run", "srv", "--ready-log", "Serving", "--", *http_server(port))
    with ending(srv):
        wait_for(lambda: status(agent_process, "srv")[0] == "completed", "srv ready")
        assert answers(port)
        stopped = run_cli("sync", "stop", "srv", "--timeout", "1m", socket=sock(agent_process))
        assert (stopped.code, stopped.out) == (0, "srv stopped; it is pending\n")
        assert not answers(port)  # its group is gone when `stop` returns
        assert srv.wait(timeout=LIMIT) == 0  # `run` exits 0: stopped as asked
        _out, err = srv.communicate()
    assert "srv: stopping (asked by sync stop (pid " in err
    state, reason = status(agent_process, "srv")
    assert state == "pending" and reason is not None
    assert reason.startswith("stopped by sync stop (pid ")
    again = spawn(agent_process, "run", "srv", "--ready-log", "Serving", "--", *http_server(port))
    with ending(again):
        wait_for(lambda: status(agent_process, "srv")[0] == "completed", "srv ready again")
        assert answers(port)
        assert view(agent_process, "srv")["restarts"] == 0  # a new run counts afresh
        assert (
            run_cli("sync", "stop", "srv", "--timeout", "1m", socket=sock(agent_process)).code == 0
        )
        assert again.wait(timeout=LIMIT) == 0


def test_restart_while_dependents_run_leaves_them_alone_and_makes_new_ones_wait(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    port = free_port()
    slow = f"sleep 2; exec {' '.join(http_server(port))}"  # long enough to be seen restarting
    srv = spawn(agent_process, "run", "srv", "--ready-log", "Serving", "--", "sh", "-c", slow)
    with ending(srv):
        wait_for(lambda: status(agent_process, "srv")[0] == "completed", "srv ready")
        user = spawn(agent_process, "run", "user", "--want", "srv", "--", "sleep", "600")
        with ending(user):
            wait_for(lambda: status(agent_process, "user")[0] == "started", "user runs")
            restart = spawn(agent_process, "restart", "srv", "--timeout", "1m")
            with ending(restart):
                restarting = ("started", "restarting (sync restart)")
                wait_for(lambda: status(agent_process, "srv") == restarting, "restarting")
                late = spawn(agent_process, "run", "late", "--want", "srv", "--", "true")
                with ending(late):
                    assert late.wait(timeout=LIMIT) == 0
                    assert restart.wait(timeout=LIMIT) == 0, restart.communicate()
            shown = view(agent_process, "srv")
            assert shown["status"] == "completed" and shown["restarts"] == 1
            ready_again = shown["history"][-1]["at"]
            started = next(
                h for h in view(agent_process, "late")["history"] if h["to"] == "started"
            )
            assert started["at"] >= ready_again
            assert user.poll() is None and status(agent_process, "user")[0] == "started"
            user.send_signal(signal.SIGTERM)
            user.wait(timeout=LIMIT)
        assert (
            run_cli("sync", "stop", "srv", "--timeout", "1m", socket=sock(agent_process)).code == 0
        )


def test_restart_of_a_service_that_fails_to_come_back_exits_4(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    script = "if [ -e once ]; then exit 3; fi; touch once up; exec sleep 600"
    srv = spawn(agent_process, "run", "srv", *READY_UP, "--", "sh", "-c", script, cwd=tmp_path)
    with ending(srv):
        wait_for(lambda: status(agent_process, "srv")[0] == "completed", "srv ready")
        (tmp_path / "up").unlink()  # (its probe no longer runs: the next one's must not pass)
        result = run_cli("sync", "restart", "srv", "--timeout", "1m", socket=sock(agent_process))
        assert result.code == 4
        assert result.err == (
            "unitsync: srv failed instead of becoming ready again: exited with status 3 "
            "before being ready\n"
        )
        assert srv.wait(timeout=LIMIT) == 3


def test_stop_past_its_timeout_exits_5_and_the_run_goes_on_stopping(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    stubborn = "trap '' TERM; touch up; while :; do sleep 0.05; done"
    srv = spawn(agent_process, "run", "srv", *READY_UP, "--", "sh", "-c", stubborn, cwd=tmp_path)
    with ending(srv):
        wait_for(lambda: status(agent_process, "srv")[0] == "completed", "srv ready")
        result = run_cli("sync", "stop", "srv", "--timeout", "300ms", socket=sock(agent_process))
        assert result.code == 5 and "was not stopped within 0.3s" in result.err
        assert srv.wait(timeout=LIMIT) == 0  # SIGKILL after its grace; then stopped
    assert status(agent_process, "srv")[0] == "pending"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["run", "u", "--restart-delay", "1s", "--", "true"], 2, "add --restart on-failure"),
        (["run", "u", "--restart", "on-failure", "--restart-delay=-1s", "--", "true"], 2,
         "a delay cannot be negative"),
        (["run", "u", "--restart", "on-failure", "--restart-limit", "0", "--", "true"], 2,
         "--restart-limit must be 1 or more"),
        (["run", "u", "--restart", "always", "--", "true"], 2, "for services"),
        (["run", "u", "--restart", "sometimes", "--", "true"], 2, "--restart"),
        (["stop", "nosuch"], 1, "unknown unit 'nosuch'"),
        (["restart", "nosuch"], 1, "unknown unit 'nosuch'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_plain_line_with_the_tables_exit_code(
    agent_process: AgentProcess, args: list[str], code: int, says: str
) -> None:
    result = run_cli("sync", *args, socket=sock(agent_process))
    assert result.code == code
    assert says in result.err and result.err.count("\n") <= 2  # the line (and a usage line)
    assert result.err.startswith("unitsync: ")


def test_stop_or_restart_of_a_unit_with_no_live_run_is_refused_saying_what_to_do(
    agent_process: AgentProcess,
) -> None:
    assert run_cli("sync", "run", "done", "--", "true", socket=sock(agent_process)).code == 0
    result = run_cli("sync", "stop", "done", socket=sock(agent_process))
    assert (result.code, result.err) == (
        1,
        "unitsync: unit 'done' is completed and no `unitsync sync run` runs it: nothing to "
        "stop; `unitsync sync reset` makes it pending\n",
    )
    assert run_cli("sync", "forget", "done", socket=sock(agent_process)).code == 0
    forgotten = run_cli("sync", "restart", "done", socket=sock(agent_process))
    assert forgotten.code == 1 and "unknown unit 'done'" in forgotten.err


# --- across hosts (etcd) --------------------------------------------------------------------


def test_stop_and_restart_from_another_host_reach_the_run_where_it_runs(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    """The agent of the host that holds the run passes the order on: the `Asked` record
    travels through etcd like every change, and host B's agent, whose connection holds
    the run, finds it in its holds."""
    url = etcd.url("orders")
    host_a = etcd_agents(url, "--host-id", "host-a")
    host_b = etcd_agents(url, "--host-id", "host-b")
    port = free_port()
    srv = subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", "sync", "run", "srv", "--ready-log", "Serving",
         "--", *http_server(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, UNITSYNC_SOCKET=str(host_b.socket)),
    )  # fmt: skip

    def on_a() -> dict:
        shown = host_a.cli("status", "srv", "-o", "json")
        return json.loads(shown.stdout) if shown.returncode == 0 else {}

    with ending(srv):
        wait_for(lambda: on_a().get("status") == "completed", "srv ready, as host A sees it")
        restarted = host_a.cli("restart", "srv", "--timeout", "1m")
        assert (restarted.returncode, restarted.stdout) == (0, "srv restarted and is ready again\n")
        assert on_a()["restarts"] == 1 and answers(port)
        stopped = host_a.cli("stop", "srv", "--timeout", "1m")
        assert (stopped.returncode, stopped.stdout) == (0, "srv stopped; it is pending\n")
        assert not answers(port)
        assert srv.wait(timeout=LIMIT) == 0
        _out, err = srv.communicate()
    assert "srv: restarting (asked by sync restart (pid " in err
    assert "srv: stopping (asked by sync stop (pid " in err
    assert on_a()["status"] == "pending"
