"""systemd socket activation and sd_notify readiness, from the agent's side (SPEC §7).

The agent is started as systemd starts it: a listening socket the test bound is its
descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID` its own pid (a tiny wrapper sets it and
execs the agent, keeping the pid), and `NOTIFY_SOCKET` a datagram socket the test reads.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from unitsync.agent.files import SetupError
from unitsync.agent.serve.activation import take_listen_fds
from unitsync.agent.serve.server import AgentConfig
from unitsync.agent.store.journal import logfile
from unitsync.client import Client
from unitsync.wire.host.notify import Notifier

from conftest import AgentProcess, run_cli, spawn_cli

LIMIT = 60
"""A safety net against a hung agent, never a measure of speed."""
AS_SYSTEMD_DOES = """
import os, sys
passed = int(sys.argv[1])
if passed != 3:
    os.dup2(passed, 3)
    os.close(passed)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="agent")
os.execv(sys.executable, [sys.executable, "-m", "unitsync.cli", *sys.argv[2:]])
"""
"""Put the passed socket at descriptor 3, say it is for this pid, become the agent."""


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A datagram socket in the abstract namespace, as systemd's NOTIFY_SOCKET is."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"\0unitsync-test/{os.getpid()}/{os.urandom(8).hex()}")
    sock.settimeout(LIMIT)
    yield sock
    sock.close()


def activated_agent(
    passed: socket.socket, notify: socket.socket, state_dir: Path
) -> subprocess.Popen[str]:
    address = "@" + notify.getsockname()[1:].decode()
    env = dict(os.environ, NOTIFY_SOCKET=address)
    env.pop("UNITSYNC_SOCKET", None)  # the passed socket decides where the agent listens
    wrapper = [sys.executable, "-c", AS_SYSTEMD_DOES, str(passed.fileno())]
    return subprocess.Popen(
        [*wrapper, "agent", "--state-dir", str(state_dir)],
        pass_fds=(passed.fileno(),),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def assignments(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_the_agent_serves_a_passed_socket_and_says_when_it_is_ready_and_stopping(
    short_tmp: Path, notify_socket: socket.socket
) -> None:
    folder = short_tmp / "run"
    folder.mkdir(mode=0o700)
    path = folder / "agent.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    listening.listen()
    with listening:
        agent = activated_agent(listening, notify_socket, short_tmp / "state")
        try:
            ready = assignments(notify_socket.recv(4096))
            assert ready == {"READY": "1", "STATUS": f"serving 0 units at {path}"}
            with Client(path) as client:
                pong = client.ping()
                client.want("web", "db")
            assert pong.pid == agent.pid
            assert pong.socket == str(path)

            agent.send_signal(signal.SIGTERM)
            stopping = assignments(notify_socket.recv(4096))
            assert stopping == {"STOPPING": "1", "STATUS": "stopping on SIGTERM"}
            _out, log = agent.communicate(timeout=LIMIT)
        finally:
            if agent.poll() is None:
                agent.kill()
        assert agent.returncode == 0, log
        assert path.exists()  # systemd's socket file: not the agent's to remove
        assert not path.with_name("agent.sock.lock").exists()  # its own lock file is gone


@pytest.mark.parametrize(
    ("kind", "refusal"),
    [
        ("datagram", "it is not a Unix stream socket"),
        ("not listening", "it is not listening"),
    ],
)
def test_a_passed_socket_the_agent_cannot_serve_is_refused_clearly(
    short_tmp: Path, notify_socket: socket.socket, kind: str, refusal: str
) -> None:
    sock_type = socket.SOCK_DGRAM if kind == "datagram" else socket.SOCK_STREAM
    with socket.socket(socket.AF_UNIX, sock_type) as passed:
        passed.bind(str(short_tmp / "agent.sock"))
        agent = activated_agent(passed, notify_socket, short_tmp / "state")
        _out, log = agent.communicate(timeout=LIMIT)
    assert agent.returncode == 1
    assert (
        "unitsync agent: cannot serve the socket passed by systemd (LISTEN_FDS, descriptor 3): "
        f"{refusal}; use ListenStream=%t/unitsync/agent.sock in the .socket unit" in log
    )


def test_listen_variables_for_another_process_are_ignored_and_removed() -> None:
    environ = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x", "HOME": "/h"}
    assert take_listen_fds(environ, pid=4242) == []
    assert environ == {"HOME": "/h"}  # not passed on to anything the agent runs


def test_a_listen_count_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(SetupError, match="LISTEN_FDS='two' is not a number"):
        take_listen_fds({"LISTEN_FDS": "two", "LISTEN_PID": "7"}, pid=7)


def test_notify_reaches_a_path_address_and_tolerates_a_gone_one(short_tmp: Path) -> None:
    path = short_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        environ = {"NOTIFY_SOCKET": str(path)}
        notifier = Notifier.from_environ(environ)
        assert environ == {}  # taken: nothing the agent runs can speak for it
        notifier.ready("serving 3 units")
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving 3 units"
    path.unlink()
    notifier.stopping("bye")  # nobody listens any more: logged, not raised


def test_a_client_waiting_on_an_agent_that_cannot_start_is_told_why(
    short_tmp: Path, notify_socket: socket.socket
) -> None:
    """Issue 23, 12: the connection that started an activated agent (or came while it
    started) is not reset when the agent finds its journal damaged: it is told so, and that
    --salvage is the way, and the command exits 3 (no agent to talk to)."""
    state = short_tmp / "state"
    folder = short_tmp / "run"
    folder.mkdir(mode=0o700)
    path = folder / "agent.sock"
    first = AgentProcess(AgentConfig(socket=short_tmp / "first.sock", state_dir=state)).start()
    assert run_cli("sync", "want", "a", "b", socket=first.config.socket).code == 0
    first.stop()
    journal = state / "journal.log"
    data = bytearray(journal.read_bytes())
    data[logfile.LOG_HEADER.size + 4] ^= 0xFF  # inside the first entry
    journal.write_bytes(bytes(data))
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    listening.listen()
    with listening:
        client = spawn_cli("sync", "ping", socket=path)  # queued: nothing accepts yet
        agent = activated_agent(listening, notify_socket, state)
        _out, agent_said = agent.communicate(timeout=LIMIT)
        assert agent.returncode == 1 and "is damaged" in agent_said
        _out, said = client.communicate(timeout=LIMIT)
    assert client.returncode == 3, said
    assert said.startswith(f"unitsync: the agent at {path} cannot start: {journal} is damaged")
    assert "start the agent with --salvage" in said
    assert "Connection reset" not in said
