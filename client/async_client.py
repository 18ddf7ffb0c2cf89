"""A trio client for trio programs (and for the agent's own in-process tests).

    async with await AsyncClient.connect(path) as client:
        await client.want("claude", "git")
        await client.start("claude")

Same requests, replies and errors as the blocking `Client`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import UnionType
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
    """One connection to the agent, used by one task at a time.

    A call cancelled half way (say by `trio.move_on_after` around `start`) leaves its reply
    still to come; the next call drops that connection and opens a new one, so no reply
    ever answers the wrong request. A connection the agent closed while it sat idle is
    reopened the same way.
    """

    def __init__(self, path: Path, stream: trio.SocketStream) -> None:
        self.path = path
        self.frames = FrameStream(stream)
        self.welcome = Welcome(PROTOCOL_VERSION, "", 0)
        self._in_step = True
        """False from sending a request until its last reply has been read."""
        self._used = False
        """This connection has carried a request: the agent may since have closed it as idle."""

    @classmethod
    async def connect(cls, socket_path: str | Path | None = None) -> AsyncClient:
        path = Path(socket_path) if socket_path else default_socket()
        client = cls(path, await _open(path))
        await client._hello()
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.frames.stream.aclose()

    async def _hello(self) -> None:
        await self.send(Hello(PROTOCOL_VERSION, f"trio/{__version__}"))
        welcome = await self.receive()
        if isinstance(welcome, Error):
            await self.aclose()
            raise error_from(welcome)
        assert isinstance(welcome, Welcome)
        self.welcome = welcome

    async def _reconnect(self) -> None:
        await self.aclose()
        self.frames = FrameStream(await _open(self.path))
        await self._hello()
        self._in_step, self._used = True, False

    # --- raw frames ------------------------------------------------------------------------

    async def send(self, request: Request) -> None:
        try:
            await self.frames.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise AgentGone(f"lost the connection to the agent: {exc}") from None

    async def receive(self) -> Reply:
        try:
            body = await self.frames.receive()
        except (PeerGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise AgentGone(f"lost the connection to the agent: {exc}") from None
        if body is None:
            raise AgentGone("the agent closed the connection")
        return reply_decoder.decode(body)

    # --- one exchange at a time ------------------------------------------------------------

    async def _request(self, request: Request) -> None:
        if not self._in_step:
            await self._reconnect()
        self._in_step, self._used = False, True
        await self.send(request)

    async def _reply(self, expect: type[R] | UnionType) -> R:
        """The next reply of the exchange; an error reply ends the exchange and is raised."""
        reply = await self.receive()
        if isinstance(reply, Error):
            self._in_step = True
            raise error_from(reply)
        if not isinstance(reply, expect):
            raise AgentGone(f"the agent sent an unexpected {type(reply).__name__}")
        return reply  # type: ignore[return-value]

    async def _call(self, request: Request, expect: type[R]) -> R:
        """One request and its reply (the first, if more follow: `more` continues it)."""
        reused = self._in_step and self._used
        try:
            await self._request(request)
            reply = await self._reply(expect)
        except AgentGone:
            if not reused or self.frames.buffer:
                raise
            # The agent closes idle connections between requests, never during one: a
            # reused connection found closed before any reply never carried this request.
            await self._reconnect()
            await self._request(request)
            reply = await self._reply(expect)
        self._in_step = not getattr(reply, "more", False)
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
            reply = await self._reply(StatusReply)
            units += reply.units
        self._in_step = True
        return units

    async def start(
        self,
        unit: str,
        *,
        rerun: bool = False,
        on_progress: Callable[[Waiting], Awaitable[None]] | None = None,
    ) -> Started:
        """Wait for the dependencies, then start; bound it with `trio.move_on_after`."""
        await self._request(Start(unit, rerun))
        while True:
            reply = await self._reply(Started | Waiting)
            if isinstance(reply, Started):
                self._in_step = True
                return reply
            if on_progress is not None:
                await on_progress(reply)

    async def watch(self, unit: str | None = None) -> AsyncIterator[Snapshot | Changed]:
        """Every change, as it is acknowledged; starts with a snapshot of the view.

        The connection stays a watch until the iteration ends; the next call opens another.
        """
        await self._request(Watch(unit))
        reassembly = Reassembly()
        while True:
            reply = await self._reply(Snapshot | Changed)
            if whole := reassembly.event(reply):
                yield whole


async def _open(path: Path) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise AgentUnavailable(f"no agent is listening at {path}: {exc.strerror}") from None
