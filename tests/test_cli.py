"""The `unitsync` command as scripts use it: fresh processes against a real agent process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from unitsync.agent.serve.server import AgentConfig
from unitsync.agent.store.journal import logfile

from conftest import AgentProcess, run_cli, sock, spawn_cli

UNITSYNC = str(Path(sys.executable).with_name("unitsync"))


def test_the_coder_example_runs_in_order(agent_process: AgentProcess, tmp_path: Path) -> None:
    """The two scripts of the Coder example, run at once: claude never starts before git ends."""
    log = tmp_path / "order.log"
    claude = f"""
        set -e
        {UNITSYNC} sync want claude git
        {UNITSYNC} sync start claude
        echo claude-started >> {log}
        {UNITSYNC} sync complete claude
    """
    git = f"""
        set -e
        {UNITSYNC} sync start git
        sleep 1
        echo git-cloned >> {log}
        {UNITSYNC} sync complete git
    """
    env = dict(os.environ, UNITSYNC_SOCKET=str(agent_process.config.socket))
    scripts = [
        subprocess.Popen(["bash", "-c", body], env=env, stderr=subprocess.PIPE, text=True)
        for body in (claude, git)
    ]
    for script in scripts:
        _out, err = script.communicate(timeout=60)
        assert script.returncode == 0, err
    assert log.read_text().split() == ["git-cloned", "claude-started"]
    statuses = json.loads(run_cli("sync", "status", "-o", "json", socket=sock(agent_process)).out)
    assert {u["name"]: u["status"] for u in statuses["units"]} == {
        "claude": "completed",
        "git": "completed",
    }


def test_ping_prints_version_and_uptime(agent_process: AgentProcess) -> None:
    result = run_cli("sync", "ping", socket=sock(agent_process))
    assert result.code == 0
    assert "unitsync agent 0.1.0" in result.out
    assert f"pid {agent_process.proc.pid}" in result.out


def test_no_agent_exits_3_with_a_hint(short_tmp: Path) -> None:
    result = run_cli("sync", "ping", socket=short_tmp / "nobody.sock")
    assert result.code == 3
    assert "no agent is listening" in result.err
    assert "unitsync agent" in result.err


def test_exit_codes(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    assert run_cli("sync", "want", "a", "b", socket=s).code == 0
    cycle = run_cli("sync", "want", "b", "a", socket=s)
    assert cycle.code == 1
    assert "b -> a -> b" in cycle.err
    assert run_cli("sync", "complete", "typo", socket=s).code == 1
    assert run_cli("sync", "status", "ghost", socket=s).code == 1
    assert run_cli("sync", "want", "", "x", socket=s).code == 1
    assert run_cli("sync", "start", "a", "--frobnicate", socket=s).code == 2
    assert run_cli("sync", "start", "a", "--timeout", "soon", socket=s).code == 2
    assert run_cli("sync", "reset", socket=s).code == 2
    assert run_cli("sync", "fail", "b", "--reason", "broken", "--force", socket=s).code == 0
    failed = run_cli("sync", "start", "a", socket=s)
    assert failed.code == 4
    assert "dependency b failed (broken)" in failed.err
    assert run_cli("sync", "want", "slow", "never", socket=s).code == 0
    timed_out = run_cli("sync", "start", "slow", "--timeout", "1s", socket=s)
    assert timed_out.code == 5
    assert "timed out after 1s" in timed_out.err


def test_start_prints_a_line_when_it_waits_and_one_when_it_proceeds(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "app", "db", socket=s)
    waiter = spawn_cli("sync", "start", "app", socket=s)
    assert waiter.stderr is not None
    assert waiter.stderr.readline().strip() == "app: waiting for db"
    run_cli("sync", "start", "db", socket=s)
    run_cli("sync", "complete", "db", socket=s)
    _out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0
    assert err.startswith("app: started after waiting ")


def test_want_on_a_started_unit_says_it_applies_to_the_next_start(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    run_cli("sync", "start", "web", socket=s)
    result = run_cli("sync", "want", "web", "cache", socket=s)
    assert result.code == 0
    assert "apply to its next start" in result.err


def test_status_formats(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "claude", "git", socket=s)
    run_cli("sync", "start", "git", socket=s)
    table = run_cli("sync", "status", socket=s).out
    assert table.startswith("boot 1 since ")
    assert table.splitlines()[1].split()[:3] == ["UNIT", "STATUS", "READY"]
    assert any(line.split()[:2] == ["git", "started"] for line in table.splitlines())
    one = run_cli("sync", "status", "claude", "--output", "json", socket=s)
    unit = json.loads(one.out)
    assert unit["dependencies"] == [
        {"unit": "git", "required": "completed", "current": "started", "satisfied": False}
    ]
    assert "digraph" in run_cli("sync", "status", "-o", "dot", socket=s).out
    assert run_cli("sync", "status", "-o", "mermaid", socket=s).out.startswith(("graph", "flow"))


def test_the_agent_stops_cleanly_on_sigterm(agent_process: AgentProcess) -> None:
    code, log = agent_process.stop(signal.SIGTERM)
    assert code == 0, log
    assert "SIGTERM received" in log
    assert not agent_process.config.socket.exists()


def test_a_second_agent_process_refuses_to_start(
    agent_process: AgentProcess, short_tmp: Path
) -> None:
    other = AgentConfig(socket=agent_process.config.socket, state_dir=short_tmp / "s2")
    result = run_cli("agent", "--socket", str(other.socket), "--state-dir", str(other.state_dir))
    assert result.code == 1
    assert result.err.startswith(
        f"unitsync agent: another unitsync agent (pid {agent_process.proc.pid})"
    )
    assert "Traceback" not in result.err


def test_a_damaged_journal_stops_the_agent_with_file_and_offset(short_tmp: Path) -> None:
    config = AgentConfig(socket=short_tmp / "run" / "agent.sock", state_dir=short_tmp / "state")
    agent = AgentProcess(config).start()
    run_cli("sync", "want", "a", "b", socket=config.socket)
    run_cli("sync", "fail", "b", "--force", socket=config.socket)
    agent.stop()
    journal = config.state_dir / "journal.log"
    data = bytearray(journal.read_bytes())
    first_entry = logfile.LOG_HEADER.size
    data[first_entry + 4] ^= 0xFF  # inside the first entry, with valid entries after it
    journal.write_bytes(bytes(data))
    args = ("agent", "--socket", str(config.socket), "--state-dir", str(config.state_dir))
    refused = run_cli(*args, timeout=30)
    assert refused.code == 1
    assert refused.err.startswith(f"unitsync agent: {journal} is damaged")
    assert f"byte offset {first_entry}" in refused.err and "--salvage" in refused.err
    assert "Traceback" not in refused.err
    salvaged = AgentProcess(config, extra=("--salvage",)).start()
    assert run_cli("sync", "ping", socket=config.socket).code == 0
    salvaged.stop()
