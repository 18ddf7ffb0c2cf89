"""One graph per client, one agent per socket path (SPEC §11; issue 19, sequences 1, 2, 7).

Real agents, real sockets, the real CLI: a script waiting in one graph never goes on in
another; a second agent never takes a path over while the first lives, however its folder
is removed; a command that meets a live agent re-creating its socket waits for it; and the
scripts waiting on an agent that stopped cleanly bring one back after a short grace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from unitsync.agent.serve.server import AgentConfig, run_agent
from unitsync.client import AsyncClient, Client, GraphChanged
from unitsync.wire.graph_id import short
from unitsync.wire.host.peer import socket_lock_name

from conftest import (
    AgentProcess,
    agents_running,
    on_a_terminal,
    read_until,
    run_cli,
    spawn_cli,
    stop_agents,
)
from harness.etcd_cluster import EtcdAgent, EtcdCluster

LIMIT = 60
"""A safety net against a hung child, never a measure of speed."""


def graph_of(socket_path: Path) -> str:
    """The id of the graph the agent at `socket_path` serves, as `ping` reports it."""
    with Client(socket_path, autostart=False) as client:
        return client.ping().graph


def another_graph_message(
    socket_path: Path, unit: str, now: tuple[str, Path], then: tuple[str, Path]
) -> str:
    return (
        f"unitsync: the agent at {socket_path} now serves another graph ({short(now[0])}, state "
        f"in {now[1]}), not the one {unit!r} was waiting in ({short(then[0])}, state in "
        f"{then[1]}); not starting {unit}\n"
    )


@pytest.fixture
def agents(short_tmp: Path) -> Iterator[list[AgentProcess]]:
    """Agent processes a test starts by hand (`agents.append(...)`); none outlives it."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        if agent.proc and agent.proc.poll() is None:
            agent.kill()
    stop_agents(agents_running(str(short_tmp)))


def by_hand(agents: list[AgentProcess], socket_path: Path, state_dir: Path) -> AgentProcess:
    agents.append(AgentProcess(AgentConfig(socket_path, state_dir)).start())
    return agents[-1]


def waiting_start(socket_path: Path, *args: str) -> subprocess.Popen[str]:
    """`start app`, once it says it waits for db."""
    waiter = spawn_cli("sync", "start", "app", *args, socket=socket_path)
    assert waiter.stderr is not None
    assert waiter.stderr.readline().strip() == "app: waiting for db"
    return waiter


# --- the graph's identity ----------------------------------------------------------------------


def test_ping_names_the_graph_which_is_the_state_dirs_for_good(
    short_tmp: Path, agents: list[AgentProcess]
) -> None:
    socket_path = short_tmp / "run" / "agent.sock"
    first = by_hand(agents, socket_path, short_tmp / "d1")
    pong = run_cli("sync", "ping", socket=socket_path)
    graph = graph_of(socket_path)
    assert f", graph {graph[:8]}, up " in pong.out
    assert first.stop()[0] == 0
    by_hand(agents, socket_path, short_tmp / "d1")  # a restart: the same graph
    assert graph_of(socket_path) == graph
    agents[-1].stop()
    by_hand(agents, socket_path, short_tmp / "d2")  # another state dir: another graph
    assert graph_of(socket_path) != graph


def test_a_start_waiting_in_one_graph_never_starts_in_another(
    short_tmp: Path, agents: list[AgentProcess]
) -> None:
    """The agent at the socket is replaced by one with another state dir while `start app`
    waits: the start ends, exit 3, naming both graphs; `app` is not started anywhere."""
    socket_path, d1, d2 = short_tmp / "run" / "agent.sock", short_tmp / "d1", short_tmp / "d2"
    first = by_hand(agents, socket_path, d1)
    assert run_cli("sync", "want", "app", "db", socket=socket_path).code == 0
    graph1 = graph_of(socket_path)
    waiter = waiting_start(socket_path, "--timeout", "0")
    assert first.stop()[0] == 0  # autostart is off (conftest): it waits, as before
    by_hand(agents, socket_path, d2)
    graph2 = graph_of(socket_path)

    _out, err = waiter.communicate(timeout=LIMIT)
    assert waiter.returncode == 3, err
    assert err.endswith(another_graph_message(socket_path, "app", (graph2, d2), (graph1, d1)))
    unknown = run_cli("sync", "status", "app", socket=socket_path)
    assert unknown.code == 1  # the other graph never heard of app: nothing was done there
    assert "unknown unit 'app'" in unknown.err


def test_the_agent_carries_out_nothing_for_a_client_of_another_graph(
    short_tmp: Path, agents: list[AgentProcess]
) -> None:
    """The agent's side of the rule, for a client that would not check its welcome: a hello
    naming another graph gets the welcome, then `graph_changed`; the request is never run."""
    from unitsync.wire.framing import decode_reply, encode, take_frame
    from unitsync.wire.protocol import PROTOCOL_VERSION, Error, Hello, Want, Welcome

    socket_path = short_tmp / "run" / "agent.sock"
    by_hand(agents, socket_path, short_tmp / "d1")
    other = "0f" * 16
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(socket_path))
        raw.sendall(encode(Hello(PROTOCOL_VERSION, "raw", other)) + encode(Want("app", ["db"])))
        data = bytearray()
        while chunk := raw.recv(65536):
            data += chunk
    replies = []
    while (body := take_frame(data)) is not None:
        replies.append(decode_reply(body))
    welcome, error = replies
    assert isinstance(welcome, Welcome) and welcome.graph == graph_of(socket_path)
    assert isinstance(error, Error) and error.code == "graph_changed"
    assert f"not graph {other[:8]}" in error.message
    assert run_cli("sync", "status", "app", socket=socket_path).code == 1  # never wanted


async def test_the_trio_client_never_crosses_to_another_graph(short_tmp: Path) -> None:
    """A trio client waiting in `start` whose agent is replaced by one of another graph:
    its reconnection raises GraphChanged, and nothing is started in the other graph."""
    socket_path = short_tmp / "run" / "agent.sock"
    first, second = (
        AgentConfig(socket_path, short_tmp / "d1"),
        AgentConfig(socket_path, short_tmp / "d2"),
    )
    stop_first, first_stopped = trio.CancelScope(), trio.Event()
    waiting, outcome = trio.Event(), []

    async def serve_first(*, task_status: trio.TaskStatus[object]) -> None:
        with stop_first:
            await run_agent(first, task_status=task_status)
        first_stopped.set()

    async def progress(event: object) -> None:
        waiting.set()

    async def wait(client: AsyncClient) -> None:
        try:
            await client.start("app", on_progress=progress)
        except GraphChanged as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_first)
        async with AsyncClient(socket_path) as client:
            await client.want("app", "db")
            graph1 = client.graph
            async with trio.open_nursery() as waiters:
                waiters.start_soon(wait, client)
                await waiting.wait()
                stop_first.cancel()  # an orderly stop: the waiter reconnects with backoff
                await first_stopped.wait()
                service = await nursery.start(run_agent, second)
        [changed] = outcome
        assert changed.expected == graph1 and changed.found == service.store.graph_id
        assert changed.found_state == str(second.state_dir)
        assert str(changed).endswith("not starting app")
        assert "app" not in service.graph.units  # nothing was done in the other graph
        nursery.cancel_scope.cancel()


# --- one agent per socket path, whatever happens to its folder -----------------------------


@pytest.fixture
def autostart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Autostart on, as for a user (conftest turns it off for the rest of the suite)."""
    monkeypatch.delenv("UNITSYNC_AUTOSTART")


def default_state_dir() -> Path:
    """Where autostart puts an agent when no UNITSYNC_STATE_DIR says otherwise."""
    return Path(os.environ["XDG_STATE_HOME"]) / "unitsync"


class Frozen:
    """An agent process stopped (SIGSTOP) for as long as the block runs: the window in which
    it would re-create its removed socket stays open as long as a test needs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> Frozen:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def test_sequence_1_a_second_agent_never_takes_the_path_of_a_live_one(
    short_tmp: Path, agents: list[AgentProcess], autostart: None
) -> None:
    """Issue 19, sequence 1: agent A (--socket S --state-dir D1), `start app` waiting; S's
    folder removed; in the window before A re-creates it, an agent for S with another
    state dir refuses to start (A holds the path's lock, which no removal takes away), and
    a command with autostart on and another state dir waits for A instead of starting one.
    A re-creates its socket; the waiting start goes on in A's graph, where it belongs."""
    socket_path, d1 = short_tmp / "run" / "agent.sock", short_tmp / "d1"
    first = by_hand(agents, socket_path, d1)
    assert first.proc is not None
    assert run_cli("sync", "want", "app", "db", socket=socket_path).code == 0
    graph1 = graph_of(socket_path)
    waiter = waiting_start(socket_path, "--timeout", "0")

    with Frozen(first.proc.pid):
        shutil.rmtree(socket_path.parent)
        second = run_cli(
            "agent", "--socket", str(socket_path), "--state-dir", str(short_tmp / "d2")
        )
        assert second.code == 1
        assert second.err.startswith(
            f"unitsync agent: another unitsync agent (pid {first.proc.pid}) is already serving "
            f"the socket {socket_path}; stop it first, or give this one another --socket"
        )
        command = spawn_cli("sync", "status", "-o", "json", socket=socket_path)
        assert command.stderr is not None
        assert read_until(command.stderr.fileno(), b"x", limit=1) == b""  # it waits, silent
        assert command.poll() is None
    out, err = command.communicate(timeout=LIMIT)  # A is back: its socket, re-created
    assert command.returncode == 0, err
    assert {unit["name"] for unit in json.loads(out)["units"]} == {"app", "db"}  # A's graph
    assert err == ""  # it started nothing
    assert not (default_state_dir() / "agent.log").exists()
    assert graph_of(socket_path) == graph1
    assert agents_running(str(socket_path)) == [first.proc.pid]

    assert run_cli("sync", "complete", "db", "--force", socket=socket_path).code == 0
    _out, said = waiter.communicate(timeout=LIMIT)
    assert waiter.returncode == 0, said
    assert "app: started after waiting" in said
    assert "reconnecting" not in said  # its connection to A was never dropped
    code, log = first.stop()
    assert code == 0, log
    assert f"the socket {socket_path} was removed while the agent ran" in log


def test_sequence_2_commands_in_the_window_are_served_by_the_live_agent(
    short_tmp: Path, agents: list[AgentProcess], autostart: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19, sequence 2: the same state dir, autostart on, six commands while the agent
    re-creates its removed socket: all six are served by it (none exits 3, none starts one)."""
    socket_path, state_dir = short_tmp / "run" / "agent.sock", short_tmp / "state"
    monkeypatch.setenv("UNITSYNC_STATE_DIR", str(state_dir))
    agent = by_hand(agents, socket_path, state_dir)
    assert agent.proc is not None
    with Frozen(agent.proc.pid):
        shutil.rmtree(socket_path.parent)
        pings = [spawn_cli("sync", "ping", socket=socket_path) for _ in range(6)]
        assert read_until(pings[-1].stdout.fileno(), b"x", limit=1) == b""  # type: ignore[union-attr]
    results = [(ping.communicate(timeout=LIMIT), ping.returncode) for ping in pings]
    assert [code for _, code in results] == [0] * 6, results
    assert all(f"(pid {agent.proc.pid})" in out for (out, _err), _ in results)
    assert all(err == "" for (_out, err), _ in results)
    assert agents_running(str(socket_path)) == [agent.proc.pid]
    assert not (state_dir / "agent.log").exists()  # no client spawned an agent


def test_autostart_names_the_socket_the_state_dirs_agent_serves(
    short_tmp: Path, agents: list[AgentProcess], autostart: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state dir is in use by an agent at another socket: said at once, naming it."""
    state_dir = short_tmp / "state"
    serving = short_tmp / "run" / "agent.sock"
    agent = by_hand(agents, serving, state_dir)
    assert agent.proc is not None
    monkeypatch.setenv("UNITSYNC_STATE_DIR", str(state_dir))
    elsewhere = short_tmp / "other" / "agent.sock"
    result = run_cli("sync", "ping", socket=elsewhere)
    assert result.code == 3
    assert result.err == (
        f"unitsync: cannot start an agent for {elsewhere}: the state dir {state_dir} is in use "
        f"by the agent (pid {agent.proc.pid}) serving the socket {serving}; point --socket / "
        f"UNITSYNC_SOCKET at {serving} to use it, or UNITSYNC_STATE_DIR at another state dir\n"
    )
    assert agents_running(str(elsewhere)) == []


def test_autostart_waits_for_the_state_dirs_agent_and_starts_one_once_it_has_gone(
    short_tmp: Path, agents: list[AgentProcess], autostart: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent stopping in order still holds the state dir for a moment: the agent started
    meanwhile exits, and the command waits (within its own timeout) for the state dir's
    agent; when that one has gone without serving, it starts one and goes on."""
    import fcntl

    socket_path, state_dir = short_tmp / "run" / "agent.sock", short_tmp / "state"
    monkeypatch.setenv("UNITSYNC_STATE_DIR", str(state_dir))
    state_dir.mkdir(mode=0o700)
    lock = state_dir / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the state dir's "agent": this test, serving S
        os.write(fd, f"{os.getpid()}\n{socket_path}\n".encode())
        command = spawn_cli("sync", "start", "db", "--timeout", "10m", socket=socket_path)
        log = state_dir / "agent.log"
        refused = "another unitsync agent (pid"
        deadline = time.monotonic() + LIMIT
        while not (log.exists() and refused in log.read_text()):
            assert time.monotonic() < deadline and command.poll() is None, command.communicate()
            time.sleep(0.02)
        assert command.poll() is None  # the agent it started refused; it waits, not exit 3
    finally:
        os.unlink(lock)
        os.close(fd)  # "stopped": the lock released, and nobody serves the socket
    _out, err = command.communicate(timeout=LIMIT)
    assert command.returncode == 0, err
    assert "db: started" in err
    assert err.count("started an agent") == 1


def test_an_agent_leaves_its_path_to_another_listener_and_stops_in_order(
    short_tmp: Path, agents: list[AgentProcess]
) -> None:
    """Something else bound the agent's path (a socket unit started meanwhile): the agent
    never binds over it (never two listeners on one path); it stops, exit 0, and leaves it."""
    socket_path = short_tmp / "run" / "agent.sock"
    agent = by_hand(agents, socket_path, short_tmp / "state")
    socket_path.unlink()
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(socket_path))
        other.listen()
        assert agent.proc is not None
        code = agent.proc.wait(timeout=LIMIT)
        _out, log = agent.proc.communicate()
        assert code == 0, log
        assert f"the socket path {socket_path} now holds another socket or file" in log
        assert listeners(socket_path) == 1
        assert socket_path.exists()  # not removed: it is the other listener's
        peer = socket.socket(socket.AF_UNIX)
        peer.connect(str(socket_path))  # and it still answers there
        peer.close()


def test_an_agent_never_replaces_a_socket_something_listens_on(short_tmp: Path) -> None:
    """At start, a socket file is replaced only if nobody accepts on it (a dead agent's)."""
    socket_path = short_tmp / "run" / "agent.sock"
    socket_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(socket_path))
        other.listen()
        result = run_cli("agent", "--socket", str(socket_path), "--state-dir", str(short_tmp / "s"))
        assert result.code == 1
        assert f"unitsync agent: something already listens at {socket_path}: pid {os.getpid()}" in (
            result.err
        )
        assert listeners(socket_path) == 1
    result = run_cli("sync", "ping", socket=socket_path)  # now a stale file: replaced as ever
    assert result.code == 3  # (autostart is off: nothing listens)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hold the name as another uid")
def test_a_socket_lock_held_by_another_uid_is_refused_as_not_ours(short_tmp: Path) -> None:
    socket_path = short_tmp / "run" / "agent.sock"
    socket_path.parent.mkdir(mode=0o700)
    name = socket_lock_name(socket_path)
    python = shutil.which("python3", path="/usr/bin:/bin")  # one that uid 65534 may run
    if python is None:
        pytest.skip("no system python3 for another uid to run")
    squatter = subprocess.Popen(
        [python, "-c", _SQUAT, name.encode("latin-1").hex()],
        user=65534,
        cwd="/",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == "bound\n"
        result = run_cli("agent", "--socket", str(socket_path), "--state-dir", str(short_tmp / "s"))
        assert result.code == 1
        assert f"is held by uid 65534 (pid {squatter.pid}), not by you (uid 0)" in result.err
        assert "it cannot be your agent" in result.err
    finally:
        squatter.kill()
        squatter.wait()


_SQUAT = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(bytes.fromhex(sys.argv[1]).decode("latin-1"))
s.listen()
print("bound", flush=True)
time.sleep(600)
"""


def listeners(path: Path) -> int:
    """How many sockets listen bound to `path` (/proc/net/unix: flag 00010000 is
    __SO_ACCEPTCON), whether or not the path still reaches them."""
    count = 0
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:
            count += 1
    return count


# --- status --watch follows the socket, and says when its graph changed ------------------------


def test_a_json_watch_says_the_graph_changed_then_shows_the_new_one(
    short_tmp: Path, agents: list[AgentProcess]
) -> None:
    socket_path, d1, d2 = short_tmp / "run" / "agent.sock", short_tmp / "d1", short_tmp / "d2"
    first = by_hand(agents, socket_path, d1)
    assert run_cli("sync", "want", "app", "db", socket=socket_path).code == 0
    graph1 = graph_of(socket_path)
    watch = spawn_cli("sync", "status", "--watch", "-o", "json", socket=socket_path)
    try:
        assert watch.stdout is not None
        snapshot = json.loads(watch.stdout.readline())
        assert snapshot["event"] == "snapshot"
        assert {unit["name"] for unit in snapshot["units"]} == {"app", "db"}
        assert first.stop()[0] == 0
        by_hand(agents, socket_path, d2)
        graph2 = graph_of(socket_path)
        changed = json.loads(watch.stdout.readline())
        assert changed == {
            "event": "graph-changed",
            "at": changed["at"],
            "socket": str(socket_path),
            "from": {"graph": graph1, "state": str(d1)},
            "to": {"graph": graph2, "state": str(d2)},
        }
        fresh = json.loads(watch.stdout.readline())
        assert fresh["event"] == "snapshot" and fresh["units"] == []  # the new graph's
        assert run_cli("sync", "want", "web", "api", socket=socket_path).code == 0
        after = json.loads(watch.stdout.readline())
        assert after["event"] == "changed"  # and it goes on, on the new graph
        assert after["unit"]["name"] in {"web", "api"}
        assert watch.poll() is None
    finally:
        watch.send_signal(signal.SIGINT)
        _out, err = watch.communicate(timeout=LIMIT)
    assert watch.returncode == 0, err


def test_the_live_table_says_the_graph_changed_and_goes_on(
    short_tmp: Path, agents: list[AgentProcess]
) -> None:
    socket_path, d1, d2 = short_tmp / "run" / "agent.sock", short_tmp / "d1", short_tmp / "d2"
    first = by_hand(agents, socket_path, d1)
    assert run_cli("sync", "want", "app", "db", socket=socket_path).code == 0
    graph1 = graph_of(socket_path)
    watch, terminal = on_a_terminal("sync", "status", "--watch", socket=socket_path, columns=200)
    try:
        assert b"pending" in read_until(terminal, b"pending")  # A's units: its graph is seen
        assert first.stop()[0] == 0
        by_hand(agents, socket_path, d2)
        assert run_cli("sync", "want", "web", "api", socket=socket_path).code == 0
        graph2 = graph_of(socket_path)
        note = f"{short(graph2)} (state in {d2}), not {short(graph1)} (state in {d1})"
        seen = read_until(terminal, note.encode())
        assert b"another graph since" in seen and note.encode() in seen
        assert b"web" in read_until(terminal, b"web")  # the new graph's units
        assert watch.poll() is None
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=LIMIT)
        os.close(terminal)
    assert watch.returncode == 0


# --- a graph shared through etcd ---------------------------------------------------------------


def test_agents_on_one_etcd_prefix_serve_one_graph_and_another_prefix_another(
    etcd: EtcdCluster, short_tmp: Path
) -> None:
    """The prefix's id is one key, created only if absent: two agents opening an empty
    prefix at the same moment agree on one id; an agent restart keeps it; another prefix
    is another graph."""
    url = etcd.url("one-graph")
    both = [EtcdAgent(short_tmp, f"a{i}", url) for i in range(2)]
    others: list[EtcdAgent] = []
    try:
        starting = [threading.Thread(target=agent.start) for agent in both]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        graphs = {graph_of(agent.socket) for agent in both}
        assert len(graphs) == 1, graphs
        [graph] = graphs
        assert f"graph {short(graph)}," in both[0].cli("ping").stdout
        both[0].close()
        both[0].start()
        assert graph_of(both[0].socket) == graph
        others.append(EtcdAgent(short_tmp, "b", etcd.url("another-graph")).start())
        assert graph_of(others[0].socket) != graph
        with Client(both[1].socket) as client:
            client.ping()
            assert client.memory.state == url  # where the graph is kept, as the agent says
    finally:
        for agent in both + others:
            agent.close()
