"""A blocking client for the unitsync agent: plain sockets, no trio.

It is what the CLI uses, and what Python scripts can use directly. `start`
survives an agent restart: it reconnects with backoff and keeps waiting
within its timeout.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from . import __version__
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
    encode,
    reply_decoder,
    take_frame,
)

CONNECT_TIMEOUT = 5.0
"""How long a connection attempt or a plain request may take before we call the agent hung."""
REPLY_TIMEOUT = 30.0

R = TypeVar("R")


class UnitsyncError(Exception):
    """Base of every error the client raises; `exit_code` is the CLI's exit status (SPEC §2)."""

    exit_code = 1


class AgentUnavailable(UnitsyncError):
    exit_code = 3


class Refused(UnitsyncError):
    """The agent refused the request; `code` is the protocol's error code."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.code = error.code
        self.unit = error.unit
        self.dependency = error.dependency


class DependencyFailed(Refused):
    exit_code = 4


class WaitTimeout(UnitsyncError):
    exit_code = 5


class AgentGone(AgentUnavailable):
    """The connection broke or the agent is shutting down; a waiting `start` retries."""


def error_from(reply: Error) -> UnitsyncError:
    if reply.code == "dependency_failed":
        return DependencyFailed(reply)
    if reply.code == "shutting_down":
        return AgentGone(reply.message)
    if reply.code == "busy":
        return AgentUnavailable(reply.message)
    return Refused(reply)


class Connection:
    """One socket to the agent; the hello is sent together with the first request."""

    def __init__(self, path: Path, client: str = "python") -> None:
        self.path = path
        self.client = client
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(CONNECT_TIMEOUT)
        self.buffer = bytearray()
        self.welcome: Welcome | None = None
        try:
            self.sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise AgentUnavailable(
                f"no agent is listening at {path}; start one with `unitsync agent` "
                "(or point --socket / UNITSYNC_SOCKET at the right socket)"
            ) from None
        except OSError as exc:
            self.sock.close()
            raise AgentUnavailable(f"cannot reach the agent at {path}: {exc.strerror}") from None
        self._pending_hello = encode(Hello(PROTOCOL_VERSION, f"{client}/{__version__}"))

    def send(self, request: Request) -> None:
        frame = self._pending_hello + encode(request)
        self._pending_hello = b""
        try:
            self.sock.sendall(frame)
        except OSError as exc:
            raise self._why_closed(exc) from None

    def _why_closed(self, exc: OSError) -> UnitsyncError:
        """The agent may have turned us away and closed: its reason is waiting to be read."""
        try:
            reply = self._read(timeout=1.0)
        except (TimeoutError, UnitsyncError, OSError):
            return AgentGone(f"lost the connection to the agent at {self.path}: {exc}")
        if isinstance(reply, Error):
            return error_from(reply)
        return AgentGone(f"lost the connection to the agent at {self.path}: {exc}")

    def receive(self, timeout: float | None = REPLY_TIMEOUT) -> Reply:
        """Next reply or event; raises TimeoutError when `timeout` seconds pass without one."""
        while self.welcome is None:
            reply = self._read(timeout)
            if isinstance(reply, Error):
                raise error_from(reply)
            if not isinstance(reply, Welcome):
                raise AgentGone(f"the agent answered {type(reply).__name__} before its welcome")
            self.welcome = reply
        return self._read(timeout)

    def _read(self, timeout: float | None) -> Reply:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (body := take_frame(self.buffer)) is None:
            self._read_more(deadline)
        try:
            return reply_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise AgentGone(f"the agent sent a frame this client cannot read: {exc}") from None

    def _read_more(self, deadline: float | None) -> None:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
        else:
            self.sock.settimeout(None)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError as exc:
            raise AgentGone(f"lost the connection to the agent at {self.path}: {exc}") from None
        if not chunk:
            raise AgentGone(f"the agent at {self.path} closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


ProgressCallback = Callable[[Waiting | UnitsyncError], None]
"""Told what a `start` waits for, and when the agent cannot be reached while waiting."""


class Client:
    """Blocking client. Every method raises a `UnitsyncError` subclass on failure."""

    def __init__(self, socket_path: str | Path | None = None, *, name: str = "python") -> None:
        self.path = Path(socket_path) if socket_path else default_socket()
        self.name = name
        self._conn: Connection | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- one request, one reply ----------------------------------------------------------

    def ping(self) -> Pong:
        return self._call(Ping(), Pong)

    def want(self, unit: str, *deps: str) -> Ok:
        return self._call(Want(unit, list(deps)), Ok)

    def complete(self, unit: str, *, force: bool = False) -> Ok:
        return self._call(Complete(unit, force), Ok)

    def fail(self, unit: str, reason: str = "") -> Ok:
        return self._call(Fail(unit, reason), Ok)

    def reset(self, unit: str | None = None) -> Ok:
        """Back to pending; `None` resets every unit."""
        return self._call(Reset(unit), Ok)

    def status(self, unit: str | None = None) -> list[UnitView]:
        reply = self._call(Status(unit), StatusReply)
        units = list(reply.units)
        while reply.more:
            reply = self._next(StatusReply)
            units += reply.units
        return units

    def _next(self, expect: type[R]) -> R:
        """A further frame of a reply that came in several."""
        assert self._conn is not None
        try:
            reply = self._conn.receive()
        except (TimeoutError, AgentGone):
            self.close()
            raise AgentGone(f"the agent at {self.path} stopped in the middle of a reply") from None
        if not isinstance(reply, expect):
            self.close()
            raise AgentGone(f"expected more {expect.__name__}, got {type(reply).__name__}")
        return reply

    def _call(self, request: Request, expect: type[R]) -> R:
        reused = self._conn is not None
        conn = self._connection()
        try:
            try:
                conn.send(request)
                reply = conn.receive()
            except AgentGone:
                if not reused or conn.buffer:
                    raise
                # The agent closes idle connections between requests, never during one:
                # a reused connection found closed never carried this request. Once more.
                self.close()
                conn = self._connection()
                conn.send(request)
                reply = conn.receive()
        except TimeoutError:
            self.close()
            raise AgentUnavailable(
                f"the agent at {self.path} did not answer within {REPLY_TIMEOUT:.0f}s"
            ) from None
        except AgentGone:
            self.close()
            raise
        if isinstance(reply, Error):
            raise error_from(reply)
        if not isinstance(reply, expect):
            self.close()
            got = type(reply).__name__
            raise AgentGone(f"expected {expect.__name__} from the agent, got {got}")
        return reply

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = Connection(self.path, self.name)
        return self._conn

    # --- start: wait, surviving agent restarts ---------------------------------------------

    def start(
        self,
        unit: str,
        *,
        rerun: bool = False,
        timeout: float | None = 300.0,
        on_progress: ProgressCallback | None = None,
        tick: float | None = None,
    ) -> Started:
        """Wait until every dependency of `unit` is completed, then mark it started.

        `timeout=None` waits forever. With `tick`, `on_progress` is called again with
        the latest news every `tick` seconds (for a live display). If the agent goes away
        while we wait (restart, crash, upgrade), reconnect with backoff and keep waiting;
        the request carries a token so a start the old agent acknowledged but could not
        answer is not repeated.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        token = os.urandom(8).hex()
        backoff = _Backoff()
        connected_once = False
        while True:
            try:
                conn = self._connection()
                connected_once = True
                request = Start(unit, rerun, token)
                return self._wait_started(conn, request, deadline, on_progress, tick)
            except AgentUnavailable as exc:
                self.close()
                if not connected_once:
                    raise
                if on_progress:
                    on_progress(exc)
                backoff.sleep(_remaining(deadline), unit, timeout)
            except TimeoutError:
                self.close()
                raise WaitTimeout(
                    f"timed out after {timeout:g}s waiting to start {unit!r}"
                ) from None

    def _wait_started(
        self,
        conn: Connection,
        request: Start,
        deadline: float | None,
        on_progress: ProgressCallback | None,
        tick: float | None,
    ) -> Started:
        conn.send(request)
        latest: Waiting | None = None
        while True:
            remaining = _remaining(deadline)
            try:
                reply = conn.receive(_shortest(remaining, tick))
            except TimeoutError:
                if remaining is not None and remaining <= (tick or 0):
                    raise
                if on_progress and latest:
                    on_progress(latest)
                continue
            if isinstance(reply, Waiting):
                latest = reply
                if on_progress:
                    on_progress(reply)
            elif isinstance(reply, Started):
                return reply
            elif isinstance(reply, Error):
                raise error_from(reply)
            else:
                raise AgentGone(f"unexpected {type(reply).__name__} while waiting to start")

    # --- higher level ------------------------------------------------------------------------

    @contextlib.contextmanager
    def unit(
        self, name: str, *, wants: list[str] | tuple[str, ...] = (), timeout: float | None = 300.0
    ) -> Iterator[Started]:
        """Run a block as unit `name`: declare `wants`, wait and start, then complete it.

        If the block raises, the unit is marked failed with the exception as reason
        (and the exception goes on), so whatever waits on it stops waiting.
        """
        if wants:
            self.want(name, *wants)
        started = self.start(name, timeout=timeout)
        try:
            yield started
        except BaseException as exc:
            self.fail(
                name, reason=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            )
            raise
        self.complete(name)

    def watch(
        self,
        unit: str | None = None,
        *,
        on_unreachable: Callable[[UnitsyncError], None] | None = None,
    ) -> Iterator[Snapshot | Changed]:
        """Every acknowledged change, starting with a snapshot; reconnects if the agent restarts.

        A new snapshot follows each reconnection (and any time this client fell behind).
        """
        backoff = _Backoff()
        connected_once = False
        while True:
            try:
                with contextlib.closing(Connection(self.path, self.name)) as conn:
                    conn.send(Watch(unit))
                    connected_once = True
                    reassembly = Reassembly()
                    while True:
                        event = conn.receive(timeout=None)
                        if isinstance(event, Error):
                            raise error_from(event)
                        if isinstance(event, Snapshot | Changed):
                            backoff = _Backoff()
                            if whole := reassembly.event(event):
                                yield whole
            except AgentUnavailable as exc:
                if not connected_once:
                    raise
                if on_unreachable:
                    on_unreachable(exc)
                backoff.sleep(None, unit or "", None)


class _Backoff:
    """Exponential backoff for reconnects: 50 ms doubling up to 1 s."""

    def __init__(self) -> None:
        self.delay = 0.05

    def sleep(self, remaining: float | None, unit: str, timeout: float | None) -> None:
        if remaining is not None and remaining <= 0:
            raise WaitTimeout(
                f"timed out after {timeout:g}s waiting to start {unit!r} "
                "(the agent was unreachable)"
            )
        time.sleep(self.delay if remaining is None else min(self.delay, remaining))
        self.delay = min(self.delay * 2, 1.0)


def _shortest(*timeouts: float | None) -> float | None:
    return min((t for t in timeouts if t is not None), default=None)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)
