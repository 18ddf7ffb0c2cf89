"""`watch`: every acknowledged change is pushed; slow watchers cost bounded memory."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from unitsync.agent.broadcast import QUEUE_LIMIT
from unitsync.agent.serve.server import AgentConfig
from unitsync.agent.service import Service
from unitsync.client import AsyncClient, Refused
from unitsync.wire.framing import decode_reply, encode
from unitsync.wire.protocol import PROTOCOL_VERSION, Changed, FullView, Hello, Watch


async def collect(watch, count: int) -> list[FullView | Changed]:  # type: ignore[no-untyped-def]
    events = []
    async for event in watch:
        events.append(event)
        if len(events) == count:
            break
    return events


async def test_a_watcher_sees_a_snapshot_then_each_change(
    agent: Service, config: AgentConfig
) -> None:
    async with await AsyncClient.connect(config.socket) as admin:
        await admin.want("claude", "git")
        async with await AsyncClient.connect(config.socket) as watcher:
            stream = watcher.watch()
            first = await stream.__anext__()
            assert isinstance(first, FullView)
            assert sorted(u.name for u in first.units) == ["claude", "git"]
            await admin.start("git")
            await admin.complete("git")
            events = await collect(stream, 4)
    changed = [(e.unit.name, e.unit.status, e.unit.ready) for e in events]
    assert changed == [
        ("git", "started", True),
        ("claude", "pending", False),  # a dependent's view follows: still not ready
        ("git", "completed", True),
        ("claude", "pending", True),  # now it is
    ]


async def test_a_watch_on_one_unit_sees_it_and_its_dependencies_only(
    agent: Service, config: AgentConfig
) -> None:
    async with await AsyncClient.connect(config.socket) as admin:
        await admin.want("claude", "git")
        await admin.want("other", "thing")
        async with await AsyncClient.connect(config.socket) as watcher:
            stream = watcher.watch("claude")
            snapshot = await stream.__anext__()
            assert sorted(u.name for u in snapshot.units) == ["claude", "git"]
            await admin.fail("thing", "ignored", force=True)
            await admin.want("claude", "node")  # a new dependency joins the view
            await admin.fail("node", "seen", force=True)
            names = []
            async for event in stream:
                names.append(event.unit.name)
                if event.unit.reason == "seen":
                    break
    assert set(names) <= {"claude", "git", "node"}, "saw units outside the watched view"
    assert names[-1] == "node"


async def test_waiting_starts_show_up_in_the_watch(agent: Service, config: AgentConfig) -> None:
    async with await AsyncClient.connect(config.socket) as admin:
        await admin.want("app", "db")
        async with await AsyncClient.connect(config.socket) as watcher:
            stream = watcher.watch("app")
            await stream.__anext__()
            async with trio.open_nursery() as nursery:
                waiter = await AsyncClient.connect(config.socket)
                nursery.start_soon(waiter.start, "app")
                [event] = await collect(stream, 1)
                assert (event.unit.name, event.unit.waiters, event.unit.waiting_on) == (
                    "app",
                    1,
                    ["db"],
                )
                nursery.cancel_scope.cancel()


async def test_watching_an_unknown_unit_is_refused(agent: Service, config: AgentConfig) -> None:
    async with await AsyncClient.connect(config.socket) as watcher:
        with pytest.raises(Refused, match="unknown unit"):
            await watcher.watch("ghost").__anext__()


async def test_a_watcher_that_never_reads_costs_bounded_memory_and_slows_nobody(
    agent: Service, config: AgentConfig
) -> None:
    stuck = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await stuck.connect(str(config.socket))
    await stuck.send(encode(Hello(PROTOCOL_VERSION)) + encode(Watch()))
    async with await AsyncClient.connect(config.socket) as busy:
        for i in range(3 * QUEUE_LIMIT):
            await busy.fail(f"unit-{i % 50}", reason="x" * 200 + str(i), force=True)
            [watcher] = agent.hub.watchers
            assert len(watcher.queue) <= QUEUE_LIMIT
        assert watcher.behind, "the stuck watcher should have fallen behind"
        assert (await busy.ping()).pid  # still answering everyone else
    # When it finally reads, it catches up with a fresh snapshot of the present.
    buffer, snapshots = b"", 0
    with trio.move_on_after(10):
        while snapshots < 2:
            buffer += await stuck.recv(1 << 16)
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">I", buffer[:4])[0]:
                size = struct.unpack(">I", buffer[:4])[0]
                event = decode_reply(buffer[4 : 4 + size])
                buffer = buffer[4 + size :]
                snapshots += isinstance(event, FullView)
    assert snapshots == 2, "expected the initial snapshot and a catch-up snapshot"
    last = {u.name: u.reason for u in event.units}
    assert last[f"unit-{(3 * QUEUE_LIMIT - 1) % 50}"].endswith(str(3 * QUEUE_LIMIT - 1))
    stuck.close()
