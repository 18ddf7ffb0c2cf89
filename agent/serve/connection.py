"""One client connection: frames in, replies out, and orders pushed to a `run`.

A connection is served by one task. Bad frames get an error reply and the
connection goes on (the frame boundary is intact); an oversize frame gets an
error and the connection is closed (the boundary is lost). Nothing a peer
sends can disturb another connection.

The welcome names the graph the agent serves (SPEC §11). A hello that names another (a
client that talked to another agent at this socket before: another state dir, another
etcd prefix) gets its welcome, then `graph_changed`, and the connection is closed before
any request on it is read: nothing a client does after a reconnection may act on a graph
it did not start with.

A connection that holds a run can also be told something unasked (an `Order`: its run
was superseded). Another task decides that; it leaves the order in the connection's
`Outbox` and wakes the connection's task, which sends it between replies: one task
writes each connection, so an order never lands inside a reply.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

import msgspec
import trio

from unitsync.agent.serve.frames import FrameStream, PeerGone
from unitsync.wire import __version__
from unitsync.wire.bounds import MAX_DEPS, check_request
from unitsync.wire.errors import ProtocolError, UnitsyncError, to_reply
from unitsync.wire.framing import (
    HEADER,
    MAX_FRAME,
    FrameTooLarge,
    chunked,
    decode_request,
    take_frame,
)
from unitsync.wire.graph_id import short
from unitsync.wire.host.peer import peer_of
from unitsync.wire.protocol import (
    PROTOCOL_VERSION,
    Changed,
    Complete,
    Error,
    Fail,
    Forget,
    FullView,
    Hello,
    Order,
    Ping,
    Reset,
    SetReason,
    Start,
    Status,
    StatusReply,
    Waiting,
    Want,
    Watch,
    Welcome,
)

from ..holds import Holder
from ..service import Service
from ..starting import start_when_ready
from .limits import Limits
from .partial_frames import MeteredFrames, PartialFrames

log = logging.getLogger("unitsync.agent")

GOODBYE_TIMEOUT = 1.0
"""How long a shutting-down agent spends telling a waiter why it goes."""
SHUTTING_DOWN = Error(
    "shutting_down", "the agent is shutting down; a waiting start reconnects to the next one"
)


class Stalled(Exception):
    """The peer stopped in the middle of a frame, or never said hello."""


class Outbox:
    """Orders for the peer, decided by other tasks (`Holder.push`), sent by the connection's
    own task before it reads the next request; a push wakes that task from its read."""

    def __init__(self) -> None:
        self.orders: list[Order] = []
        self._wake: trio.CancelScope | None = None

    def push(self, order: Order) -> None:
        self.orders.append(order)
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

    async def send(self, frames: FrameStream) -> None:
        while self.orders:
            await frames.send(self.orders.pop(0))


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
    outbox = Outbox()
    holder = Holder(outbox.push)
    async with stream:
        with partial.counting(frames), trio.CancelScope() as frames.scope:
            try:
                if await _admit_peer(frames) and await _handshake(service, frames, limits):
                    await _serve_requests(service, frames, limits, holder, outbox)
            except (FrameTooLarge, Stalled) as exc:
                with trio.move_on_after(limits.frame_timeout):  # it may not be reading either
                    message = f"{exc}; closing the connection"
                    await _send_quietly(frames, Error("protocol", message))
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
        message = (
            f"the agent is serving its limit of {limits.max_connections} connections; "
            "retry later, or raise --max-connections"
        )
        with trio.move_on_after(limits.frame_timeout):
            await _send_quietly(FrameStream(stream), Error("busy", message))


async def _serve_requests(
    service: Service, frames: FrameStream, limits: Limits, holder: Holder, outbox: Outbox
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
    serving = False
    with trio.CancelScope() as timer:
        while True:
            if holder:
                timer.deadline = math.inf
            else:
                _push_back(timer, limits.idle_timeout)
            if outbox.orders:
                serving = True  # (an order half sent is a reply half sent)
                await outbox.send(frames)
                serving = False
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
            request = _decode(body)
            if in_pieces or isinstance(request, Start | Watch):
                timer.deadline = math.inf
            serving = True
            await _serve(service, frames, request, holder)
            serving = False
    if serving:  # a reply may be half sent: the connection is beyond saving
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
    if uid == os.getuid():
        return True
    log.warning("refused a connection from uid %d (the agent runs as uid %d)", uid, os.getuid())
    await _send_quietly(
        frames,
        Error("untrusted", f"uid {uid} may not use this agent; it serves uid {os.getuid()} only"),
    )
    return False


async def _handshake(service: Service, frames: FrameStream, limits: Limits) -> bool:
    with trio.move_on_after(limits.hello_timeout):
        body = await frames.receive()
        if body is None:
            return False
        return await _greet(service, frames, body)
    raise Stalled(f"no hello within {limits.hello_timeout:g}s of connecting")


async def _greet(service: Service, frames: FrameStream, body: bytes) -> bool:
    hello = _decode(body)
    if isinstance(hello, Error):  # it did not decode: say why
        await frames.send(hello)
        return False
    if not isinstance(hello, Hello):
        await frames.send(Error("protocol", "the first frame must be a hello stating the version"))
        return False
    if hello.version != PROTOCOL_VERSION:
        await frames.send(
            Error(
                "protocol",
                f"protocol version {hello.version} is not supported; this agent "
                f"({__version__}) speaks version {PROTOCOL_VERSION}: use a matching unitsync",
            )
        )
        return False
    graph, state = service.store.graph_id, service.store.location
    await frames.send(Welcome(PROTOCOL_VERSION, __version__, os.getpid(), graph, state))
    if hello.graph and hello.graph != graph:
        await frames.send(
            Error(
                "graph_changed",
                f"this agent serves graph {short(graph)} (state in {state}), not graph "
                f"{short(hello.graph)}, the one this client talked to before; nothing was done",
            )
        )
        return False
    return True


def _decode(body: bytes) -> object:
    """The request in a frame, or the error that answers a frame that is not one."""
    try:
        return decode_request(body)
    except ProtocolError as exc:
        return to_reply(exc)


async def _serve(service: Service, frames: FrameStream, request: object, holder: Holder) -> None:
    try:
        if not isinstance(request, Error):  # (an Error stands for a frame that did not decode)
            check_request(request)  # type: ignore[arg-type]
        reply = await _dispatch(service, frames, request, holder)
    except UnitsyncError as exc:
        reply = to_reply(exc)
    if isinstance(reply, StatusReply):
        await _send_units(frames, reply)
        return
    try:
        await frames.send(reply)
    except FrameTooLarge as exc:  # nothing was sent: the connection goes on
        await frames.send(Error("protocol", _too_large(exc.size)))


def _too_large(size: int) -> str:
    return (
        f"the reply would be {size} bytes, past the {MAX_FRAME}-byte frame limit, so it was "
        "not sent; every reply should fit (SPEC §12): please report this as a bug"
    )


async def _send_units(frames: FrameStream, whole: StatusReply | FullView) -> None:
    """A reply holding a list of units as one or more frames, each under the frame limit
    (every other field repeated in each; `more` on all but the last)."""
    parts = chunked(whole.units)
    for i, part in enumerate(parts):
        await frames.send(msgspec.structs.replace(whole, units=part, more=i < len(parts) - 1))


async def _dispatch(
    service: Service, frames: FrameStream, request: object, holder: Holder
) -> msgspec.Struct:
    match request:
        case Ping():
            return service.ping()
        case Want():
            return await service.want(request)
        case Start():
            return await _start(service, frames, request, holder)
        case Complete():
            return await service.complete(request, holder)
        case Fail():
            return await service.fail(request, holder)
        case SetReason():
            return await service.set_reason(request)
        case Reset():
            return await service.reset(request)
        case Forget():
            return await service.forget(request)
        case Status():
            return await service.status(request)
        case Watch():
            return await _watch(service, frames, request)
        case Hello():
            return Error("protocol", "hello may only be sent once, as the first frame")
        case Error():  # the frame did not decode
            return request
    return Error("protocol", f"unexpected request {type(request).__name__}")


async def _start(
    service: Service, frames: FrameStream, request: Start, holder: Holder
) -> msgspec.Struct:
    """Wait for the start in this task, reading the socket meanwhile to notice a hang-up."""

    async def progress(event: Waiting) -> None:
        if len(event.on) > MAX_DEPS:  # a unit from a journal written before the bound
            event = msgspec.structs.replace(event, on=event.on[:MAX_DEPS])
        await frames.send(event)

    async def idle() -> None:
        await _watch_hangup(frames)
        raise PeerGone("hung up while waiting to start")

    try:
        return await start_when_ready(service, request, progress, idle, holder)
    except trio.Cancelled:  # the agent is shutting down: say so, then go
        await _say_goodbye(frames)
        raise


async def _watch(service: Service, frames: FrameStream, request: Watch) -> NoReturn:
    """Turn the connection into a stream of events until the peer hangs up."""
    with service.watching(request.unit) as watcher:

        async def full_view() -> None:
            """What it shows is on disk (taken again if some of it was refused)."""
            views = await service.durable_views(watcher.wanted)
            await _send_units(frames, FullView(views, time.time()))

        async def stream() -> None:
            await full_view()
            while True:
                views = await watcher.next()
                if views is None:  # fell behind, or changes were refused: start from the present
                    await full_view()
                for view in views or ():
                    await frames.send(Changed(view, at=time.time()))

        await _until_hangup(frames, stream)
    raise PeerGone("stopped watching")


async def _until_hangup(frames: FrameStream, work: Callable[[], Awaitable[None]]) -> None:
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
                    await _say_goodbye(frames)
                raise
            nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        await _watch_hangup(frames)
        hung_up = True
        nursery.cancel_scope.cancel()


async def _say_goodbye(frames: FrameStream) -> None:
    if getattr(frames, "evicted", 0):  # not the agent stopping: it is told why it was closed
        return
    with trio.CancelScope(shield=True, deadline=trio.current_time() + GOODBYE_TIMEOUT):
        await _send_quietly(frames, SHUTTING_DOWN)


async def _watch_hangup(frames: FrameStream) -> None:
    """Return when the peer hangs up; keep what it pipelines (up to one frame) for later."""
    while len(frames.buffer) <= HEADER.size + MAX_FRAME:
        if not await frames.read_more():
            return
    await trio.sleep_forever()


async def _send_quietly(frames: FrameStream, message: msgspec.Struct) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await frames.send(message)
