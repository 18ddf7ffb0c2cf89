"""The trio client, for trio programs (and for the agent's own in-process tests).

    async with await AsyncClient.connect(path) as client:
        await client.want("claude", "git")
        with trio.move_on_after(300):
            await client.start("claude")

All protocol rules are the `Session`'s (`session.py`), shared with the blocking
`Client`: the same requests, replies, errors and messages. This module only moves
bytes. Bound a wait with trio's own timeouts: a call cancelled half way leaves its
session mid-exchange, and the next call opens a fresh connection, so no reply ever
answers the wrong request. A waiting `start` and a watch reconnect with backoff if
the agent restarts, as in the blocking client.

Unlike the blocking client, it never starts an agent when it finds none (`NoAgent`), not
even after a crash (`AgentCrashed`):
a trio program runs the agent in a nursery of its own (`unitsync.agent.serve.server.run_agent`)
or uses one that something supervises, and an agent spawned from inside an event loop
would outlive the nursery that should own it.

A client talks to one graph, as the blocking one does (SPEC §11): a reconnection that finds
another raises `GraphChanged` and carries out nothing (a watch may follow it instead).

Resource rules: an `AsyncClient` holds at most one socket, closed by `aclose()` (or the
`async with` block); one task uses it at a time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from unitsync.wire.errors import AgentGone, AgentUnavailable, GraphChanged, UnitsyncError
from unitsync.wire.host.paths import default_socket
from unitsync.wire.host.peer import peer_of
from unitsync.wire.protocol import (
    Changed,
    Complete,
    Fail,
    Forget,
    FullView,
    Ok,
    Owner,
    Ping,
    Pong,
    Reply,
    Request,
    Reset,
    SetReason,
    Started,
    Status,
    StatusReply,
    UnitView,
    Waiting,
    Want,
    Watch,
)
from unitsync.wire.session import (
    NEED_DATA,
    GraphMemory,
    Session,
    State,
    check_trust,
    failure_reason,
    unreachable,
)

from .retry import BACKLOG_FULL_DELAYS, Backoff, asked_again, new_token, start_request

RECEIVE_SIZE = 65536

R = TypeVar("R")


class AsyncClient:
    """A connection to the agent, reopened as needed; used by one task at a time."""

    def __init__(self, path: Path, *, name: str = "trio") -> None:
        self.path = path
        self.name = name
        self._stream: trio.SocketStream | None = None
        self.memory = GraphMemory()
        """The graph of this client's first welcome: every later one must name it."""
        self._session = Session(path, name, self.memory)

    @classmethod
    async def connect(cls, socket_path: str | Path | None = None) -> AsyncClient:
        """A client whose first connection is open (and trusted): errors surface here."""
        client = cls(Path(socket_path) if socket_path else default_socket())
        await client._open()
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()

    @property
    def graph(self) -> str:
        """The id of the graph this client talks to (its first welcome's); "" before."""
        return self.memory.graph

    # --- bytes in, bytes out ---------------------------------------------------------------

    async def _open(self) -> None:
        await self.aclose()
        try:
            stream = await _open_stream(self.path)
        except OSError as exc:
            raise unreachable(self.path, exc) from None
        try:
            folder = os.stat(self.path.parent)
            check_trust(self.path, folder, peer_of(stream.socket), os.getuid())
        except BaseException:
            await stream.aclose()
            raise
        self._stream, self._session = stream, Session(self.path, self.name, self.memory)

    async def _send(self, request: Request) -> None:
        """Send on the open connection if it is between exchanges, else on a new one."""
        if self._stream is None or self._session.state not in (State.NEW, State.IDLE):
            await self._open()
        assert self._stream is not None
        data = self._session.send(request)
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The agent may have turned us away and closed: its reason may be waiting.
            with trio.move_on_after(1.0):
                await self._receive()
            raise self._session.connection_lost(exc) from None

    async def _receive(self) -> Reply:
        assert self._stream is not None
        while (event := self._session.next_event()) is NEED_DATA:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._session.connection_lost(exc) from None
            self._session.receive_data(data)
        return event  # type: ignore[return-value]

    async def _call(self, request: Request, expect: type[R]) -> R:
        """One request, its whole reply; once more on a new connection if that is safe."""
        try:
            await self._send(request)
            reply = await self._receive()
        except AgentGone:
            if not self._session.retry_is_safe:
                raise
            # A reused connection the agent closed as idle never carried this request.
            await self._open()
            await self._send(request)
            reply = await self._receive()
        assert isinstance(reply, expect)  # the session checked the reply's type
        return reply

    # --- requests --------------------------------------------------------------------------

    async def ping(self) -> Pong:
        return await self._call(Ping(), Pong)

    async def want(self, unit: str, *deps: str, once: bool = False) -> Ok:
        return await self._call(Want(unit, list(deps), once), Ok)

    async def complete(
        self, unit: str, *, force: bool = False, once: bool = False, token: str = ""
    ) -> Ok:
        """`token`: the run this report is from (its `start`'s); once a newer run
        superseded it, the report changes nothing."""
        return await self._call(Complete(unit, force, once, token=token), Ok)

    async def fail(
        self, unit: str, reason: str = "", *, force: bool = False, token: str = ""
    ) -> Ok:
        """Mark `unit` failed; `force` declares a failure of a unit nobody has named yet.
        `token`: as for `complete`."""
        return await self._call(Fail(unit, reason, force, token), Ok)

    async def forget(self, unit: str) -> Ok:
        """Remove a unit no other unit wants, with its history."""
        return await self._call(Forget(unit), Ok)

    async def set_reason(self, unit: str, reason: str, *, token: str = "") -> Ok:
        """Say what a started unit is doing, without changing its state (`token`: as for
        `complete`)."""
        return await self._call(SetReason(unit, reason, token), Ok)

    async def reset(
        self, unit: str | None = None, *, force: bool = False, failed: bool = False
    ) -> Ok:
        """Back to pending; `None` resets every unit (`failed`: every failed one). A unit
        whose run's owner still runs is refused (`None`: left alone, named in `left_alone`),
        unless `force`."""
        return await self._call(Reset(unit, force, failed), Ok)

    async def status(self, unit: str | None = None) -> list[UnitView]:
        return (await self.state(unit)).units

    async def state(self, unit: str | None = None) -> StatusReply:
        """Like `status`, with the current boot (`boot`, `boot_since`) and the time (`at`)."""
        return await self._call(Status(unit), StatusReply)

    async def start(
        self,
        unit: str,
        *,
        rerun: bool = False,
        on_progress: Callable[[Waiting | UnitsyncError], Awaitable[None]] | None = None,
        once: bool = False,
        owner: Owner | None = None,
        token: str = "",
    ) -> Started:
        """Wait for the dependencies, then start; bound it with `trio.move_on_after`.

        If the agent goes away meanwhile, reconnect with backoff and ask again with the
        same token (`on_progress` hears of it), as the blocking client does. `token` names
        the run (default: a fresh one), for its reports (`complete`).
        """
        request = start_request(unit, rerun, once=once, owner=owner, token=token)
        began = time.monotonic()
        backoff = Backoff()
        connected_once = False
        while True:
            try:
                await self._send(asked_again(request, began))
                connected_once = True
                while isinstance(reply := await self._receive(), Waiting):
                    if on_progress is not None:
                        await on_progress(reply)
                assert isinstance(reply, Started)
                return reply
            except AgentUnavailable as exc:
                await self.aclose()
                if not connected_once or not exc.passing:
                    raise
                if on_progress is not None:
                    await on_progress(exc)
                await trio.sleep(backoff.next_delay(None, unit, None))

    @contextlib.asynccontextmanager
    async def unit(
        self, name: str, *, wants: list[str] | tuple[str, ...] = ()
    ) -> AsyncIterator[Started]:
        """Run a block as unit `name`: declare `wants`, wait and start, then complete it;
        if the block raises (a cancellation too), fail it with the exception as reason."""
        if wants:
            await self.want(name, *wants)
        token = new_token()  # its reports count only while it is the unit's current run
        started = await self.start(name, token=token)
        try:
            yield started
        except BaseException as exc:
            with trio.CancelScope(shield=True):  # so a cancelled block still reports its end
                await self.fail(name, reason=failure_reason(exc), token=token)
            raise
        await self.complete(name, token=token)

    async def watch(
        self,
        unit: str | None = None,
        *,
        on_graph_changed: Callable[[GraphChanged], Awaitable[None]] | None = None,
    ) -> AsyncIterator[FullView | Changed]:
        """Every change, as it is acknowledged; starts with a full view of what is watched.

        Reconnects if the agent restarts (a new full view follows). The connection stays a
        watch until the iteration ends; the next call opens another. If a reconnection
        finds another graph, `on_graph_changed` is told and the watch goes on with that
        graph; without it, GraphChanged is raised.
        """
        backoff = Backoff()
        connected_once = False
        while True:
            try:
                await self._send(Watch(unit))
                connected_once = True
                while True:
                    event = await self._receive()
                    assert isinstance(event, FullView | Changed)
                    backoff = Backoff()
                    yield event
            except GraphChanged as exc:
                await self.aclose()
                if on_graph_changed is None:
                    raise
                await on_graph_changed(exc)
                self.memory.adopt(exc)
            except AgentUnavailable as exc:
                await self.aclose()
                if not connected_once or not exc.passing:
                    raise
                await trio.sleep(backoff.next_delay(None, unit or "", None))


async def _open_stream(path: Path) -> trio.SocketStream:
    """A stream connected to `path`. Not `trio.open_unix_socket`: it takes a Unix socket's
    EAGAIN (the listen backlog is full) for "in progress" and hands back a socket that is
    not connected; this waits for room instead, as a blocking connect does."""
    delay, longest = BACKLOG_FULL_DELAYS
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            await trio.sleep(delay)
            delay = min(delay * 2, longest)
            continue
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
