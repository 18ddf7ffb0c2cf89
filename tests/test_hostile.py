"""Broken and hostile peers: each is dealt with, and none of them delays anyone else."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from unitsync.agent.log_throttle import Throttle
from unitsync.agent.serve import server
from unitsync.agent.serve.limits import Limits
from unitsync.agent.serve.server import AgentConfig, run_agent
from unitsync.client import AgentUnavailable, AsyncClient, Client
from unitsync.wire.framing import decode_reply, encode
from unitsync.wire.protocol import PROTOCOL_VERSION, Error, Hello, Ping, Start, Started, Waiting

LIMITS = Limits(hello_timeout=0.5, frame_timeout=0.5, idle_timeout=1.0, max_connections=8)


@pytest.fixture
async def strict(
    nursery: trio.Nursery, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[AgentConfig]:
    """An agent with short timeouts and a small connection cap; no tracebacks allowed."""
    config = AgentConfig(short_tmp / "run" / "agent.sock", short_tmp / "state", limits=LIMITS)
    with caplog.at_level(logging.INFO):
        await nursery.start(run_agent, config)
        yield config
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


class Peer:
    """A raw socket that misbehaves on purpose."""

    def __init__(self, config: AgentConfig) -> None:
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path = str(config.socket)

    async def connect(self) -> Peer:
        await self.sock.connect(self.path)
        return self

    async def hello(self) -> Peer:
        await self.sock.send(encode(Hello(PROTOCOL_VERSION)))
        await self.frame()
        return self

    async def frame(self) -> object | None:
        """The next frame from the agent, or None once it closed the connection."""
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = await self.sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        return decode_reply(data[4:])


async def ping_works(config: AgentConfig) -> bool:
    async with await AsyncClient.connect(config.socket) as client:
        return (await client.ping()).pid > 0


async def test_a_silent_peer_is_dropped_after_the_hello_timeout(strict: AgentConfig) -> None:
    silent = await Peer(strict).connect()
    assert await ping_works(strict)  # served while the silent peer still hangs on
    error = await silent.frame()
    assert isinstance(error, Error) and "no hello within 0.5s" in error.message
    assert await silent.frame() is None


async def test_a_peer_stalling_mid_frame_is_dropped_and_delays_nobody(strict: AgentConfig) -> None:
    staller = await (await Peer(strict).connect()).hello()
    await staller.sock.send(encode(Ping())[:3])  # half a header, then nothing
    assert await ping_works(strict)
    error = await staller.frame()
    assert isinstance(error, Error) and "incomplete frame" in error.message
    assert await staller.frame() is None


async def test_a_peer_that_never_reads_its_replies_blocks_only_itself(
    strict: AgentConfig,
) -> None:
    hoarder = await (await Peer(strict).connect()).hello()
    hoarder.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent = 0
    with trio.move_on_after(LIMITS.idle_timeout / 2):
        while True:  # pipelined requests, no reads: its replies pile up
            await hoarder.sock.send(encode(Ping()))
            sent += 1
    assert await ping_works(strict)
    await trio.sleep(LIMITS.idle_timeout * 2)
    assert await ping_works(strict)
    # Having read nothing for the idle timeout, it was dropped: its replies stop short.
    received = b""
    with trio.fail_after(LIMITS.idle_timeout * 5), contextlib.suppress(ConnectionResetError):
        while chunk := await hoarder.sock.recv(65536):
            received += chunk
    assert complete_frames(received) < sent


def complete_frames(data: bytes) -> int:
    count = 0
    while len(data) >= 4 and len(data) >= 4 + (size := struct.unpack(">I", data[:4])[0]):
        data, count = data[4 + size :], count + 1
    return count


async def test_a_peer_that_hangs_up_mid_request_leaves_nothing_behind(
    strict: AgentConfig, nursery: trio.Nursery
) -> None:
    for cut in range(1, 12):
        quitter = await (await Peer(strict).connect()).hello()
        await quitter.sock.send(encode(Ping())[:cut])
        quitter.sock.close()
    await trio.testing.wait_all_tasks_blocked()
    assert await ping_works(strict)


async def test_idle_connections_are_closed_and_the_client_reconnects(strict: AgentConfig) -> None:
    idle = await (await Peer(strict).connect()).hello()
    assert await idle.frame() is None  # closed after idle_timeout, silently
    client = Client(strict.socket)
    await trio.to_thread.run_sync(client.want, "a", "b")
    await trio.sleep(LIMITS.idle_timeout * 2)  # the agent closes the client's idle connection
    await trio.to_thread.run_sync(client.want, "c", "d")  # and the client just reconnects
    client.close()


async def test_past_the_connection_cap_clients_are_refused_clearly(strict: AgentConfig) -> None:
    held = [await (await Peer(strict).connect()).hello() for _ in range(LIMITS.max_connections)]
    refused = await Peer(strict).connect()
    error = await refused.frame()
    assert isinstance(error, Error) and error.code == "busy"
    assert "limit of 8 connections" in error.message
    with pytest.raises(AgentUnavailable, match="limit of 8"):
        await trio.to_thread.run_sync(Client(strict.socket).ping)
    held.pop().sock.close()
    await trio.testing.wait_all_tasks_blocked()
    assert await ping_works(strict)


async def test_a_long_wait_is_not_an_idle_connection(
    strict: AgentConfig, nursery: trio.Nursery
) -> None:
    async with await AsyncClient.connect(strict.socket) as admin:
        await admin.want("app", "db")
    waiter = await AsyncClient.connect(strict.socket)
    done = trio.Event()

    async def wait() -> None:
        assert (await waiter.start("app")).unit == "app"
        done.set()

    nursery.start_soon(wait)
    await trio.sleep(LIMITS.idle_timeout * 2)  # longer than any idle timeout
    async with await AsyncClient.connect(strict.socket) as admin:
        await admin.start("db")
        await admin.complete("db")
    await done.wait()


async def test_a_start_sent_in_pieces_still_waits_past_the_frame_timeout(
    strict: AgentConfig,
) -> None:
    async with await AsyncClient.connect(strict.socket) as admin:
        await admin.want("app", "db")
    slow = await (await Peer(strict).connect()).hello()
    frame = encode(Start("app"))
    await slow.sock.send(frame[:5])
    await trio.sleep(LIMITS.frame_timeout / 2)
    await slow.sock.send(frame[5:])
    assert isinstance(await slow.frame(), Waiting)
    await trio.sleep(LIMITS.frame_timeout * 2)  # the wait outlasts the frame's timeout
    async with await AsyncClient.connect(strict.socket) as admin:
        await admin.start("db")
        await admin.complete("db")
    started = await slow.frame()
    assert isinstance(started, Started) and started.unit == "app"


async def test_a_busy_connection_is_never_idle(strict: AgentConfig) -> None:
    async with await AsyncClient.connect(strict.socket) as client:
        with trio.move_on_after(LIMITS.idle_timeout * 3):
            while True:  # requests for longer than the idle timeout, none of them refused
                assert (await client.ping()).pid > 0
                await trio.sleep(LIMITS.idle_timeout / 10)


async def test_an_async_client_carries_on_after_its_idle_connection_is_closed(
    strict: AgentConfig,
) -> None:
    async with await AsyncClient.connect(strict.socket) as client:
        await client.want("a", "b")
        await trio.sleep(LIMITS.idle_timeout * 2)  # the agent closes the idle connection
        assert (await client.want("c", "d")).message == "c now wants d"


async def test_connections_failing_unexpectedly_log_one_line_a_minute(
    nursery: trio.Nursery, config: AgentConfig, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A peer that trips a bug must not flood the log: one traceback, then a line a minute."""

    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug in serving this peer")

    monkeypatch.setattr(server, "serve_connection", broken)
    await nursery.start(run_agent, config)
    with caplog.at_level(logging.ERROR, logger="unitsync.agent"):
        for _ in range(20):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.connect(str(config.socket))
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
    records = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is not None and "a bug in serving" in records[0].getMessage()


def test_the_fault_log_counts_what_it_kept_quiet(caplog) -> None:
    now = [0.0]
    faults = Throttle(server.FAULT_LOG_INTERVAL, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="unitsync.agent"):
        for second in range(0, 150):
            now[0] = float(second)
            server.log_fault(faults, RuntimeError("boom"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # at 0 s, 60 s and 120 s
    assert lines[1].endswith("(59 more since the last report)")
    assert [r.exc_info is not None for r in caplog.records] == [True, False, False]
