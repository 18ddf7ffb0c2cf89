"""The blocking client: plain sockets, no trio. The CLI uses it; so can any Python script.

All protocol rules are the `Session`'s (`session.py`); this module only connects,
writes what the session gives it and feeds it what arrives. `start` and `watch`
survive an agent restart: they reconnect with backoff and carry on (a `start` within
its timeout, with the same token, so a start the old agent acknowledged is not repeated).

A call that finds no agent at the socket starts one and goes on (`autostart.py`, SPEC §7;
off with `UNITSYNC_AUTOSTART=0` or `autostart=False`). What had an agent and lost it (a
waiting `start`, a watch, a held run taking itself back and reporting) starts one too,
since there may be no next command to do it (SPEC §11): at once if that agent crashed,
its socket file left behind (`AgentCrashed`); after RESTART_GRACE if it stopped cleanly
(its file removed), so that a supervisor restarting it (systemd, a restart by hand) wins.
The rule is `_connect`'s, for every caller.

A client talks to one graph (SPEC §11): the session checks each welcome against the
graph of the first (`session.GraphMemory`); a reconnection that finds another raises
`GraphChanged` and nothing is carried out. A watch may follow the new graph instead
(`on_graph_changed`).

Resource rules: a `Client` holds at most one socket, opened on first use and closed
by `close()` (or the `with` block). A call that fails half way closes it, so the next
call starts on a fresh connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import msgspec

from unitsync.wire.bounds import check_request
from unitsync.wire.errors import (
    AgentCrashed,
    AgentGone,
    AgentUnavailable,
    DependencyFailed,
    GraphChanged,
    NoAgent,
    Refused,
    UnitsyncError,
    WaitTimeout,
)
from unitsync.wire.host.paths import default_socket
from unitsync.wire.host.peer import peer_of
from unitsync.wire.protocol import (
    Changed,
    Complete,
    Fail,
    Forget,
    FullView,
    Ok,
    Order,
    Owner,
    Ping,
    Pong,
    Reply,
    Request,
    Reset,
    SetReason,
    Start,
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

from .retry import (
    BACKLOG_FULL_DELAYS,
    DEFAULT_WAIT,
    Backoff,
    asked_again,
    new_token,
    start_request,
    timed_out,
)

if TYPE_CHECKING:
    from .autostart import Autostarted

__all__ = [
    "AgentGone",
    "AgentUnavailable",
    "Client",
    "DependencyFailed",
    "GraphChanged",
    "NoAgent",
    "Refused",
    "UnitsyncError",
    "WaitTimeout",
]

CONNECT_TIMEOUT = 5.0
"""A local agent accepts at once, even while it loads its journal (the backlog holds us):
a connect that takes longer means the agent is hung."""
REPLY_TIMEOUT = 30.0
"""Every reply but a `start`'s or a watch's is computed at once and written after one fsync:
thirty seconds without one means the agent (or its disk) is stuck, and a script should
hear so rather than hang."""
RECEIVE_SIZE = 65536
RESTART_GRACE = 2.0
"""How long a client that lost a cleanly stopped agent waits before starting one itself:
a supervisor restarts it sooner (systemd's default RestartSec is 100 ms, and the agent
serves about 0.3 s after it is started), and its agent must win, or it would find ours
holding the socket and the state dir. Two seconds more is all a stall costs otherwise."""

R = TypeVar("R")

ProgressCallback = Callable[[Waiting | UnitsyncError], None]
"""Told what a `start` waits for, and when the agent cannot be reached while waiting."""


class Connection:
    """One socket and its session: the blocking I/O loop around `Session`."""

    def __init__(
        self, path: Path, client: str = "python", memory: GraphMemory | None = None
    ) -> None:
        self.session = Session(path, client, memory)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(CONNECT_TIMEOUT)
        try:
            _connect_when_there_is_room(self.sock, path, time.monotonic() + CONNECT_TIMEOUT)
            check_trust(path, os.stat(path.parent), peer_of(self.sock), os.getuid())
        except OSError as exc:
            self.sock.close()
            raise unreachable(path, exc) from None
        except UnitsyncError:
            self.sock.close()
            raise

    def send(self, request: Request) -> None:
        data = self.session.send(request)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            # The agent may have turned us away and closed: its reason may be waiting.
            self._drain(exc)

    def receive(self, timeout: float | None = REPLY_TIMEOUT) -> Reply:
        """The next reply or event; TimeoutError when `timeout` seconds pass without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (event := self.session.next_event()) is NEED_DATA:
            self._read(deadline)
        return event  # type: ignore[return-value]

    def close(self) -> None:
        self.sock.close()

    def pushed(self) -> list[Order]:
        """Orders the agent pushed unasked, read without blocking (between exchanges);
        AgentGone if it closed the connection."""
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)  # (with a timeout, Python would wait for data first)
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise self.session.connection_lost(exc) from None
        else:
            self.session.receive_data(data)
        finally:
            self.sock.settimeout(timeout)
        return self.session.take_orders()

    def _read(self, deadline: float | None) -> None:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
        else:
            self.sock.settimeout(None)
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except TimeoutError:
            raise
        except OSError as exc:
            raise self.session.connection_lost(exc) from None
        self.session.receive_data(data)

    def _drain(self, exc: OSError) -> None:
        """After a failed send: raise the agent's own reason if it sent one, else the loss."""
        with contextlib.suppress(TimeoutError, OSError):
            self.receive(timeout=1.0)
        raise self.session.connection_lost(exc)


class Client:
    """Blocking client. Every method raises a `UnitsyncError` subclass on failure.

    `autostart`: start an agent when a call finds none; None (the default) means "unless
    UNITSYNC_AUTOSTART=0". `on_autostart` is told when this client started one.
    """

    def __init__(
        self,
        socket_path: str | Path | None = None,
        *,
        name: str = "python",
        autostart: bool | None = None,
        on_autostart: Callable[[Autostarted], None] | None = None,
    ) -> None:
        self.path = Path(socket_path) if socket_path else default_socket()
        self.name = name
        self.autostart = autostart
        self.on_autostart = on_autostart
        self._conn: Connection | None = None
        self.memory = GraphMemory()
        """The graph of this client's first welcome: every later one must name it."""
        self._missing_since: float | None = None
        """When the agent this client had was first found gone (cleanly stopped): the grace
        before starting one counts from here. None while an agent answers."""
        self.holding: dict[str, Start] = {}
        """Runs this client holds (`start(hold=True)`), by unit: what `take_back` resends.
        A client holding a run had an agent: its calls start one as a client that lost its
        agent does (`_connect`)."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def graph(self) -> str:
        """The id of the graph this client talks to (its first welcome's); "" before."""
        return self.memory.graph

    # --- one request, one reply ----------------------------------------------------------

    def ping(self) -> Pong:
        return self._call(Ping(), Pong)

    def want(self, unit: str, *deps: str, once: bool = False) -> Ok:
        """`unit` may start only when every dep is completed; `once` makes it one-time."""
        return self._call(Want(unit, list(deps), once), Ok)

    def complete(
        self,
        unit: str,
        *,
        force: bool = False,
        once: bool = False,
        hold: bool = False,
        token: str = "",
    ) -> Ok:
        """`hold`: from a `run` holding the unit, ready but still running (a service).
        `token`: the run this report is from (a held run's goes by itself); once a newer
        run superseded it, the report changes nothing."""
        return self._call(Complete(unit, force, once, hold, self._token(unit, token)), Ok)

    def fail(self, unit: str, reason: str = "", *, force: bool = False, token: str = "") -> Ok:
        """Mark `unit` failed; `force` declares a failure of a unit nobody has named yet.
        `token`: as for `complete`."""
        return self._call(Fail(unit, reason, force, self._token(unit, token)), Ok)

    def forget(self, unit: str) -> Ok:
        """Remove a unit no other unit wants, with its history."""
        return self._call(Forget(unit), Ok)

    def set_reason(self, unit: str, reason: str, *, token: str = "") -> Ok:
        """Say what a started unit is doing, without changing its state (`token`: as for
        `complete`)."""
        return self._call(SetReason(unit, reason, self._token(unit, token)), Ok)

    def reset(self, unit: str | None = None, *, force: bool = False, failed: bool = False) -> Ok:
        """Back to pending; `None` resets every unit (`failed`: every failed one). A unit
        whose run's owner still runs is refused (`None`: left alone, named in `left_alone`),
        unless `force`."""
        return self._call(Reset(unit, force, failed), Ok)

    def _token(self, unit: str, token: str) -> str:
        """The token a report goes with: the one given, or that of the run held here."""
        held = self.holding.get(unit)
        return token or (held.token if held is not None else "")

    def status(self, unit: str | None = None) -> list[UnitView]:
        return self.state(unit).units

    def state(self, unit: str | None = None) -> StatusReply:
        """Like `status`, with the current boot (`boot`, `boot_since`) and the time (`at`)."""
        return self._call(Status(unit), StatusReply)

    def _call(self, request: Request, expect: type[R]) -> R:
        check_request(request)  # before connecting: a script hears of it even with no agent
        lost = bool(self.holding)  # a held run's agent was there: if it is not, it was lost
        conn = self._connection(lost=lost)
        try:
            try:
                conn.send(request)
                reply = conn.receive()
            except AgentGone:
                if not conn.session.retry_is_safe:
                    raise
                # A reused connection the agent closed as idle never carried this request.
                self.close()
                conn = self._connection(lost=lost)
                conn.send(request)
                reply = conn.receive()
        except TimeoutError:
            self.close()
            raise AgentUnavailable(
                f"the agent at {self.path} did not answer within {REPLY_TIMEOUT:.0f}s"
            ) from None
        except UnitsyncError:
            if conn.session.state is not State.IDLE:
                self.close()
            raise
        assert isinstance(reply, expect)  # the session checked the reply's type
        return reply

    def _connection(self, *, lost: bool, deadline: float | None = None) -> Connection:
        """The open connection if it is between exchanges, else a new one (`_connect`)."""
        if self._conn is not None and self._conn.session.state not in (State.NEW, State.IDLE):
            self.close()  # a call given up half way: its reply must not answer the next
        if self._conn is None:
            self._conn = self._connect(lost=lost, deadline=deadline)
        return self._conn

    def _connect(self, *, lost: bool, deadline: float | None = None) -> Connection:
        """A new connection; if none listens, to an agent started for it (SPEC §7, §11).

        `lost`: the caller had an agent and lost it. Where that agent crashed
        (`AgentCrashed`) it starts one at once; where it stopped cleanly, only once
        RESTART_GRACE has passed without one coming back (the caller retries meanwhile).
        `deadline` (a `time.monotonic()`) bounds the wait for a live agent that holds the
        socket or the state dir (autostart's LIVE_AGENT_WAIT when None).
        """
        try:
            conn = Connection(self.path, self.name, self.memory)
        except NoAgent as exc:
            if self.autostart is False:
                raise
            from .autostart import LIVE_AGENT_WAIT, enabled, ensure_agent  # the rare path

            if self.autostart is None and not enabled():
                raise
            because = ""
            if lost and not isinstance(exc, AgentCrashed):
                now = time.monotonic()
                if self._missing_since is None:
                    self._missing_since = now
                if now - self._missing_since < RESTART_GRACE:
                    raise
                because = f"the agent stopped and none came back within {RESTART_GRACE:g}s"
            elif lost:
                because = "the agent crashed"
            patience = LIVE_AGENT_WAIT if deadline is None else _remaining(deadline) or 0.0
            started = ensure_agent(self.path, patience)
            if started is not None and self.on_autostart is not None:
                self.on_autostart(dataclasses.replace(started, because=because))
            conn = Connection(self.path, self.name, self.memory)
        self._missing_since = None
        return conn

    # --- start: wait, surviving agent restarts ---------------------------------------------

    def start(
        self,
        unit: str,
        *,
        rerun: bool = False,
        timeout: float | None = DEFAULT_WAIT,
        on_progress: ProgressCallback | None = None,
        tick: float | None = None,
        once: bool = False,
        owner: Owner | None = None,
        hold: bool = False,
        token: str = "",
    ) -> Started:
        """Wait until every dependency of `unit` is completed, then mark it started.

        `once` makes it a one-time unit (`AlreadyDone` if it is one and completed); `owner`
        is the process the run belongs to; `hold` keeps this connection holding the run
        (what `run` does) until `complete` or `fail` reports its end (`take_back` after an
        agent restart).

        `timeout=None` waits forever. With `tick`, `on_progress` is called again with
        the latest news every `tick` seconds (for a live display). If the agent goes away
        while we wait (restart, crash, upgrade), reconnect with backoff and keep waiting;
        the request carries a token so a start the old agent acknowledged but could not
        answer is not repeated. If it crashed, start another (as `_connect` says).
        `token` names the run (default: a fresh one), for its reports (`complete`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        request = start_request(unit, rerun, once=once, owner=owner, hold=hold, token=token)
        check_request(request)
        began = time.monotonic()
        backoff = Backoff()
        connected_once = False
        while True:
            try:
                conn = self._connection(lost=connected_once, deadline=deadline)
                connected_once = True
                again = asked_again(request, began)
                started = self._wait_started(conn, again, deadline, on_progress, tick)
                if hold:
                    self.holding[unit] = request
                return started
            except AgentUnavailable as exc:
                self.close()
                if not connected_once or not exc.passing:
                    raise
                if on_progress:
                    on_progress(exc)
                time.sleep(backoff.next_delay(_remaining(deadline), unit, timeout))
            except TimeoutError:
                self.close()
                raise timed_out(unit, timeout) from None

    def take_back(self, unit: str) -> Started:
        """After the agent restarted: hold `unit`'s run again, on a new connection (the same
        start, same token). Refused if the agent gave the run up meanwhile."""
        return self._call(msgspec.structs.replace(self.holding[unit], again=True), Started)

    def take_orders(self) -> list[Order]:
        """What the agent pushed on the open connection (a held run is told when a newer run
        supersedes it), read without blocking; AgentGone if the agent closed it."""
        if self._conn is None:
            return []
        try:
            return self._conn.pushed()
        except AgentGone:
            self.close()
            raise

    def fileno(self) -> int | None:
        """The open connection's descriptor (for an event loop to watch), if there is one."""
        return self._conn.sock.fileno() if self._conn is not None else None

    def _wait_started(
        self,
        conn: Connection,
        request: Request,
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
            if isinstance(reply, Started):
                return reply
            assert isinstance(reply, Waiting)
            latest = reply
            if on_progress:
                on_progress(reply)

    # --- higher level ------------------------------------------------------------------------

    @contextlib.contextmanager
    def unit(
        self,
        name: str,
        *,
        wants: list[str] | tuple[str, ...] = (),
        timeout: float | None = DEFAULT_WAIT,
    ) -> Iterator[Started]:
        """Run a block as unit `name`: declare `wants`, wait and start, then complete it.

        If the block raises, the unit is marked failed with the exception as reason
        (and the exception goes on), so whatever waits on it stops waiting.
        """
        if wants:
            self.want(name, *wants)
        token = new_token()  # its reports count only while it is the unit's current run
        started = self.start(name, timeout=timeout, token=token)
        try:
            yield started
        except BaseException as exc:
            self.fail(name, reason=failure_reason(exc), token=token)
            raise
        self.complete(name, token=token)

    def watch(
        self,
        unit: str | None = None,
        *,
        on_unreachable: Callable[[UnitsyncError], None] | None = None,
        on_graph_changed: Callable[[GraphChanged], None] | None = None,
    ) -> Iterator[FullView | Changed]:
        """Every acknowledged change, starting with a full view; reconnects if the agent restarts.

        A new full view follows each reconnection (and any time this client fell behind).
        If a reconnection finds another graph, `on_graph_changed` is told and the watch
        goes on with that graph; without it, GraphChanged is raised.
        """
        backoff = Backoff()
        connected_once = False
        while True:
            try:
                with contextlib.closing(self._connect(lost=connected_once)) as conn:
                    conn.send(Watch(unit))
                    connected_once = True
                    while True:
                        event = conn.receive(timeout=None)
                        assert isinstance(event, FullView | Changed)
                        backoff = Backoff()
                        yield event
            except GraphChanged as exc:
                if on_graph_changed is None:
                    raise
                on_graph_changed(exc)
                self.memory.adopt(exc)
            except AgentUnavailable as exc:
                if not connected_once or not exc.passing:
                    raise
                if on_unreachable:
                    on_unreachable(exc)
                time.sleep(backoff.next_delay(None, unit or "", None))


def _connect_when_there_is_room(sock: socket.socket, path: Path, deadline: float) -> None:
    """Connect, waiting while the agent's listen backlog is full (EAGAIN) until `deadline`."""
    delay, longest = BACKLOG_FULL_DELAYS
    while True:
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, longest)


def _shortest(*timeouts: float | None) -> float | None:
    return min((t for t in timeouts if t is not None), default=None)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)
