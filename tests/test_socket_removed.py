"""The socket file removed while the agent runs (SPEC §4): noticed, re-created, logged.

A temp-dir cleaner or a logout may remove the socket, or its whole folder. The agent
checks its path every RECHECK_INTERVAL (one lstat; see agent/serve/socket_keeper.py) and
binds a fresh socket at the same path; connections already open are kept.
"""

from __future__ import annotations

import shutil
import signal
import stat
import time
from pathlib import Path

import pytest

from unitsync.agent.serve.server import AgentConfig
from unitsync.agent.serve.socket_keeper import RECHECK_INTERVAL
from unitsync.client import Client

from conftest import AgentProcess, spawn_cli

PATIENCE = 60.0
"""How long the test waits for the socket to come back before it gives up (the agent
needs RECHECK_INTERVAL; a loaded CI machine may need more)."""


def wait_until_back(path: Path) -> float:
    """Seconds until `path` is a socket again."""
    started = time.monotonic()
    while time.monotonic() - started < PATIENCE:
        if path.exists() and stat.S_ISSOCK(path.lstat().st_mode):
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{path} was not re-created within {PATIENCE:g}s")


@pytest.mark.parametrize("what", ["the socket", "its folder"])
def test_a_removed_socket_is_recreated_and_open_connections_are_kept(
    agent_process: AgentProcess, what: str
) -> None:
    socket = agent_process.config.socket
    with Client(socket) as client:
        client.want("app", "db")  # this connection stays open throughout
        waiter = spawn_cli("sync", "start", "app", "--timeout", "60s", socket=socket)
        assert waiter.stderr is not None
        assert waiter.stderr.readline().strip() == "app: waiting for db"

        if what == "the socket":
            socket.unlink()
        else:
            shutil.rmtree(socket.parent)
        took = wait_until_back(socket)
        print(f"\n{what} removed: a socket was back after {took:.2f}s")

        assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        assert [unit.name for unit in client.status()] == ["app", "db"]  # same connection
        with Client(socket) as newcomer:  # and the new socket serves newcomers
            newcomer.start("db")
            newcomer.complete("db")
    _out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert "reconnecting" not in err  # the waiter's connection was never dropped
    code, log = agent_process.stop(signal.SIGTERM)
    assert code == 0, log
    assert f"the socket {socket} was removed while the agent ran" in log
    assert not socket.exists()  # the socket it made is removed on exit like the first


def test_the_agent_notices_within_seconds() -> None:
    assert RECHECK_INTERVAL <= 5.0  # SPEC §4: within seconds; the issue: within 5 s


def test_with_its_folder_gone_the_lock_is_taken_again(agent_process: AgentProcess) -> None:
    socket = agent_process.config.socket
    shutil.rmtree(socket.parent)
    wait_until_back(socket)
    other_state = agent_process.config.state_dir.with_name("other-state")
    second = AgentProcess(AgentConfig(socket=socket, state_dir=other_state))
    try:
        with pytest.raises(AssertionError, match=r"another unitsync agent .* serving the socket"):
            second.start()
    finally:
        if second.proc and second.proc.poll() is None:  # it started after all: not left behind
            second.kill()
