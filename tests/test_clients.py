"""Both clients, one session: the same rules, errors and messages, and trust only in the user's
own agent (issue 9: the blocking `Client` and the trio `AsyncClient` had drifted apart). Since
issue 21 the blocking client is generated from the trio one: the check that they agree has
teeth, and the trio client has what only the blocking one had."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from unitsync.agent.serve.server import AgentConfig
from unitsync.agent.service import Service
from unitsync.client import AsyncClient, Client, unasync
from unitsync.client._sync import client as blocking_module
from unitsync.client.owners import owner
from unitsync.wire.errors import (
    AgentCrashed,
    AgentGone,
    AgentUntrusted,
    DependencyFailed,
    NoAgent,
    Refused,
    UnitsyncError,
    WaitTimeout,
)
from unitsync.wire.framing import decode_reply, take_frame
from unitsync.wire.protocol import FullView, Order, Started, Waiting

from conftest import AgentProcess, run_cli

NOBODY = 65534
LIMIT = 60.0
"""Only a hang waits this long for an event."""
as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")


# --- an impostor: a listener run by another user ---------------------------------------------


class Impostor:
    """A listener at `path` run by uid 65534, reporting every byte each connection sent it."""

    def __init__(self, path: Path, *, own_folder: bool) -> None:
        self.path = path
        self.own_folder = own_folder
        self.pid = 0
        self.reports = -1

    def __enter__(self) -> Impostor:
        ready_r, ready_w = os.pipe()
        self.reports, report_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: become nobody, listen, tell what arrives, never answer
            try:
                os.close(ready_r)
                os.close(self.reports)
                self._serve(ready_w, report_w)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(report_w)
        assert os.read(ready_r, 1) == b"+", "the impostor did not start"
        os.close(ready_r)
        return self

    def _serve(self, ready: int, report: int) -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.own_folder:  # its own folder: it binds there as nobody
            os.setuid(NOBODY)
            sock.bind(str(self.path))
        else:  # the user's own folder: bound by root, listening as nobody (SO_PEERCRED)
            sock.bind(str(self.path))
            os.chmod(self.path, 0o666)
            os.setuid(NOBODY)
        sock.listen(8)
        os.write(ready, b"+")
        while True:
            conn, _ = sock.accept()
            received = b""
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    received = conn.recv(65536)  # the first burst, or b"" at once if refused
            os.write(report, struct.pack(">I", len(received)) + received)

    def next_report(self) -> bytes:
        """What the next connection sent (b"" when the client hung up without a byte)."""
        ready, _, _ = select.select([self.reports], [], [], 30)
        assert ready, "no connection reached the impostor"
        (size,) = struct.unpack(">I", os.read(self.reports, 4))
        data = b""
        while len(data) < size:
            data += os.read(self.reports, size - len(data))
        return data

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        os.close(self.reports)


@pytest.fixture(params=["its-own-folder", "the-users-folder"])
def impostor(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[Impostor]:
    folder = short_tmp / "run"
    folder.mkdir(mode=0o700)
    own = request.param == "its-own-folder"
    if own:
        short_tmp.chmod(0o711)  # nobody may pass through to its folder
        os.chown(folder, NOBODY, NOBODY)
    with Impostor(folder / "agent.sock", own_folder=own) as impostor:
        yield impostor


def expected_refusal(impostor: Impostor) -> str:
    if impostor.own_folder:
        return f"its folder {impostor.path.parent} belongs to uid {NOBODY}"
    return f"it runs as uid {NOBODY}"


@as_root
def test_the_cli_sends_nothing_to_another_users_listener(impostor: Impostor) -> None:
    result = run_cli("sync", "start", "secret-unit-name", socket=impostor.path)
    assert result.code == 3, result.err
    assert str(impostor.path) in result.err
    assert expected_refusal(impostor) in result.err
    assert impostor.next_report() == b""  # not even the hello


@as_root
def test_the_blocking_client_sends_nothing_to_another_users_listener(impostor: Impostor) -> None:
    with pytest.raises(AgentUntrusted, match=expected_refusal(impostor)) as caught:
        Client(impostor.path).start("secret-unit-name")
    assert caught.value.exit_code == 3
    assert impostor.next_report() == b""


@as_root
async def test_the_trio_client_sends_nothing_to_another_users_listener(impostor: Impostor) -> None:
    with pytest.raises(AgentUntrusted, match=expected_refusal(impostor)):
        await AsyncClient.connect(impostor.path)
    assert impostor.next_report() == b""


@as_root
def test_without_the_trust_check_the_impostor_would_hear_the_secret(
    impostor: Impostor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harness has teeth: with the check patched out, the unit name reaches the impostor."""
    monkeypatch.setattr(blocking_module, "check_trust", lambda *args: None)
    with pytest.raises(UnitsyncError):  # it never answers: the client retries, then gives up
        Client(impostor.path).start("secret-unit-name", timeout=1)
    assert b"secret-unit-name" in impostor.next_report()


async def start_blocking_until(path: Path, unit: str, waiting: trio.Event) -> Started:
    def on_progress(news: object) -> None:
        if isinstance(news, Waiting):
            trio.from_thread.run_sync(waiting.set)

    return await trio.to_thread.run_sync(
        lambda: Client(path).start(unit, timeout=120, on_progress=on_progress)
    )


async def start_trio_forever(path: Path, unit: str, waiting: trio.Event) -> Started:
    async def on_progress(news: object) -> None:
        if isinstance(news, Waiting):
            waiting.set()

    async with AsyncClient(path) as client:
        return await client.start(unit, on_progress=on_progress)


@as_root
@pytest.mark.parametrize(
    "start", [start_blocking_until, start_trio_forever], ids=["blocking", "trio"]
)
async def test_a_waiting_start_refuses_an_impostor_in_its_agents_place_at_once(
    agent_process: AgentProcess,
    start: Callable[[Path, str, trio.Event], Awaitable[Started]],
) -> None:
    """A waiting `start` rides out an agent restart; another user's listener taking the
    agent's socket meanwhile is not a restart: refused at once (exit 3), never retried."""
    path = agent_process.config.socket
    with Client(path) as client:
        client.want("app", "db")
    waiting, done = trio.Event(), trio.Event()
    result: list[tuple[str, str, int]] = []

    async def wait() -> None:
        result.append(await outcome(lambda: start(path, "app", waiting)))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await waiting.wait()
        agent_process.kill()
        path.unlink()
        with Impostor(path, own_folder=False) as impostor, trio.fail_after(60):
            await done.wait()
            assert impostor.next_report() == b""  # the one try, refused before the hello
    name, message, code = result[0]
    assert (name, code) == (AgentUntrusted.__name__, 3)
    assert f"it runs as uid {NOBODY}" in message


def test_a_socket_folder_writable_by_others_is_not_trusted(short_tmp: Path) -> None:
    folder = short_tmp / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(folder / "agent.sock"))
    server.listen(1)
    with server:
        result = run_cli("sync", "ping", socket=folder / "agent.sock")
    assert result.code == 3
    assert "is writable by others (mode 0777)" in result.err
    assert "chmod" not in result.err  # never advice that could open up a shared folder further
    assert "-unitsync/agent.sock" in result.err  # a private folder is suggested instead


# --- a lost reply: the retry is recognised, not a second start ------------------------------


async def lossy_proxy(
    listen_at: Path, agent_socket: Path, *, task_status: trio.TaskStatus[None]
) -> None:
    """Forward connections to the agent; on the first one, drop the `Started` reply and hang up
    (as an agent killed between its fsync and its reply would), then forward faithfully."""
    listen_at.parent.mkdir(mode=0o700, exist_ok=True)
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(str(listen_at))
    listener.listen(16)
    dropped = False

    async def pump(src: trio.SocketStream, dst: trio.SocketStream, lossy: bool) -> None:
        nonlocal dropped
        buffer = bytearray()
        while data := await src.receive_some(65536):
            if not lossy:
                await dst.send_all(data)
                continue
            buffer += data
            while (body := take_frame(buffer)) is not None:
                if isinstance(decode_reply(body), Started) and not dropped:
                    dropped = True
                    raise trio.BrokenResourceError("the reply is lost")
                await dst.send_all(struct.pack(">I", len(body)) + body)

    async def forward(client: trio.SocketStream) -> None:
        agent = await trio.open_unix_socket(str(agent_socket))
        try:
            async with client, agent, trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, agent, False)
                await pump(agent, client, not dropped)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # one side hung up (or the reply was "lost"): so does the other

    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            sock, _ = await listener.accept()
            nursery.start_soon(forward, trio.SocketStream(sock))


async def start_blocking(path: Path, unit: str) -> Started:
    return await trio.to_thread.run_sync(lambda: Client(path).start(unit, timeout=30))


async def start_trio(path: Path, unit: str) -> Started:
    async with AsyncClient(path) as client:
        return await client.start(unit)


@pytest.mark.parametrize("start", [start_blocking, start_trio], ids=["blocking", "trio"])
async def test_a_start_whose_reply_was_lost_is_not_started_twice(
    agent: Service,
    config: AgentConfig,
    short_tmp: Path,
    nursery: trio.Nursery,
    start: Callable[[Path, str], Awaitable[Started]],
) -> None:
    proxy = short_tmp / "proxy" / "agent.sock"
    await nursery.start(lossy_proxy, proxy, config.socket)
    started = await start(proxy, "job")
    assert started.unit == "job"
    history = agent.graph.units["job"].history
    assert [(h.from_, h.to) for h in history] == [("pending", "started")]  # one run, not two


# --- the same situation, the same error, whichever client ----------------------------------


async def outcome(call: Callable[[], Awaitable[object]]) -> tuple[str, str, int]:
    try:
        await call()
    except UnitsyncError as exc:
        return type(exc).__name__, str(exc), exc.exit_code
    raise AssertionError("the call did not fail")


SITUATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "a cycle": ("want", ("a", "b")),
    "a bad name": ("want", ("x", "bad\x07name")),
    "never started": ("complete", ("typo",)),
    "unknown unit": ("status", ("ghost",)),
    "a failed dependency": ("start", ("app",)),
}


@pytest.mark.parametrize("situation", list(SITUATIONS))
async def test_both_clients_report_the_same_error_the_same_way(
    agent: Service, config: AgentConfig, situation: str
) -> None:
    async with AsyncClient(config.socket) as setup:
        await setup.want("b", "a")
        await setup.want("app", "db")
        await setup.fail("db", "disk full")
    method, args = SITUATIONS[situation]

    def blocking() -> object:
        with Client(config.socket) as client:
            return getattr(client, method)(*args)

    async def via_trio() -> object:
        async with AsyncClient(config.socket) as client:
            return await getattr(client, method)(*args)

    got_blocking = await outcome(lambda: trio.to_thread.run_sync(blocking))
    await setup_again(config, situation)
    got_trio = await outcome(via_trio)
    assert got_blocking == got_trio
    assert got_trio[0] in {Refused.__name__, DependencyFailed.__name__}


async def setup_again(config: AgentConfig, situation: str) -> None:
    """Put back what the first client's failure changed, so both meet the same situation."""
    if situation == "a failed dependency":
        async with AsyncClient(config.socket) as client:
            await client.reset("app")


@pytest.mark.parametrize("where", ["no-such-folder", "no-listener"])
async def test_both_clients_say_the_same_when_no_agent_listens(short_tmp: Path, where: str) -> None:
    folder = short_tmp / where
    if where == "no-listener":
        folder.mkdir(mode=0o700)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(folder / "agent.sock"))
        stale.close()  # a socket file nobody listens on
    path = folder / "agent.sock"
    got_blocking = await outcome(lambda: trio.to_thread.run_sync(lambda: Client(path).ping()))
    got_trio = await outcome(lambda: AsyncClient.connect(path))
    assert got_blocking == got_trio
    # A socket file nobody listens on is what a crash leaves: a NoAgent that says so.
    kind = AgentCrashed if where == "no-listener" else NoAgent
    assert got_trio[0] == kind.__name__ and got_trio[2] == 3
    assert f"no agent is listening at {path}" in got_trio[1]


async def hang_up_on_every_request(path: Path, *, task_status: trio.TaskStatus[None]) -> None:
    """A listener that, once a client has sent something, closes without reading it: the
    kernel resets the connection (ECONNRESET), as with an agent that crashed mid-exchange."""
    path.parent.mkdir(mode=0o700)
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(8)
    task_status.started()
    while True:
        conn, _ = await listener.accept()
        with conn:
            await trio.lowlevel.wait_readable(conn)


async def test_both_clients_say_the_same_when_the_connection_is_reset(
    short_tmp: Path, nursery: trio.Nursery
) -> None:
    path = short_tmp / "run" / "agent.sock"
    await nursery.start(hang_up_on_every_request, path)
    got_blocking = await outcome(lambda: trio.to_thread.run_sync(lambda: Client(path).ping()))

    async def ping_trio() -> object:
        async with AsyncClient(path) as client:
            return await client.ping()

    got_trio = await outcome(ping_trio)
    assert got_blocking == got_trio
    assert got_trio[0] == "AgentGone" and got_trio[2] == 3
    assert (
        got_trio[1]
        == f"lost the connection to the agent at {path}: [Errno 104] Connection reset by peer"
    )


# --- the same methods --------------------------------------------------------------------------


RUN_ONLY = {"take_back", "fileno", "take_orders"}
"""What `unitsync sync run` needs of the blocking client to hold its run from its own loop."""


def public(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


def test_both_clients_offer_the_same_calls() -> None:
    blocking = public(Client)
    assert blocking == {name.replace("aclose", "close") for name in public(AsyncClient)}
    assert blocking >= RUN_ONLY


async def test_a_unit_block_that_raises_or_is_cancelled_fails_its_unit(
    agent: Service, config: AgentConfig
) -> None:
    async with AsyncClient(config.socket) as client:
        await client.start("db")
        await client.complete("db")
        async with client.unit("seed", wants=["db"]) as started:
            assert (await client.status("seed"))[0].status == "started"
        assert started.unit == "seed"
        assert [d.unit for d in (await client.status("seed"))[0].dependencies] == ["db"]
        assert (await client.status("seed"))[0].status == "completed"

        with pytest.raises(ValueError, match="no such table"):
            async with client.unit("migrate"):
                raise ValueError("no such table")
        [migrate] = await client.status("migrate")
        assert (migrate.status, migrate.reason) == ("failed", "ValueError: no such table")

        with trio.move_on_after(0.1):
            async with client.unit("index"):
                await trio.sleep_forever()
        [index] = await client.status("index")
        assert index.status == "failed" and index.reason.startswith("Cancelled")


async def test_both_clients_wait_for_room_while_the_agents_backlog_is_full(
    short_tmp: Path, nursery: trio.Nursery
) -> None:
    """A connect() to a Unix socket whose listen backlog is full fails with EAGAIN, where a
    blocking one waits (a workspace's scripts all start at once, the agent still loading):
    both clients wait for room, and never take an unconnected socket for a connection."""
    folder = short_tmp / "run"
    folder.mkdir(mode=0o700)
    path = folder / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    queued = []
    while True:  # fill the backlog
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(str(path))
        except BlockingIOError:
            filler.close()
            break
        queued.append(filler)
    assert queued, "the backlog took no connection at all"

    async def accept_later(*, task_status: trio.TaskStatus[None]) -> None:
        server = trio.socket.from_stdlib_socket(listener)
        task_status.started()
        await trio.sleep(0.5)  # the clients find the backlog full meanwhile
        while True:
            accepted, _ = await server.accept()
            queued.append(accepted)

    def peer(client: Client | AsyncClient) -> str:
        """Where the client's socket is connected (an unconnected one has no peer)."""
        fd = client.fileno()
        assert fd is not None
        with socket.socket(fileno=os.dup(fd)) as sock:
            return sock.getpeername()

    async def blocking() -> None:
        with await trio.to_thread.run_sync(Client.connect, path) as client:
            assert peer(client) == str(path)

    await nursery.start(accept_later)
    async with trio.open_nursery() as clients:
        clients.start_soon(blocking)
        async with await AsyncClient.connect(path) as client:
            assert peer(client) == str(path)
    for each in queued:
        each.close()


# --- one source: the blocking client is generated from the trio client ------------------------


def test_the_blocking_client_is_what_its_source_generates() -> None:
    """What CI runs before the tests (`.ci/run`): `_sync/` is up to date with `_async/`."""
    check = [sys.executable, "-m", "unitsync.client.unasync", "--check"]
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_source_changed_without_regenerating_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check has teeth: a change to the trio client that was not carried over, or an
    edit by hand to the generated client, is named with its line; regenerating mends it."""
    root = tmp_path / "client"
    for folder in ("_async", "_sync"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(Path(unasync.__file__).parent / folder, root / folder, ignore=ignore)
    monkeypatch.setattr(unasync, "HERE", root)
    assert unasync.main(["--check"]) == 0
    source, generated = root / "_async" / "client.py", root / "_sync" / "client.py"

    source.write_text(source.read_text().replace("def ping(self)", "def ping(self, note='')"))
    assert unasync.main(["--check"]) == 1
    told = capsys.readouterr().err
    assert f"{generated} is not what {source} makes" in told
    assert "generated: \"    def ping(self, note='') -> Pong:\"" in told
    assert "found:     '    def ping(self) -> Pong:'" in told

    assert unasync.main([]) == 0  # regenerate
    assert unasync.main(["--check"]) == 0
    assert "    def ping(self, note='') -> Pong:\n" in generated.read_text()

    generated.write_text(generated.read_text().replace("time out", "time  out") + "# mine\n")
    assert unasync.main(["--check"]) == 1
    assert "(the end)" in capsys.readouterr().err  # one line more than the source makes


# --- the trio client: what it has by being the source ---------------------------------------


async def test_the_trio_client_holds_a_run_as_run_does(agent_process: AgentProcess) -> None:
    """What `unitsync sync run` needs of a client, the trio client has too: a held run's
    reports carry its token by themselves, it is taken back after an agent restart, and its
    connection is told of a newer run without asking."""
    path = agent_process.config.socket
    me = owner(os.getpid(), "run")
    async with AsyncClient(path) as holder, AsyncClient(path) as other:
        await holder.start("svc", owner=me, hold=True)
        await holder.complete("svc", hold=True)
        assert [view.status for view in await other.status("svc")] == ["completed"]
        agent_process.kill()
        agent_process.start()
        assert (await holder.take_back("svc")).unit == "svc"
        await other.start("svc", rerun=True)
        fd = holder.fileno()
        assert fd is not None
        with trio.fail_after(LIMIT):
            await trio.lowlevel.wait_readable(fd)
        [order] = await holder.take_orders()
        assert order == Order("svc", "supersede", holder.holding["svc"].token, "a new run")
        reply = await holder.complete("svc")  # with the held run's token: changes nothing
        assert "superseded" in reply.message
        assert [view.status for view in await other.status("svc")] == ["started"]


async def test_the_trio_client_retells_a_wait_every_tick_and_may_bound_it(
    agent: Service, config: AgentConfig
) -> None:
    async with AsyncClient(config.socket) as client, AsyncClient(config.socket) as other:
        await client.want("app", "db")
        news: list[Waiting | UnitsyncError] = []

        async def on_progress(latest: Waiting | UnitsyncError) -> None:
            news.append(latest)
            if len(news) == 3:  # the agent's reply, then told again twice by the tick
                await other.complete("db", force=True)

        with trio.fail_after(LIMIT):
            assert (await client.start("app", tick=0.05, on_progress=on_progress)).unit == "app"
        assert len(news) >= 3 and all(isinstance(each, Waiting) for each in news)

        with pytest.raises(WaitTimeout, match=r"timed out after 0\.2s waiting to start 'report'"):
            async with client.unit("report", wants=["never"], timeout=0.2):
                raise AssertionError("the block ran without its dependency")
        await trio.testing.wait_all_tasks_blocked()
        [report] = await client.status("report")
        assert (report.status, report.waiters) == ("pending", 0)  # the wait was given up


async def test_a_trio_watch_says_when_the_agent_is_unreachable_and_goes_on(
    agent_process: AgentProcess,
) -> None:
    told: list[UnitsyncError] = []

    async def on_unreachable(exc: UnitsyncError) -> None:
        told.append(exc)

    path = agent_process.config.socket
    async with AsyncClient(path) as client:
        events = client.watch(on_unreachable=on_unreachable)
        async with contextlib.aclosing(events):
            assert isinstance(await anext(events), FullView)
            agent_process.kill()
            agent_process.start()
            with trio.fail_after(LIMIT):
                assert isinstance(await anext(events), FullView)  # from the new agent
    assert told and isinstance(told[0], AgentGone)
    assert str(path) in str(told[0])


async def test_the_trio_client_never_starts_an_agent(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not even where a blocking client would (autostart on): it says there is none."""
    monkeypatch.setenv("UNITSYNC_AUTOSTART", "1")
    path = short_tmp / "run" / "agent.sock"
    with pytest.raises(ValueError, match="the trio client never starts an agent"):
        AsyncClient(path, autostart=True)
    async with AsyncClient(path) as client:
        with pytest.raises(NoAgent, match=f"no agent is listening at {path}"):
            await client.ping()
    assert not path.parent.exists()  # nothing was started: its folder was not even made
