"""Frames over a real socket pair: whole frames both ways, and misuse caught, not garbled."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from unitsync.agent.serve.frames import FrameStream
from unitsync.wire.framing import decode_request
from unitsync.wire.protocol import Want

BIG = Want("a", [f"dependency-{i}" for i in range(20_000)])
"""A frame far larger than a socket buffer: sending it blocks until the peer reads."""


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FrameStream, FrameStream]]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    streams = [trio.SocketStream(trio.socket.from_stdlib_socket(s)) for s in (left, right)]
    yield FrameStream(streams[0]), FrameStream(streams[1])
    for stream in streams:
        await stream.aclose()


async def test_frames_arrive_whole_in_order(pair: tuple[FrameStream, FrameStream]) -> None:
    sender, receiver = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send, BIG)  # blocks until the receiver reads
        assert decode_request(await receiver.receive()) == BIG
    await sender.send(Want("b", ["c"]))
    assert decode_request(await receiver.receive()) == Want("b", ["c"])


async def test_a_second_sender_is_refused_rather_than_interleaved(
    pair: tuple[FrameStream, FrameStream],
) -> None:
    sender, receiver = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send, BIG)
        await trio.testing.wait_all_tasks_blocked()  # the first send is stuck half way
        with pytest.raises(trio.BusyResourceError, match="already sending"):
            await sender.send(Want("b", ["c"]))
        assert decode_request(await receiver.receive()) == BIG


async def test_a_second_reader_is_refused(pair: tuple[FrameStream, FrameStream]) -> None:
    _sender, receiver = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError, match="already reading"):
            await receiver.read_more()
        nursery.cancel_scope.cancel()


async def test_one_task_may_read_while_another_sends(
    pair: tuple[FrameStream, FrameStream],
) -> None:
    left, right = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.receive)  # as a watch reads for a hang-up while it sends
        await trio.testing.wait_all_tasks_blocked()
        await left.send(Want("b", ["c"]))
        assert decode_request(await right.receive()) == Want("b", ["c"])
        nursery.cancel_scope.cancel()


async def test_a_peer_vanishing_mid_frame_breaks_the_send(
    pair: tuple[FrameStream, FrameStream],
) -> None:
    sender, receiver = pair

    async def send_big() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await sender.send(BIG)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_big)
        await trio.testing.wait_all_tasks_blocked()
        await receiver.stream.aclose()


async def test_a_closed_stream_says_so(pair: tuple[FrameStream, FrameStream]) -> None:
    sender, _receiver = pair
    await sender.stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await sender.send(Want("b", ["c"]))
    with pytest.raises(trio.ClosedResourceError):
        await sender.read_more()


async def test_closing_wakes_a_blocked_reader(pair: tuple[FrameStream, FrameStream]) -> None:
    _sender, receiver = pair

    async def read() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await receiver.read_more()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await receiver.stream.aclose()
