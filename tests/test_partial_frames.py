"""Frames not yet whole cost the agent at most one cap, across all connections (SPEC §12).

Each peer may make the agent hold up to a frame (1 MiB) while it sends one; 200 peers
doing so took a real agent from 38 to 245 MB. Now past `Limits.partial_frames` the
connection holding the most is closed, told why, and the agent serves everyone else.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import trio

from unitsync.agent.serve.limits import DEFAULT_PARTIAL_FRAMES, Limits
from unitsync.agent.serve.server import AgentConfig, run_agent
from unitsync.client import Client
from unitsync.wire.framing import HEADER, MAX_FRAME, decode_reply, encode, take_frame
from unitsync.wire.protocol import PROTOCOL_VERSION, Error, Hello, Welcome

from conftest import AgentProcess

CONNECTIONS = 200
PARTIAL = MAX_FRAME - 1
"""What each holds: a frame of the largest size announced, all of it sent but one byte."""


def kib(pid: int, field: str) -> int:
    """A figure of /proc/PID/status, in kB (VmRSS: resident now; VmHWM: the most ever)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def greeted(path: Path) -> socket.socket:
    """A connection that said hello and got its welcome: what every client has."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.sendall(encode(Hello(PROTOCOL_VERSION, "partial")))
    buffer = bytearray()
    while (body := take_frame(buffer)) is None:
        buffer += sock.recv(65536)
    assert isinstance(decode_reply(body), Welcome)
    return sock


def told(sock: socket.socket) -> str:
    """What the agent said before closing the connection ("" if it said nothing)."""
    sock.settimeout(30)
    buffer = bytearray()
    body = None
    try:
        while (body := take_frame(buffer)) is None and (chunk := sock.recv(65536)):
            buffer += chunk
    except OSError:
        pass
    reply = decode_reply(body) if body is not None else None
    return reply.message if isinstance(reply, Error) else ""


def test_200_connections_each_holding_most_of_a_frame_cost_at_most_the_cap(
    agent_process: AgentProcess,
) -> None:
    """The measured attack on a real agent process: its peak resident size (VmHWM) stays
    under its size with the 200 connections open and idle, plus the cap; those that held
    the most are closed naming the cap; the agent answers others all along."""
    path, pid = agent_process.config.socket, agent_process.proc.pid  # type: ignore[union-attr]
    with Client(path) as client:  # warm: the code paths every connection takes are loaded
        for i in range(20):
            client.want(f"u{i}", "base")
            client.status()
    peers = [greeted(path) for _ in range(CONNECTIONS)]
    time.sleep(0.2)
    idle = kib(pid, "VmRSS")

    def attack() -> None:
        frame = HEADER.pack(MAX_FRAME) + b"\0" * PARTIAL
        for peer in peers:
            with contextlib.suppress(OSError):  # closed for the cap while it sent
                peer.sendall(frame)

    thread = threading.Thread(target=attack)
    thread.start()
    pings = 0
    while thread.is_alive():  # served meanwhile, as anybody else
        with Client(path) as client:
            assert client.ping().pid == pid
        pings += 1
    thread.join()
    with Client(path) as client:
        assert client.ping().pid == pid
    peak = kib(pid, "VmHWM")
    messages = [told(peer) for peer in peers]
    closed = [m for m in messages if f"cap of {DEFAULT_PARTIAL_FRAMES} bytes" in m]
    cap_kib = DEFAULT_PARTIAL_FRAMES // 1024
    print(
        f"\n{CONNECTIONS} connections holding {PARTIAL} bytes each: RSS {idle} kB idle, "
        f"{peak} kB at most (+{peak - idle} kB, the cap is {cap_kib} kB); {len(closed)} closed "
        f"for the cap; {pings} pings answered meanwhile"
    )
    assert peak - idle <= cap_kib
    assert len(closed) >= CONNECTIONS - DEFAULT_PARTIAL_FRAMES // MAX_FRAME
    assert "send each frame whole and promptly" in closed[0]
    for peer in peers:
        peer.close()
    _code, log = agent_process.stop()
    assert "frames in progress held more than the cap" in log


async def test_the_connection_holding_the_most_is_closed_not_the_one_that_read_last(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """Three peers hold 600, 200 and 300 KiB of frames against a 1.5 MiB cap (a frame of
    room kept for a buffer's growth): the one holding 600 KiB is closed, though the last
    read was another's; the others, and new clients, go on."""
    limits = Limits(partial_frames=MAX_FRAME + 64 * 1024 + 1024 * 1024)  # ~1 MiB of budget
    config = AgentConfig(short_tmp / "run" / "agent.sock", short_tmp / "state", limits=limits)
    await nursery.start(run_agent, config)

    def hold(sizes: list[int]) -> list[socket.socket]:
        peers = []
        for size in sizes:
            peer = greeted(config.socket)
            peer.sendall(HEADER.pack(MAX_FRAME) + b"\0" * (size * 1024))
            peers.append(peer)
            time.sleep(0.1)
        return peers

    big, small, third = await trio.to_thread.run_sync(hold, [600, 200, 300])
    message = await trio.to_thread.run_sync(told, big)
    assert "this one held the most" in message and "cap of" in message
    for peer in (small, third):
        peer.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # nothing to read: not closed
            assert peer.recv(1) != b"", "closed, though it held less"
    async with await trio.open_unix_socket(str(config.socket)) as stream:
        await stream.send_all(encode(Hello(PROTOCOL_VERSION)))
        data = await stream.receive_some(65536)
        assert isinstance(decode_reply(data[4:]), Welcome)
    for peer in (big, small, third):
        peer.close()


def test_a_frame_in_progress_is_counted_by_the_memory_its_buffer_takes() -> None:
    """The bound is on memory: a growing buffer keeps room to grow, and that counts."""
    from unitsync.agent.serve.partial_frames import MeteredFrames, PartialFrames

    meter = PartialFrames(cap=100 * MAX_FRAME)

    class Stream:
        socket = None

    frames = MeteredFrames(Stream(), meter)  # type: ignore[arg-type]
    with meter.counting(frames):
        frames.buffer += b"\0" * 65536
        frames.buffer += b"\0" * 65536
        meter.update(frames)
        assert meter.total >= len(frames.buffer)
        del frames.buffer[:]
        meter.update(frames)
        assert meter.total == 0
