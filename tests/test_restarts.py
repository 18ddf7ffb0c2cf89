"""Restarts that just work (SPEC §7, issue 11): agent restarts, workspace restarts, one-time
units and run owners, with real agents and real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from unitsync.agent.serve.server import AgentConfig
from unitsync.client import Client
from unitsync.client.owners import owner
from unitsync.wire.errors import AlreadyDone, Refused
from unitsync.wire.host.processes import start_ticks
from unitsync.wire.protocol import Owner

from conftest import AgentProcess, kill_ours, read_until, run_cli, spawn_cli

UNITSYNC = str(Path(sys.executable).with_name("unitsync"))


def units(socket: Path) -> dict[str, dict]:
    printed = json.loads(run_cli("sync", "status", "-o", "json", socket=socket).out)
    return {unit["name"]: unit for unit in printed["units"]}


def wait_for(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Until `condition` holds (a bound on a hang, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def restarted(agent: AgentProcess, boot_id: str, *extra: str) -> AgentProcess:
    """The agent stopped in order and started again, in the boot called `boot_id`."""
    if agent.proc is not None and agent.proc.poll() is None:
        agent.stop()
    agent.extra = ("--boot-id", boot_id, *extra)
    return agent.start()


def script(socket: Path, body: str) -> subprocess.Popen[str]:
    env = dict(os.environ, UNITSYNC_SOCKET=str(socket), UNITSYNC="unitsync")
    return subprocess.Popen(
        ["bash", "-ec", body.replace("unitsync ", f"{UNITSYNC} ")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def booted(config: AgentConfig) -> AgentProcess:
    agent = AgentProcess(config, extra=("--boot-id", "boot-A")).start()
    yield agent
    if agent.proc and agent.proc.poll() is None:
        agent.kill()


# --- boots -----------------------------------------------------------------------------------


def setup_workspace(s: Path) -> None:
    """The issue's example, one-time git included: db completed, db-user's script running."""
    run_cli("sync", "want", "db-user", "db", socket=s)
    run_cli("sync", "start", "db", socket=s)
    run_cli("sync", "complete", "db", socket=s)
    run_cli("sync", "start", "db-user", socket=s)
    assert run_cli("sync", "run", "git", "--once", "--", "true", socket=s).code == 0


def test_an_agent_restart_in_the_same_boot_keeps_everything(booted: AgentProcess) -> None:
    s = booted.config.socket
    setup_workspace(s)
    before = units(s)
    restarted(booted, "boot-A")
    assert units(s) == before
    assert "boot 1 since" in run_cli("sync", "ping", socket=s).out


def test_a_workspace_restart_starts_every_unit_over_but_completed_one_time_units(
    booted: AgentProcess,
) -> None:
    s = booted.config.socket
    setup_workspace(s)
    restarted(booted, "boot-B")
    after = units(s)
    for name in ("db", "db-user"):
        assert (after[name]["status"], after[name]["reason"]) == ("pending", "workspace restarted")
        assert [h["boot"] for h in after[name]["history"]][-1] == 2
    assert after["git"]["status"] == "completed" and after["git"]["once"]
    assert [d["unit"] for d in after["db-user"]["dependencies"]] == ["db"]  # edges kept
    assert len(after["db"]["history"]) == 3  # started, completed (boot 1), pending (boot 2)
    assert {h["boot"] for h in after["db"]["history"][:2]} == {1}
    assert "boot 2 since" in run_cli("sync", "ping", socket=s).out
    table = run_cli("sync", "status", socket=s).out
    assert table.startswith("boot 2 since ")
    assert json.loads(run_cli("sync", "status", "-o", "json", socket=s).out)["boot"] == 2
    restarted(booted, "boot-B")  # another agent restart in boot 2 changes nothing more
    assert units(s) == after


def test_after_a_workspace_restart_the_same_scripts_run_again_in_order(
    booted: AgentProcess, tmp_path: Path
) -> None:
    s = booted.config.socket
    log = tmp_path / "order"
    db_user = f"""
        unitsync sync want db-user db
        unitsync sync start db-user
        echo db-user >> {log}
        unitsync sync complete db-user
    """
    db = f"""
        unitsync sync start db
        sleep 0.5
        echo db >> {log}
        unitsync sync complete db
        if unitsync sync start git --once; then echo clone >> {log}; unitsync sync complete git; fi
    """
    for boot in ("boot-A", "boot-B"):
        restarted(booted, boot)
        first = script(s, db_user)  # the dependent's script runs first
        wait_for(lambda: units(s).get("db-user", {}).get("waiters") == 1, "db-user waits")
        second = script(s, db)
        for proc in (first, second):
            _out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    assert log.read_text().split() == ["db", "db-user", "clone", "db", "db-user"]


def test_the_crash_of_an_agent_in_the_middle_of_a_new_boot_is_harmless(
    booted: AgentProcess,
) -> None:
    """Covered from every angle by tests/test_crash.py; here: the boot number stays right."""
    s = booted.config.socket
    setup_workspace(s)
    restarted(booted, "boot-B")
    restarted(booted, "boot-C")
    assert json.loads(run_cli("sync", "status", "-o", "json", socket=s).out)["boot"] == 3


# --- one-time units ---------------------------------------------------------------------------


def test_one_time_units_branch_scripts_and_survive_workspace_restarts(
    booted: AgentProcess, tmp_path: Path
) -> None:
    s = booted.config.socket
    marker = tmp_path / "cloned"
    first = run_cli("sync", "start", "git", "--once", socket=s)
    assert first.code == 0
    run_cli("sync", "complete", "git", socket=s)
    again = run_cli("sync", "start", "git", "--once", socket=s)
    assert again.code == 7
    assert "one-time unit, completed at" in again.err and "nothing to do" in again.err
    skipped = run_cli("sync", "run", "git", "--once", "--", "touch", str(marker), socket=s)
    assert skipped.code == 0 and not marker.exists()
    assert "not running touch" in skipped.err
    restarted(booted, "boot-B")
    assert run_cli("sync", "start", "git", "--once", socket=s).code == 7
    assert run_cli("sync", "start", "git", "--once", "--rerun", socket=s).code == 0
    run_cli("sync", "complete", "git", socket=s)
    assert run_cli("sync", "reset", "git", socket=s).code == 0
    ran = run_cli("sync", "run", "git", "--once", "--", "touch", str(marker), socket=s)
    assert ran.code == 0 and marker.exists()


def test_want_and_complete_mark_one_time_units_too(booted: AgentProcess) -> None:
    s = booted.config.socket
    run_cli("sync", "want", "dotfiles", "git", "--once", socket=s)
    run_cli("sync", "complete", "git", "--force", "--once", socket=s)
    assert units(s)["dotfiles"]["once"] and units(s)["git"]["once"]
    with Client(s) as client, pytest.raises(AlreadyDone) as caught:
        client.start("git", once=True)
    assert caught.value.exit_code == 7


def test_a_unit_completed_before_it_was_called_one_time_stays_done(
    booted: AgentProcess, tmp_path: Path
) -> None:
    """A workspace moving its clone to `run --once`: the clone done earlier in this boot is
    done, and stays so across a workspace restart (it is not cloned again onto itself)."""
    s = booted.config.socket
    marker = tmp_path / "cloned-twice"
    run_cli("sync", "run", "clone", "--", "true", socket=s)
    assert units(s)["clone"]["once"] is False
    skipped = run_cli("sync", "run", "clone", "--once", "--", "touch", str(marker), socket=s)
    assert skipped.code == 0 and "not running touch" in skipped.err
    assert units(s)["clone"]["once"] is True
    restarted(booted, "boot-B")
    assert run_cli("sync", "start", "clone", "--once", socket=s).code == 7
    assert units(s)["clone"]["status"] == "completed" and not marker.exists()


def test_run_once_of_a_service_is_a_usage_error(booted: AgentProcess) -> None:
    result = run_cli(
        "sync",
        "run",
        "web",
        "--once",
        "--ready-cmd",
        "true",
        "--",
        "sleep",
        "1",
        socket=booted.config.socket,
    )
    assert result.code == 2 and "not services" in result.err


# --- owners: run ------------------------------------------------------------------------------


def test_a_run_killed_mid_command_fails_its_unit_at_once_and_its_waiters_exit_4(
    booted: AgentProcess,
) -> None:
    s = booted.config.socket
    run_cli("sync", "want", "app", "db", socket=s)
    runner = spawn_cli("sync", "run", "db", "--", "sleep", "606", socket=s)
    wait_for(lambda: units(s).get("db", {}).get("status") == "started", "db started")
    waiter = spawn_cli("sync", "start", "app", socket=s)
    assert waiter.stderr is not None and "waiting for db" in waiter.stderr.readline()
    runner.send_signal(signal.SIGKILL)
    runner.wait()  # `sleep`, its orphan, keeps the pipes open: do not read them
    kill_ours("sleep 606")
    _out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 4, err
    db = units(s)["db"]
    assert db["status"] == "failed"
    assert f"lost its run: `unitsync sync run` (pid {runner.pid}," in db["reason"]
    assert "ended without reporting how its command ended" in db["reason"]


def test_a_run_keeps_its_unit_through_an_agent_restart(
    booted: AgentProcess, tmp_path: Path
) -> None:
    s = booted.config.socket
    go = tmp_path / "go"
    runner = spawn_cli(
        "sync",
        "run",
        "job",
        "--",
        "sh",
        "-c",
        f"while [ ! -e {go} ]; do sleep 0.05; done",
        socket=s,
    )
    wait_for(lambda: units(s).get("job", {}).get("status") == "started", "job started")
    assert units(s)["job"]["owner"] == {
        "pid": runner.pid,
        "command": units(s)["job"]["owner"]["command"],
        "kind": "run",
        "alive": True,
    }
    booted.kill()  # SIGKILL: no goodbye
    booted.start()
    # (Its owner shows as alive at once: the agent waits for it. Wait for the run itself.)
    assert runner.stderr is not None
    took = read_until(runner.stderr.fileno(), b"took the run back")
    assert b"took the run back" in took
    assert units(s)["job"]["owner"]["alive"]
    go.touch()
    _out, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    assert (units(s)["job"]["status"], units(s)["job"]["reason"]) == ("completed", "")


def test_a_run_that_does_not_come_back_in_time_fails_its_unit(booted: AgentProcess) -> None:
    s = booted.config.socket
    runner = spawn_cli("sync", "run", "job", "--", "sleep", "600", socket=s)
    wait_for(lambda: units(s).get("job", {}).get("status") == "started", "job started")
    runner.send_signal(signal.SIGSTOP)  # frozen: it cannot come back
    try:
        booted.kill()
        restarted(booted, "boot-A", "--reclaim-grace", "1s")
        wait_for(lambda: units(s)["job"]["status"] == "failed", "the grace period ran out")
        assert "did not come back within 1s of the agent's restart" in units(s)["job"]["reason"]
    finally:
        runner.send_signal(signal.SIGCONT)
    runner.send_signal(signal.SIGTERM)
    _out, err = runner.communicate(timeout=60)
    assert "given up" in err


def test_a_reclaim_grace_of_0_waits_for_the_run_forever(booted: AgentProcess) -> None:
    """0 means forever here as for every duration: a frozen run that thaws long after the
    restart still takes its run back."""
    s = booted.config.socket
    runner = spawn_cli("sync", "run", "job", "--", "sleep", "600", socket=s)
    wait_for(lambda: units(s).get("job", {}).get("status") == "started", "job started")
    runner.send_signal(signal.SIGSTOP)
    try:
        booted.kill()
        restarted(booted, "boot-A", "--reclaim-grace", "0")
        time.sleep(1)  # long past "at once"
        assert units(s)["job"]["status"] == "started"
    finally:
        runner.send_signal(signal.SIGCONT)
    assert runner.stderr is not None
    assert b"took the run back" in read_until(runner.stderr.fileno(), b"took the run back")
    runner.send_signal(signal.SIGTERM)
    _out, err = runner.communicate(timeout=60)
    assert "given up" not in err
    assert units(s)["job"]["status"] == "failed"  # ended by SIGTERM: its own end, recorded


def test_an_owner_that_is_no_process_is_a_usage_error(booted: AgentProcess) -> None:
    for pid in ("999999999", "-5"):
        result = run_cli("sync", "start", "job", "--owner", pid, socket=booted.config.socket)
        assert result.code == 2
        assert f"--owner {pid}: no process has that pid" in result.err
    assert "job" not in units(booted.config.socket)


def test_a_ready_service_whose_run_dies_fails_its_unit(booted: AgentProcess) -> None:
    s = booted.config.socket
    runner = spawn_cli("sync", "run", "web", "--ready-cmd", "true", "--", "sleep", "607", socket=s)
    wait_for(lambda: units(s).get("web", {}).get("status") == "completed", "web ready")
    assert units(s)["web"]["owner"]["kind"] == "run"
    runner.send_signal(signal.SIGKILL)
    runner.wait()  # its service is an orphan now, holding the pipes open: do not read them
    kill_ours("sleep 607")
    wait_for(lambda: units(s)["web"]["status"] == "failed", "web failed")
    assert "lost its run" in units(s)["web"]["reason"]


# --- owners: start ----------------------------------------------------------------------------


def test_a_start_whose_owner_script_is_gone_proceeds_as_a_new_run(booted: AgentProcess) -> None:
    s = booted.config.socket
    owner_script = script(s, "unitsync sync start deploy; sleep 600")
    wait_for(lambda: units(s).get("deploy", {}).get("status") == "started", "deploy started")
    refused = run_cli("sync", "start", "deploy", socket=s)
    assert refused.code == 1
    assert f"by pid {owner_script.pid} (bash -ec" in refused.err
    assert "which still runs; use --rerun" in refused.err
    assert units(s)["deploy"]["owner"]["alive"] is True
    owner_script.kill()
    owner_script.communicate()
    assert units(s)["deploy"]["owner"]["alive"] is False
    again = run_cli("sync", "start", "deploy", socket=s)
    assert again.code == 0, again.err
    assert units(s)["deploy"]["reason"].startswith(
        f"new run: its previous owner, pid {owner_script.pid} (bash -ec"
    )


def test_an_owner_that_exited_but_is_not_yet_reaped_is_gone(booted: AgentProcess) -> None:
    """A zombie (its parent has not waited for it) runs no more: it owns nothing."""
    s = booted.config.socket
    script_that_ended = subprocess.Popen(["sleep", "0.1"])
    run_cli("sync", "start", "job", "--owner", str(script_that_ended.pid), socket=s)
    wait_for(lambda: state_of(script_that_ended.pid) == "Z", "the script to end, unreaped")
    try:
        assert units(s)["job"]["owner"]["alive"] is False
        again = run_cli("sync", "start", "job", socket=s)
        assert again.code == 0, again.err
        assert units(s)["job"]["reason"].startswith("new run: its previous owner")
    finally:
        script_that_ended.wait()


def state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_the_owner_is_the_script_past_a_wrapper_such_as_timeout(booted: AgentProcess) -> None:
    """`timeout 60 unitsync sync start x` ends with unitsync: the run is the script's."""
    s = booted.config.socket
    owner_script = script(s, "timeout 60 unitsync sync start wrapped; sleep 600")
    try:
        wait_for(lambda: units(s).get("wrapped", {}).get("status") == "started", "started")
        assert units(s)["wrapped"]["owner"]["pid"] == owner_script.pid
        refused = run_cli("sync", "start", "wrapped", socket=s)
        assert refused.code == 1 and "which still runs" in refused.err
    finally:
        owner_script.kill()
        owner_script.communicate()


def test_a_reused_pid_is_not_taken_for_the_owner(booted: AgentProcess) -> None:
    """A process with the owner's pid but another start time is a different process."""
    s = booted.config.socket
    alive = owner(os.getpid(), "start")
    assert alive is not None
    impostor = Owner(alive.pid, alive.ticks - 1, alive.command, "start", alive.pidns)
    with Client(s) as client:
        client.start("task", owner=impostor)
        client.start("task")  # the recorded owner's pid runs, but it is not that process
    assert units(s)["task"]["reason"].startswith("new run: its previous owner")
    with Client(s) as client:
        client.start("other", owner=alive)
        with pytest.raises(Refused, match="which still runs"):
            client.start("other")


def test_an_owner_in_another_pid_namespace_is_not_guessed(booted: AgentProcess) -> None:
    s = booted.config.socket
    elsewhere = Owner(1, start_ticks(1) or 0, "init", "start", "pid:[1]")
    with Client(s) as client:
        client.start("far", owner=elsewhere)
        with pytest.raises(Refused, match="another PID namespace: the agent cannot tell"):
            client.start("far")
    assert units(s)["far"]["owner"]["alive"] is None
    assert "pid 1 ?" in run_cli("sync", "status", socket=s).out


def test_an_explicit_owner_and_the_status_detail(booted: AgentProcess) -> None:
    s = booted.config.socket
    holder = subprocess.Popen(["sleep", "600"])
    try:
        assert run_cli("sync", "start", "x", "--owner", str(holder.pid), socket=s).code == 0
        detail = run_cli("sync", "status", "x", socket=s).out
        assert (
            f"owner:      pid {holder.pid} (sleep 600), the script that started it, running"
            in detail
        )
    finally:
        holder.kill()
        holder.communicate()
    assert "gone" in run_cli("sync", "status", "x", socket=s).out
