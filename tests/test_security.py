"""SPEC §5: only the agent's own user gets in; the socket's folder must be private."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unitsync.agent.files import SetupError
from unitsync.agent.serve.server import AgentConfig, run_agent
from unitsync.agent.store.journal.writer import JournalError
from unitsync.client import Client, UnitsyncError

from conftest import AgentProcess

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")


def ping_as_nobody(socket: Path) -> tuple[int, str]:
    """Ping from a forked child that has dropped to uid/gid 65534: (exit code, message)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, try, report, vanish
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                Client(socket).ping()
                outcome = "0:ok"
            except UnitsyncError as exc:
                outcome = f"{exc.exit_code}:{exc}"
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    code, message = outcome.split(":", 1)
    return int(code), message


@as_root
def test_another_user_cannot_even_reach_the_socket(agent_process: AgentProcess) -> None:
    code, message = ping_as_nobody(agent_process.config.socket)
    assert code == 3
    assert "Permission denied" in message


@as_root
def test_another_user_is_refused_by_the_peer_credential_check(
    agent_process: AgentProcess,
) -> None:
    socket = agent_process.config.socket
    for folder in (socket.parent, socket.parent.parent):
        os.chmod(folder, 0o711)  # open the doors the file system keeps shut...
    os.chmod(socket, 0o666)
    code, message = ping_as_nobody(socket)  # ...and SO_PEERCRED still says no
    assert code == 3, message  # no agent of its own there, as the exit-code table says
    assert f"uid {NOBODY} may not use this agent; it serves uid 0 only" in message
    _code, log = agent_process.stop()
    assert f"refused a connection from uid {NOBODY}" in log


@as_root
async def test_a_socket_folder_owned_by_someone_else_is_refused(config: AgentConfig) -> None:
    config.socket.parent.mkdir(mode=0o700)
    os.chown(config.socket.parent, NOBODY, NOBODY)
    with pytest.raises(SetupError, match=f"belongs to uid {NOBODY}"):
        await run_agent(config)


async def test_a_state_dir_writable_by_others_is_refused(config: AgentConfig) -> None:
    config.state_dir.mkdir(mode=0o700)
    config.state_dir.chmod(0o777)
    with pytest.raises(JournalError, match="writable by others"):
        await run_agent(config)
