"""Load on a real agent process: 10,000 blocked waiters, 1,000 concurrent clients.

The agent runs in its own process (each side then holds one descriptor per
connection), the clients are trio tasks here. Correctness only: speed is
measured by `bench/`, never asserted in a test.
"""

from __future__ import annotations

import resource

import pytest
import trio

from unitsync.client import AsyncClient
from unitsync.wire.protocol import Started, Waiting

from conftest import AgentProcess

WAITERS = 10_000
CLIENTS = 1_000


def _room_for(count: int) -> None:
    """Room for `count` descriptors, or a skip saying why. (Called by fixtures, never in a
    test: pytest-trio loses the reason of a skip raised inside a trio test.)"""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < count:
        pytest.skip(f"needs {count} open files; the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.fixture
def room_for_waiters() -> None:
    _room_for(WAITERS + 1_000)


@pytest.fixture
def room_for_clients() -> None:
    _room_for(CLIENTS + 1_000)


async def connect_all(agent: AgentProcess, count: int) -> list[AsyncClient]:
    """Open `count` connections, a few hundred at a time (the listen backlog is finite).

    Each says hello as it connects (a ping), as a real client does with its first request:
    a connection that says nothing is an idle peer, which the agent drops after its hello
    timeout, and opening ten thousand takes longer than that on a busy machine."""
    clients: list[AsyncClient] = []
    limiter = trio.CapacityLimiter(200)

    async def one() -> None:
        async with limiter:
            client = await AsyncClient.connect(agent.config.socket)
            await client.ping()
            clients.append(client)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return clients


async def test_one_completion_releases_ten_thousand_waiters(
    agent_process: AgentProcess, room_for_waiters: None
) -> None:
    clients = await connect_all(agent_process, WAITERS)
    blocked = trio.Semaphore(0)
    started: list[Started] = []

    async def waiter(i: int, client: AsyncClient) -> None:
        await client.want(f"w{i}", "gate")

        async def on_wait(event: Waiting) -> None:
            assert event.on == ["gate"]
            blocked.release()

        started.append(await client.start(f"w{i}", on_progress=on_wait))

    async with trio.open_nursery() as nursery:
        for i, client in enumerate(clients):
            nursery.start_soon(waiter, i, client)
        for _ in range(WAITERS):
            await blocked.acquire()  # every one of them is blocked in start
        async with await AsyncClient.connect(agent_process.config.socket) as admin:
            assert {v.name: v.waiters for v in await admin.status("w0")} == {"w0": 1}
            await admin.start("gate")
            await admin.complete("gate")
    assert sorted(s.unit for s in started) == sorted(f"w{i}" for i in range(WAITERS))
    async with await AsyncClient.connect(agent_process.config.socket) as admin:
        views = await admin.status()
    assert sum(v.status == "started" for v in views) == WAITERS
    for client in clients:
        await client.aclose()


async def test_a_thousand_concurrent_clients_all_get_correct_answers(
    agent_process: AgentProcess, room_for_clients: None
) -> None:
    clients = await connect_all(agent_process, CLIENTS)

    async def chain(i: int, client: AsyncClient) -> None:
        """Each client runs its own three-step chain, interleaved with everyone else's."""
        a, b, c = f"c{i}-a", f"c{i}-b", f"c{i}-c"
        await client.want(c, b)
        await client.want(b, a)
        for unit in (a, b, c):
            await client.start(unit)
            await client.complete(unit)
        assert [v.status for v in await client.status(c)] == ["completed"]

    async with trio.open_nursery() as nursery:
        for i, client in enumerate(clients):
            nursery.start_soon(chain, i, client)
    async with await AsyncClient.connect(agent_process.config.socket) as admin:
        views = await admin.status()
    assert len(views) == 3 * CLIENTS
    assert all(v.status == "completed" and len(v.history) == 2 for v in views)
    for client in clients:
        await client.aclose()
