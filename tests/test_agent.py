"""The agent end to end, in-process: real sockets, real journal, the trio client."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct

import msgspec
import pytest
import trio
import trio.testing

from unitsync.agent.files import SetupError
from unitsync.agent.serve.server import AgentConfig, run_agent
from unitsync.agent.service import Service
from unitsync.client import AgentGone, AsyncClient, Client, DependencyFailed, Refused
from unitsync.wire.framing import MAX_FRAME, decode_reply, encode
from unitsync.wire.protocol import (
    PROTOCOL_VERSION,
    Error,
    FullView,
    Hello,
    Ping,
    Pong,
    Started,
    Waiting,
    Welcome,
)


async def connect(config: AgentConfig) -> AsyncClient:
    return await AsyncClient.connect(config.socket)


async def test_ping_reports_version_pid_and_socket(agent: Service, config: AgentConfig) -> None:
    async with await connect(config) as client:
        pong = await client.ping()
    assert pong.pid == os.getpid()
    assert pong.socket == str(config.socket)
    assert pong.uptime >= 0


async def test_start_waits_until_the_last_dependency_completes(
    agent: Service, config: AgentConfig
) -> None:
    async with await connect(config) as claude, await connect(config) as git:
        await claude.want("claude", "git", "node")
        started: list[Started] = []
        events: list[Waiting] = []

        async def record(event: Waiting) -> None:
            events.append(event)

        async with trio.open_nursery() as nursery:

            async def start_claude() -> None:
                started.append(await claude.start("claude", on_progress=record))

            nursery.start_soon(start_claude)
            await trio.testing.wait_all_tasks_blocked()
            assert events[-1].on == ["git", "node"]
            for unit in ("git", "node"):
                await git.start(unit)
                await trio.testing.wait_all_tasks_blocked()
                assert not started, "claude started before its dependencies completed"
            await git.complete("git")
            await trio.testing.wait_all_tasks_blocked()
            assert not started
            assert events[-1].on == ["node"]
            await git.complete("node")
        assert started[0].unit == "claude"
        [view] = await git.status("claude")
        assert view.status == "started"


async def test_two_clients_waiting_on_one_unit_are_both_released(
    agent: Service, config: AgentConfig
) -> None:
    async with await connect(config) as admin:
        await admin.want("b", "a")
        await admin.want("c", "a")
        done: list[str] = []
        async with trio.open_nursery() as nursery:
            for unit in ("b", "c"):

                async def wait(unit: str = unit) -> None:
                    async with await connect(config) as client:
                        done.append((await client.start(unit)).unit)

                nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert agent.waiting == {"b": 1, "c": 1}
            await admin.start("a")
            await admin.complete("a")
        assert sorted(done) == ["b", "c"]
        assert not agent.waiting


async def test_a_client_that_hangs_up_while_waiting_is_forgotten(
    agent: Service, config: AgentConfig
) -> None:
    async with await connect(config) as admin:
        await admin.want("b", "a")
        quitter = await connect(config)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(quitter.start, "b")
            await trio.testing.wait_all_tasks_blocked()
            assert agent.waiting == {"b": 1}
            nursery.cancel_scope.cancel()
        await quitter.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert not agent.waiting
        assert (await admin.status("b"))[0].status == "pending"
        await admin.start("a")  # the agent still serves everyone else
        await admin.complete("a")
        assert (await admin.start("b")).unit == "b"


async def test_a_failed_dependency_fails_its_waiters_in_cascade(
    agent: Service, config: AgentConfig
) -> None:
    async with await connect(config) as admin:
        await admin.want("api", "db")
        await admin.want("web", "api")
        errors: dict[str, DependencyFailed] = {}
        async with trio.open_nursery() as nursery:
            for unit in ("api", "web"):

                async def wait(unit: str = unit) -> None:
                    async with await connect(config) as client:
                        with pytest.raises(DependencyFailed) as caught:
                            await client.start(unit)
                        errors[unit] = caught.value

                nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            await admin.start("db")
            await admin.fail("db", reason="disk full", force=True)
        assert errors["api"].dependency == "db"
        assert "disk full" in str(errors["api"])
        assert errors["web"].dependency == "api"
        views = {v.name: v for v in await admin.status()}
        assert views["api"].status == "failed"
        assert views["api"].reason == "dependency db failed"
        assert views["web"].reason == "dependency api failed"


async def test_start_on_an_already_failed_dependency_fails_at_once(
    agent: Service, config: AgentConfig
) -> None:
    async with await connect(config) as client:
        await client.want("b", "a")
        await client.fail("a", reason="no network", force=True)
        with pytest.raises(DependencyFailed, match="no network"):
            await client.start("b")


@pytest.mark.parametrize(
    ("calls", "code", "needle"),
    [
        ([("want", "a", "b"), ("want", "b", "c"), ("want", "c", "a")], "cycle", "c -> a -> b -> c"),
        ([("want", "a", "a")], "invalid", "itself"),
        ([("start", "a"), ("start", "a")], "already_started", "--rerun"),
        ([("complete", "nope")], "not_started", "--force"),
        ([("status", "ghost")], "unknown_unit", "unknown unit"),
        ([("want", "bad\x07name", "x")], "invalid", "U+0007"),
        ([("want", "x" * 256, "y")], "invalid", "255 bytes"),
    ],
)
async def test_refusals_name_the_problem(
    agent: Service, config: AgentConfig, calls: list[tuple[str, ...]], code: str, needle: str
) -> None:
    async with await connect(config) as client:
        *setup, (op, *args) = calls
        for setup_op, *setup_args in setup:
            await getattr(client, setup_op)(*setup_args)
        before = [u.name for u in await client.status()]
        with pytest.raises(Refused) as caught:
            await getattr(client, op)(*args)
        assert caught.value.code == code
        assert needle in str(caught.value)
        assert [u.name for u in await client.status()] == before, "a refusal changed state"


async def test_status_shows_dependencies_dependents_and_history(
    agent: Service, config: AgentConfig
) -> None:
    async with await connect(config) as client:
        await client.want("claude", "git")
        await client.start("git")
        await client.complete("git")
        [claude] = await client.status("claude")
        [git] = await client.status("git")
    assert claude.ready and claude.status == "pending"
    assert [(d.unit, d.current, d.satisfied) for d in claude.dependencies] == [
        ("git", "completed", True)
    ]
    assert git.dependents == ["claude"]
    assert [(t.from_, t.to) for t in git.history] == [
        ("pending", "started"),
        ("started", "completed"),
    ]


# --- the raw socket: bad frames never disturb anyone else --------------------------------


class RawPeer:
    def __init__(self, config: AgentConfig) -> None:
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path = str(config.socket)
        self.buffer = b""

    async def __aenter__(self) -> RawPeer:
        await self.sock.connect(self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    async def send(self, data: bytes) -> None:
        await self.sock.send(data)

    async def reply(self) -> object:
        while True:
            if len(self.buffer) >= 4:
                (size,) = struct.unpack(">I", self.buffer[:4])
                if len(self.buffer) >= 4 + size:
                    body, self.buffer = self.buffer[4 : 4 + size], self.buffer[4 + size :]
                    return decode_reply(body)
            chunk = await self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def test_garbage_frames_get_an_error_and_the_connection_goes_on(
    agent: Service, config: AgentConfig
) -> None:
    async with RawPeer(config) as peer:
        await peer.send(encode(Hello(PROTOCOL_VERSION)))
        assert isinstance(await peer.reply(), Welcome)
        for junk in (b"\xc1\xc1", msgspec.msgpack.encode({"op": "launch"}), b"\x93\x01\x02\x03"):
            await peer.send(frame(junk))
            error = await peer.reply()
            assert isinstance(error, Error) and error.code == "protocol"
        await peer.send(frame(msgspec.msgpack.encode({"op": "want", "unit": 5, "deps": []})))
        error = await peer.reply()
        assert isinstance(error, Error) and "unit" in error.message
        await peer.send(encode(Ping()))
        assert isinstance(await peer.reply(), Pong)


async def test_an_oversize_frame_is_refused_and_its_connection_closed(
    agent: Service, config: AgentConfig
) -> None:
    async with RawPeer(config) as bad, await connect(config) as good:
        await bad.send(encode(Hello(PROTOCOL_VERSION)))
        await bad.reply()
        await bad.send(struct.pack(">I", MAX_FRAME + 1))
        error = await bad.reply()
        assert isinstance(error, Error) and "limit" in error.message
        assert await bad.reply() is None  # closed
        assert (await good.ping()).pid == os.getpid()


async def test_a_version_mismatch_is_refused_clearly(agent: Service, config: AgentConfig) -> None:
    async with RawPeer(config) as peer:
        await peer.send(encode(Hello(PROTOCOL_VERSION + 1)))
        error = await peer.reply()
        assert isinstance(error, Error)
        assert f"speaks version {PROTOCOL_VERSION}" in error.message
        assert await peer.reply() is None


async def test_the_first_frame_must_be_a_hello(agent: Service, config: AgentConfig) -> None:
    async with RawPeer(config) as peer:
        await peer.send(encode(Ping()))
        error = await peer.reply()
        assert isinstance(error, Error) and "hello" in error.message


# --- the socket: one agent, private, cleaned up ---------------------------------------------


async def test_a_second_agent_on_the_same_socket_refuses_naming_the_first(
    agent: Service, config: AgentConfig, short_tmp
) -> None:
    other = AgentConfig(socket=config.socket, state_dir=short_tmp / "other-state")
    with pytest.raises(SetupError, match=f"pid {os.getpid()}"):
        await run_agent(other)
    async with await connect(config) as client:  # the first one is untouched
        await client.ping()


async def test_a_stale_socket_file_is_replaced(nursery: trio.Nursery, config: AgentConfig) -> None:
    config.socket.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(config.socket))
    dead.close()  # a socket file with nobody behind it, as a killed agent leaves
    await nursery.start(run_agent, config)
    async with await connect(config) as client:
        await client.ping()


async def test_socket_and_folder_are_private(agent: Service, config: AgentConfig) -> None:
    assert stat.S_IMODE(config.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.socket.parent.stat().st_mode) == 0o700


async def test_a_folder_writable_by_others_is_refused(config: AgentConfig) -> None:
    config.socket.parent.mkdir()
    config.socket.parent.chmod(0o777)
    with pytest.raises(SetupError, match="writable by others"):
        await run_agent(config)


async def test_shutdown_tells_waiters_and_removes_the_socket(config: AgentConfig) -> None:
    async with trio.open_nursery() as outer:
        agent_scope = trio.CancelScope()

        async def agent(task_status: trio.TaskStatus[None]) -> None:
            with agent_scope:
                await run_agent(config, task_status=task_status)

        await outer.start(agent)
        client = await connect(config)
        await client.want("b", "a")
        errors: list[Exception] = []

        async def wait() -> None:
            """The waiter is told why, then goes on trying to reach the next agent."""
            with trio.CancelScope() as waiting:

                async def progress(event: object) -> None:
                    if isinstance(event, Exception):
                        errors.append(event)
                        waiting.cancel()

                await client.start("b", on_progress=progress)

        outer.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        agent_scope.cancel()
    [told] = errors
    assert isinstance(told, AgentGone)
    assert "shutting down" in str(told)
    assert not config.socket.exists()


async def test_a_status_larger_than_one_frame_arrives_whole(
    agent: Service, config: AgentConfig
) -> None:
    reason = "r" * 4000
    async with await connect(config) as client:
        for i in range(400):  # 400 units x 4 KB of reason: well over the 1 MiB frame limit
            await client.fail(f"unit-{i}", reason, force=True)
        views = await client.status()
        assert len(views) == 400 and all(v.reason == reason for v in views)
        watch = client.watch()
        snapshot = await watch.__anext__()
        assert len(snapshot.units) == 400
    blocking = await trio.to_thread.run_sync(lambda: Client(config.socket).status())
    assert len(blocking) == 400


async def test_an_overlong_reason_is_refused(agent: Service, config: AgentConfig) -> None:
    async with await connect(config) as client:
        with pytest.raises(Refused, match="longer than 4096 bytes"):
            await client.fail("a", "x" * 4097, force=True)


async def test_a_start_given_up_leaves_the_async_client_usable(
    agent: Service, config: AgentConfig
) -> None:
    async with await connect(config) as client:
        await client.want("app", "db")
        with trio.move_on_after(0.2) as gave_up:
            await client.start("app")  # db never completes
        assert gave_up.cancelled_caught
        # The next call gets its own reply, not the abandoned start's; the agent forgot the wait.
        assert (await client.complete("db", force=True)).message == "db completed"
        await trio.testing.wait_all_tasks_blocked()
        [app] = await client.status("app")
        assert (app.status, app.waiters) == ("pending", 0)


async def test_a_watch_left_early_leaves_the_async_client_usable(
    agent: Service, config: AgentConfig
) -> None:
    async with await connect(config) as client:
        await client.want("app", "db")
        events = client.watch()
        async with contextlib.aclosing(events):
            assert isinstance(await anext(events), FullView)
        assert (await client.ping()).pid == os.getpid()
        assert (await client.want("app", "cache")).message == "app now wants cache"
