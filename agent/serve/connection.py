"""One client connection: frames in and out, time limits, hang-ups, and the service.

The rules of the agent's side of the protocol (the hello and its checks, what may be sent
when, reply chunking, orders between replies) are `wire.serving`'s. This module moves the
frames, keeps the time limits, notices hang-ups, meters frames that arrive in pieces
(`partial_frames`) and hands each request to the service (`_dispatch`).

A connection is served by one task. Bad frames get an error reply and the
connection goes on (the frame boundary is intact); an oversize frame gets an
error and the connection is closed (the boundary is lost). Nothing a peer
sends can disturb another connection.

A connection that holds a run can also be told something unasked (an `Order`: its run
was superseded, or `sync stop` or `sync restart` asks its `run` to act). Another task
decides that; it pushes the order to the connection's `Serving` and wakes the connection's
task (`Outbox`), which sends it between replies: one task writes each connection, so an
order never lands inside a reply.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio

from unitsync.agent.serve.frames import FrameStream, PeerGone
from unitsync.wire.errors import UnitsyncError, to_reply
from unitsync.wire.framing import HEADER, MAX_FRAME, FrameTooLarge, take_frame
from unitsync.wire.host.peer import peer_of
from unitsync.wire.protocol import (
    Changed,
    Complete,
    Error,
    Fail,
    Forget,
    FullView,
    Order,
    Ping,
    Reset,
    Restart,
    Restarting,
    SetReason,
    Start,
    Status,
    Stop,
    Stopped,
    Waiting,
    Want,
    Watch,
)
from unitsync.wire.serving import (
    SHUTTING_DOWN,
    Frame,
    Serving,
    State,
    busy,
    too_large,
    untrusted,
)

from ..holds import Holder
from ..service import Service
from ..starting import start_when_ready
from .limits import Limits
from .partial_frames import MeteredFrames, PartialFrames

log = logging.getLogger("unitsync.agent")

GOODBYE_TIMEOUT = 1.0
"""How long a shutting-down agent spends telling a waiter why it goes."""


class Stalled(Exception):
    """The peer stopped in the middle of a frame, or never said hello."""


class Outbox:
    """Orders for the peer, decided by other tasks (`Holder.push`), handed to the
    connection's `Serving`, which says when they may go; a push wakes the connection's own
    task from its read, to send them."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self._wake: trio.CancelScope | None = None

    def push(self, order: Order) -> None:
        self.serving.push(order)
        if self._wake is not None:
            self._wake.cancel()

    async def read_more(self, frames: FrameStream) -> bool | None:
        """`frames.read_more()`, or None if an order came first (nothing was read: a read
        is cancelled only while it waits for the socket)."""
        with trio.CancelScope() as wake:
            self._wake = wake
            try:
                return await frames.read_more()
            finally:
                self._wake = None
        return None


async def serve_connection(
    service: Service,
    stream: trio.SocketStream,
    limits: Limits,
    partial: PartialFrames | None = None,
) -> None:
    """Handle one client from hello to hang-up.

    A connection that ends while it holds a run (a `run` killed before it could report its
    command's end) fails that run; one cancelled because the agent stops does not (the
    `run` reconnects to the next agent and takes its run back). `partial` counts the bytes
    of frames not yet whole across connections, and closes this one if it holds the most
    past the cap.
    """
    partial = partial or PartialFrames(limits.partial_frames)
    frames = MeteredFrames(stream, partial)
    serving = Serving(
        service.store.graph_id,
        service.store.location,
        os.getpid(),
        logs=service.logs_folder,
        boot=service.graph.boot,
        host=service.host,
    )
    outbox = Outbox(serving)
    holder = Holder(outbox.push)
    async with stream:
        with partial.counting(frames), trio.CancelScope() as frames.scope:
            try:
                if await _admit_peer(frames) and await _handshake(serving, frames, limits):
                    await _serve_requests(service, serving, frames, limits, holder, outbox)
            except (FrameTooLarge, Stalled) as exc:
                with trio.move_on_after(limits.frame_timeout):  # it may not be reading either
                    message = f"{exc}; closing the connection"
                    await _send_quietly(frames, *serving.closing(Error("protocol", message)))
            except (PeerGone, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if frames.evicted:
            with trio.move_on_after(limits.frame_timeout):
                await _send_quietly(frames, Error("busy", partial.message(frames)))
    if holder:
        await service.runs_lost(holder)


async def refuse_busy(stream: trio.SocketStream, limits: Limits) -> None:
    """Past the connection cap: say so at once instead of leaving the client hanging."""
    async with stream:
        with trio.move_on_after(limits.frame_timeout):
            await _send_quietly(FrameStream(stream), busy(limits.max_connections))


async def _serve_requests(
    service: Service,
    serving: Serving,
    frames: FrameStream,
    limits: Limits,
    holder: Holder,
    outbox: Outbox,
) -> None:
    """Requests until the peer hangs up or runs out of time; orders between them.

    One timer for the whole connection (a scope per request costs more than the request):
    its deadline is the idle timeout between requests, the frame timeout while a frame
    arrives in pieces, and none while a `start` or `watch` is served, so they are never
    cut short, nor while the connection holds a run (a `run` whose command may run for
    days); a peer that does not read its replies for the idle timeout is dropped.
    Moving a deadline costs about as much as a small request, so a busy connection
    moves its idle deadline only once it is 1% stale.
    """
    sending = False
    with trio.CancelScope() as timer:
        while True:
            if holder:
                timer.deadline = math.inf
            else:
                _push_back(timer, limits.idle_timeout)
            if orders := serving.orders_due():
                sending = True  # (an order half sent is a reply half sent)
                await _send(frames, orders)
                sending = False
            if not frames.buffer:
                # Only a connection holding a run can be pushed an order: the others read
                # without the cost of a cancel scope.
                more = await (outbox.read_more(frames) if holder else frames.read_more())
                if more is None:
                    continue  # an order to send first
                if not more:
                    return
            body = take_frame(frames.buffer)
            in_pieces = body is None
            if in_pieces:
                timer.deadline = trio.current_time() + limits.frame_timeout
                body = await frames.receive()
                if body is None:
                    return
            request = serving.request(body)
            if in_pieces or serving.open_ended:
                timer.deadline = math.inf
            sending = True
            await _serve(service, serving, frames, request, holder)
            sending = False
    if sending:  # a reply may be half sent: the connection is beyond saving
        raise PeerGone(f"no reply could be sent for {limits.idle_timeout:g}s")
    if frames.buffer:
        raise Stalled(f"incomplete frame: nothing more arrived for {limits.frame_timeout:g}s")
    raise PeerGone(f"idle for {limits.idle_timeout:g}s")


def _push_back(timer: trio.CancelScope, seconds: float) -> None:
    """Set the deadline `seconds` from now, unless it already is, give or take 1%."""
    deadline = trio.current_time() + seconds
    if not deadline - seconds / 100 <= timer.deadline <= deadline:
        timer.deadline = deadline


async def _admit_peer(frames: FrameStream) -> bool:
    uid = peer_of(frames.stream.socket).uid
    refusal = untrusted(uid, os.getuid())
    if refusal is None:
        return True
    log.warning("refused a connection from uid %d (the agent runs as uid %d)", uid, os.getuid())
    await _send_quietly(frames, refusal)
    return False


async def _handshake(serving: Serving, frames: FrameStream, limits: Limits) -> bool:
    """The hello and its answer; whether the connection goes on."""
    with trio.move_on_after(limits.hello_timeout):
        body = await frames.receive()
        if body is None:
            return False
        await _send(frames, serving.hello(body))
        return serving.state is State.IDLE
    raise Stalled(f"no hello within {limits.hello_timeout:g}s of connecting")


async def _serve(
    service: Service, serving: Serving, frames: FrameStream, request: object, holder: Holder
) -> None:
    """Answer one request (an `Error`: a frame that was not one, answered as it is)."""
    try:
        if isinstance(request, Error):
            reply = request
        else:
            reply = await _dispatch(service, serving, frames, request, holder)
    except UnitsyncError as exc:
        reply = to_reply(exc)
    for frame in serving.reply(reply):
        try:
            await frames.send(frame)
        except FrameTooLarge as exc:  # nothing was sent: the connection goes on
            await frames.send(too_large(exc.size))


async def _dispatch(
    service: Service, serving: Serving, frames: FrameStream, request: object, holder: Holder
) -> Frame:
    match request:
        case Ping():
            return service.ping()
        case Want():
            return await service.want(request)
        case Start():
            return await _start(service, serving, frames, request, holder)
        case Complete():
            return await service.complete(request, holder)
        case Fail():
            return await service.fail(request, holder)
        case SetReason():
            return await service.set_reason(request)
        case Restarting():
            return await service.restarting(request)
        case Stopped():
            return await service.stopped(request, holder)
        case Stop():
            return await service.stop(request)
        case Restart():
            return await service.restart(request)
        case Reset():
            return await service.reset(request)
        case Forget():
            return await service.forget(request)
        case Status():
            return await service.status(request)
        case Watch():
            return await _watch(service, serving, frames, request)
    return Error("protocol", f"unexpected request {type(request).__name__}")


async def _start(
    service: Service, serving: Serving, frames: FrameStream, request: Start, holder: Holder
) -> Frame:
    """Wait for the start in this task, reading the socket meanwhile to notice a hang-up."""

    async def progress(event: Waiting) -> None:
        await _send(frames, serving.reply(event))

    async def idle() -> None:
        await _watch_hangup(frames)
        raise PeerGone("hung up while waiting to start")

    try:
        return await start_when_ready(service, request, progress, idle, holder)
    except trio.Cancelled:  # the agent is shutting down: say so, then go
        await _say_goodbye(serving, frames)
        raise


async def _watch(
    service: Service, serving: Serving, frames: FrameStream, request: Watch
) -> NoReturn:
    """Turn the connection into a stream of events until the peer hangs up."""
    with service.watching(request.unit) as watcher:

        async def full_view() -> None:
            """What it shows is on disk (taken again if some of it was refused)."""
            views = await service.durable_views(watcher.wanted)
            await _send(frames, serving.reply(FullView(views, time.time())))

        async def stream() -> None:
            await full_view()
            while True:
                views = await watcher.next()
                if views is None:  # fell behind, or changes were refused: start from the present
                    await full_view()
                for view in views or ():
                    await _send(frames, serving.reply(Changed(view, at=time.time())))

        await _until_hangup(serving, frames, stream)
    raise PeerGone("stopped watching")


async def _until_hangup(
    serving: Serving, frames: FrameStream, work: Callable[[], Awaitable[None]]
) -> None:
    """Run `work` until the peer hangs up (noticed by reading or by writing).

    If the agent is shutting down (an outside cancellation), the peer is told why.
    """
    hung_up = False
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            nonlocal hung_up
            try:
                await work()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                hung_up = True
            except trio.Cancelled:
                if not hung_up:
                    await _say_goodbye(serving, frames)
                raise
            nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        await _watch_hangup(frames)
        hung_up = True
        nursery.cancel_scope.cancel()


async def _say_goodbye(serving: Serving, frames: FrameStream) -> None:
    if getattr(frames, "evicted", 0):  # not the agent stopping: it is told why it was closed
        return
    with trio.CancelScope(shield=True, deadline=trio.current_time() + GOODBYE_TIMEOUT):
        await _send_quietly(frames, *serving.closing(SHUTTING_DOWN))


async def _watch_hangup(frames: FrameStream) -> None:
    """Return when the peer hangs up; keep what it pipelines (up to one frame) for later."""
    while len(frames.buffer) <= HEADER.size + MAX_FRAME:
        if not await frames.read_more():
            return
    await trio.sleep_forever()


async def _send(frames: FrameStream, messages: Sequence[Frame]) -> None:
    for message in messages:
        await frames.send(message)


async def _send_quietly(frames: FrameStream, *messages: Frame) -> None:
    """Send what can be sent to a peer that may be gone already."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await _send(frames, list(messages))
