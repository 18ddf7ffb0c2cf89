"""`run`, `status --watch` and the Python API, as people use them."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from unitsync.client import Client, DependencyFailed

from conftest import AgentProcess, on_a_terminal, read_until, run_cli, sock, spawn_cli, unit_status


@pytest.mark.parametrize("code", [0, 3, 42])
def test_run_exits_with_the_commands_status_and_records_it(
    agent_process: AgentProcess, code: int
) -> None:
    result = run_cli(
        "sync", "run", "job", "--", "sh", "-c", f"exit {code}", socket=sock(agent_process)
    )
    assert result.code == code
    expected = ("completed", "") if code == 0 else ("failed", f"exit status {code}")
    assert unit_status(agent_process, "job") == expected


def test_run_waits_for_its_wants_and_passes_output_through(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    s = sock(agent_process)
    waiter = spawn_cli("sync", "run", "app", "--want", "db", "--", "echo", "app ran", socket=s)
    assert waiter.stderr is not None
    assert waiter.stderr.readline().strip() == "app: waiting for db"
    assert unit_status(agent_process, "app")[0] == "pending"
    run_cli("sync", "run", "db", "--", "true", socket=s)
    out, _err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0
    assert out == "app ran\n"
    assert unit_status(agent_process, "app")[0] == "completed"


def test_run_does_not_run_the_command_when_a_dependency_failed(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    s = sock(agent_process)
    marker = tmp_path / "ran"
    run_cli("sync", "fail", "db", "--reason", "no disk", "--force", socket=s)
    result = run_cli("sync", "run", "app", "--want", "db", "--", "touch", str(marker), socket=s)
    assert result.code == 4
    assert "no disk" in result.err and "not running touch" in result.err
    assert not marker.exists()
    timed_out = run_cli(
        "sync",
        "run",
        "slow",
        "--want",
        "never",
        "--timeout",
        "1s",
        "--",
        "touch",
        str(marker),
        socket=s,
    )
    assert timed_out.code == 5
    assert not marker.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_passes_signals_to_the_command(
    agent_process: AgentProcess, tmp_path: Path, signum: signal.Signals
) -> None:
    ready = tmp_path / "ready"
    script = f"touch {ready}; exec sleep 60"
    proc = spawn_cli("sync", "run", "server", "--", "sh", "-c", script, socket=sock(agent_process))
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert unit_status(agent_process, "server") == ("failed", f"killed by signal {signum.name}")


def test_run_of_a_missing_command_fails_the_unit(agent_process: AgentProcess) -> None:
    result = run_cli("sync", "run", "x", "--", "no-such-command-here", socket=sock(agent_process))
    assert result.code == 127
    assert unit_status(agent_process, "x") == ("failed", "command not found: no-such-command-here")


def test_run_needs_a_command(agent_process: AgentProcess) -> None:
    assert run_cli("sync", "run", "x", socket=sock(agent_process)).code == 2


def test_watch_prints_one_json_object_per_event_and_stops_on_ctrl_c(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "claude", "git", socket=s)
    watcher = spawn_cli("sync", "status", "--watch", "-o", "json", socket=s)
    assert watcher.stdout is not None
    snapshot = json.loads(watcher.stdout.readline())
    assert snapshot["event"] == "snapshot"
    assert sorted(u["name"] for u in snapshot["units"]) == ["claude", "git"]
    run_cli("sync", "start", "git", socket=s)
    event = json.loads(watcher.stdout.readline())
    assert (event["event"], event["unit"]["name"], event["unit"]["status"]) == (
        "changed",
        "git",
        "started",
    )
    assert event["unit"]["history"][-1]["from"] == "pending"
    watcher.send_signal(signal.SIGINT)
    watcher.communicate(timeout=30)
    assert watcher.returncode == 0


def test_a_watcher_sees_a_run_owning_its_unit_as_running(agent_process: AgentProcess) -> None:
    """The hold is taken after the move is committed: the watcher is told again, so the
    unit's latest view never says its owner is gone while `run` runs it."""
    s = sock(agent_process)
    watcher = spawn_cli("sync", "status", "--watch", "-o", "json", socket=s)
    assert watcher.stdout is not None
    json.loads(watcher.stdout.readline())  # the first full view: watching from now on
    runner = spawn_cli("sync", "run", "job", "--", "sleep", "600", socket=s)
    try:
        seen = read_until(watcher.stdout.fileno(), b'"alive": true')  # bounded: 30 s
        seen += read_until(watcher.stdout.fileno(), b"\n") if not seen.endswith(b"\n") else b""
        latest = json.loads(seen.decode().splitlines()[-1])["unit"]
        assert latest["name"] == "job" and latest["status"] == "started"
        assert latest["owner"]["kind"] == "run" and latest["owner"]["alive"] is True
    finally:
        runner.terminate()
        runner.communicate(timeout=60)
        watcher.send_signal(signal.SIGINT)
        watcher.communicate(timeout=30)


def test_the_python_context_manager_completes_or_fails_the_unit(
    agent_process: AgentProcess,
) -> None:
    with Client(sock(agent_process)) as client:
        client.start("git")
        client.complete("git")
        with client.unit("claude", wants=["git"]) as started:
            assert started.unit == "claude"
            assert client.status("claude")[0].status == "started"
        assert client.status("claude")[0].status == "completed"

        with pytest.raises(RuntimeError), client.unit("flaky"):
            raise RuntimeError("disk full")
        [flaky] = client.status("flaky")
        assert (flaky.status, flaky.reason) == ("failed", "RuntimeError: disk full")

        with pytest.raises(DependencyFailed), client.unit("after-flaky", wants=["flaky"]):
            pytest.fail("the block must not run when a dependency failed")


def test_start_on_a_terminal_redraws_one_live_line(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "app", "db", socket=s)
    proc, terminal = on_a_terminal("sync", "start", "app", socket=s)
    shown = read_until(terminal, b"waiting for db (")
    assert b"\r\x1b[Kapp: waiting for db (" in shown  # drawn in place, with the time waited
    run_cli("sync", "start", "db", socket=s)
    run_cli("sync", "complete", "db", socket=s)
    shown = read_until(terminal, b"started after waiting")
    assert proc.wait(timeout=30) == 0
    assert b"app: started after waiting" in shown
    os.close(terminal)


def test_watch_on_a_terminal_is_a_live_table(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "claude", "git", socket=s)
    proc, terminal = on_a_terminal("sync", "status", "--watch", socket=s)
    assert b"unitsync: every unit" in read_until(terminal, b"Ctrl-C to stop")
    run_cli("sync", "fail", "git", "--reason", "clone refused", "--force", socket=s)
    assert b"clone refused" in read_until(terminal, b"clone refused")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    os.close(terminal)
