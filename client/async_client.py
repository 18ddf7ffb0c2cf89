"""A trio client for trio programs (and for the agent's own in-process tests).

    async with await AsyncClient.connect(path) as client:
        await client.want("claude", "git")
        await client.start("claude")

Same requests, replies and errors as the blocking `Client`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from . import __version__
from .client import AgentGone, AgentUnavailable, error_from
from .paths import default_socket
from .protocol import (
    PROTOCOL_VERSION,
    Changed,
    Complete,
    Error,
    Fail,
    Hello,
    Ok,
    Ping,
    Pong,
    Reassembly,
    Reply,
    Request,
    Reset,
    Snapshot,
    Start,
    Started,
    Status,
    StatusReply,
    UnitView,
    Waiting,
    Want,
    Watch,
    Welcome,
    reply_decoder,
)
from .trio_stream import FrameStream, PeerGone

R = TypeVar("R")


class AsyncClient:
    def __init__(self, frames: FrameStream, welcome: Welcome) -> None:
        self.frames = frames
        self.welcome = welcome

    @classmethod
    async def connect(cls, socket_path: str | Path | None = None) -> AsyncClient:
        path = Path(socket_path) if socket_path else default_socket()
        try:
            stream = await trio.open_unix_socket(str(path))
        except OSError as exc:
            raise AgentUnavailable(f"no agent is listening at {path}: {exc.strerror}") from None
        frames = FrameStream(stream)
        await frames.send(Hello(PROTOCOL_VERSION, f"trio/{__version__}"))
        client = cls(frames, Welcome(PROTOCOL_VERSION, "", 0))
        welcome = await client.receive()
        if isinstance(welcome, Error):
            await stream.aclose()
            raise error_from(welcome)
        assert isinstance(welcome, Welcome)
        client.welcome = welcome
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.frames.stream.aclose()

    # --- raw frames ------------------------------------------------------------------------

    async def send(self, request: Request) -> None:
        try:
            await self.frames.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise AgentGone(f"lost the connection to the agent: {exc}") from None

    async def receive(self) -> Reply:
        try:
            body = await self.frames.receive()
        except (PeerGone, trio.BrokenResourceError) as exc:
            raise AgentGone(f"lost the connection to the agent: {exc}") from None
        if body is None:
            raise AgentGone("the agent closed the connection")
        return reply_decoder.decode(body)

    async def _call(self, request: Request, expect: type[R]) -> R:
        await self.send(request)
        reply = await self.receive()
        if isinstance(reply, Error):
            raise error_from(reply)
        if not isinstance(reply, expect):
            raise AgentGone(f"expected {expect.__name__}, got {type(reply).__name__}")
        return reply

    # --- requests --------------------------------------------------------------------------

    async def ping(self) -> Pong:
        return await self._call(Ping(), Pong)

    async def want(self, unit: str, *deps: str) -> Ok:
        return await self._call(Want(unit, list(deps)), Ok)

    async def complete(self, unit: str, *, force: bool = False) -> Ok:
        return await self._call(Complete(unit, force), Ok)

    async def fail(self, unit: str, reason: str = "") -> Ok:
        return await self._call(Fail(unit, reason), Ok)

    async def reset(self, unit: str | None = None) -> Ok:
        return await self._call(Reset(unit), Ok)

    async def status(self, unit: str | None = None) -> list[UnitView]:
        reply = await self._call(Status(unit), StatusReply)
        units = list(reply.units)
        while reply.more:
            reply = await self.receive()
            if not isinstance(reply, StatusReply):
                raise AgentGone(f"expected more units, got {type(reply).__name__}")
            units += reply.units
        return units

    async def start(
        self,
        unit: str,
        *,
        rerun: bool = False,
        on_progress: Callable[[Waiting], Awaitable[None]] | None = None,
    ) -> Started:
        """Wait for the dependencies, then start; bound it with `trio.move_on_after`."""
        await self.send(Start(unit, rerun))
        while True:
            reply = await self.receive()
            if isinstance(reply, Started):
                return reply
            if isinstance(reply, Error):
                raise error_from(reply)
            if isinstance(reply, Waiting) and on_progress is not None:
                await on_progress(reply)

    async def watch(self, unit: str | None = None) -> AsyncIterator[Snapshot | Changed]:
        """Every change, as it is acknowledged; starts with a snapshot of the view."""
        await self.send(Watch(unit))
        reassembly = Reassembly()
        while True:
            reply = await self.receive()
            if isinstance(reply, Error):
                raise error_from(reply)
            if isinstance(reply, Snapshot | Changed) and (whole := reassembly.event(reply)):
                yield whole
