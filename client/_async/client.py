"""The client: the agent's requests over one connection, reopened as needed.

Written once: `client/_async/client.py` is the trio client, and `client/_sync/client.py`,
the blocking client, is generated from it by token substitution (`python -m
unitsync.client.unasync`; CI checks that the two agree). Both offer the same calls, keep
the same rules and raise the same errors. The protocol's rules are the `Session`'s
(`unitsync.wire.session`): this module connects, writes what the session gives it and
feeds it what arrives, through its backend (`client/_backends/`), which also holds what
differs between the two:

- bounds: the blocking client's waits have their own (CONNECT_TIMEOUT, REPLY_TIMEOUT, and
  `start` waits START_WAIT, five minutes, unless told); the trio client's have none unless
  told: a trio program bounds a call with trio's cancellation, and a call cancelled half
  way leaves its session mid-exchange, so the next call opens a fresh connection and no
  reply ever answers the wrong request;
- callbacks: called by the blocking client, awaited by the trio client;
- starting an agent (SPEC §7): a blocking client's call that finds none starts one and
  goes on (off with UNITSYNC_AUTOSTART=0 or `autostart=False`); the trio client never
  does (`_backends/trio.py` says why).

`start` and `watch` survive an agent restart: they reconnect with backoff and carry on (a
`start` within its timeout, with the same token, so a start the old agent acknowledged is
not repeated). Where agents are started, what had an agent and lost it (a waiting `start`,
a watch, a held run taking itself back and reporting) starts one too, since there may be
no next command to do it (SPEC §11): at once if that agent crashed, its socket file left
behind (`AgentCrashed`); after RESTART_GRACE if it stopped cleanly (its file removed), so
that a supervisor restarting it (systemd, a restart by hand) wins. The rule is
`_connect`'s, for every caller.

A client talks to one graph (SPEC §11): the session checks each welcome against the graph
of the first (`GraphMemory`); a reconnection that finds another raises `GraphChanged` and
nothing is carried out. A watch may follow the new graph instead (`on_graph_changed`).

A run held by `start(hold=True)` (what `unitsync sync run` does) stays on the client's
connection: `fileno` is that connection's descriptor, for an event loop to watch;
`take_orders` reads what the agent pushed on it; `take_back` holds the run again after an
agent restart; its reports (`complete`, `fail`, `set_reason`) carry its token by themselves.

Resource rules: a client holds at most one socket for its calls, opened on first use and
closed by `aclose()` (or the `async with` block); a watch holds one of its own until its
iteration ends. A call that fails half way closes its socket, so the next call starts on a
fresh connection. One task (or thread) uses a client at a time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec

from unitsync.wire.bounds import check_request
from unitsync.wire.errors import (
    AgentCrashed,
    AgentGone,
    AgentUnavailable,
    GraphChanged,
    NoAgent,
    Refused,
    UnitsyncError,
)
from unitsync.wire.host.paths import default_socket, folder_of
from unitsync.wire.host.peer import peer_of
from unitsync.wire.protocol import (
    Changed,
    Complete,
    Condition,
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
    Restart,
    Restarting,
    SetReason,
    Start,
    Started,
    Status,
    StatusReply,
    Stop,
    Stopped,
    UnitView,
    Waiting,
    Want,
    Watch,
    Welcome,
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

from .._backends.trio import (
    CLIENT_NAME,
    CONNECT_TIMEOUT,
    REPLY_TIMEOUT,
    START_WAIT,
    Callback,
    TrioBackend,
    TrioStream,
)
from ..retry import (
    BACKLOG_FULL_DELAYS,
    RESTART_GRACE,
    Backoff,
    WaitClock,
    asked_again,
    new_token,
    start_request,
    timed_out,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator  # (apart: so its blocking name sorts alike)

    from unitsync.wire.runlog.reader import LogLine, LogNote

    from ..autostart import Autostarted

RECEIVE_SIZE = 65536
"""One read takes any ordinary reply whole; a bigger one comes over several reads."""
DRAIN_WAIT = 1.0
"""After a failed send, how long to look for the reason an agent that turned us away wrote
before closing: it is already on its way, or it never comes."""

STOP_WAIT = 10.0
"""How long `stop` and `restart` wait for the unit's `run` by default: as long as `run`
gives a command between SIGTERM and SIGKILL."""

R = TypeVar("R")

ProgressCallback = Callback[Waiting | UnitsyncError]
"""Told what a `start` waits for, and when the agent cannot be reached while waiting."""


class AsyncConnection:
    """One socket and its session: the I/O loop around `Session`."""

    def __init__(self, stream: TrioStream, session: Session, backend: TrioBackend) -> None:
        self.stream = stream
        self.session = session
        self._backend = backend

    @classmethod
    async def open(cls, path: str, session: Session, backend: TrioBackend) -> AsyncConnection:
        """A connection to the agent at `path`, trusted before a byte is sent (SPEC §5)."""
        try:
            stream = await _connect_when_there_is_room(path, backend)
        except OSError as exc:
            raise unreachable(path, exc) from None
        try:
            check_trust(path, os.stat(folder_of(path)), peer_of(stream.socket), os.getuid())
        except OSError as exc:
            await stream.aclose()
            raise unreachable(path, exc) from None
        except BaseException:
            await stream.aclose()
            raise
        return cls(stream, session, backend)

    async def send(self, request: Request) -> None:
        data = self.session.send(request)
        try:
            await self.stream.send_all(data)
        except OSError as exc:
            # The agent may have turned us away and closed: its reason may be waiting.
            with contextlib.suppress(TimeoutError, OSError):
                await self.receive(DRAIN_WAIT)
            raise self.session.connection_lost(exc) from None

    async def receive(self, timeout: float | None) -> Reply:
        """The next reply or event; TimeoutError when `timeout` seconds pass without one."""
        deadline = None if timeout is None else self._backend.clock() + timeout
        while (event := self.session.next_event()) is NEED_DATA:
            wait = None if deadline is None else deadline - self._backend.clock()
            if wait is not None and wait <= 0:
                raise TimeoutError
            try:
                data = await self.stream.receive(RECEIVE_SIZE, wait)
            except TimeoutError:
                raise
            except OSError as exc:
                raise self.session.connection_lost(exc) from None
            self.session.receive_data(data)
        return event  # type: ignore[return-value]

    async def pushed(self) -> list[Order]:
        """Orders the agent pushed unasked, read without waiting (between exchanges);
        AgentGone if it closed the connection."""
        try:
            data = await self.stream.receive_now(RECEIVE_SIZE)
        except OSError as exc:
            raise self.session.connection_lost(exc) from None
        if data is not None:
            self.session.receive_data(data)
        return self.session.take_orders()

    async def aclose(self) -> None:
        await self.stream.aclose()


class AsyncClient:
    """A client of the agent. Every method raises a `UnitsyncError` subclass on failure.

    `autostart` (the blocking client's): start an agent when a call finds none; None (the
    default) means "unless UNITSYNC_AUTOSTART=0". `on_autostart` is told when this client
    started one. The trio client never starts one, and refuses `autostart=True`.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        name: str = CLIENT_NAME,
        autostart: bool | None = None,
        on_autostart: Callable[[Autostarted], None] | None = None,
    ) -> None:
        self.path = os.fspath(socket_path) if socket_path else default_socket()
        """The agent's socket (a `str`: see `wire.host.paths`)."""
        self.name = name
        self.on_autostart = on_autostart
        self._backend = TrioBackend(autostart)
        self._conn: AsyncConnection | None = None
        self.memory = GraphMemory()
        """The graph of this client's first welcome: every later one must name it."""
        self._missing_since: float | None = None
        """When the agent this client had was first found gone (cleanly stopped): the grace
        before starting one counts from here. None while an agent answers."""
        self.holding: dict[str, Start] = {}
        """Runs this client holds (`start(hold=True)`), by unit: what `take_back` resends.
        A client holding a run had an agent: its calls start one as a client that lost its
        agent does (`_connect`)."""

    @classmethod
    async def connect(
        cls, socket_path: str | os.PathLike[str] | None = None, *, name: str = CLIENT_NAME
    ) -> AsyncClient:
        """A client whose first connection is open (and trusted): errors surface here."""
        client = cls(socket_path, name=name)
        await client._connection(lost=False)
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.aclose()

    @property
    def graph(self) -> str:
        """The id of the graph this client talks to (its first welcome's); "" before."""
        return self.memory.graph

    @property
    def welcome(self) -> Welcome | None:
        """The welcome of the connection open now (None: none is): the agent's boot, its
        host, and where `run` keeps output on this host."""
        return self._conn.session.welcome if self._conn is not None else None

    # --- one request, one reply ----------------------------------------------------------

    async def ping(self) -> Pong:
        return await self._call(Ping(), Pong)

    async def want(
        self, unit: str, *deps: str, once: bool = False, on: Condition | None = None
    ) -> Ok:
        """`unit` may start only when every dep is `on` (completed; started: ordering only;
        finished: completed or failed, a soft edge); an edge on another condition changes
        (the reply's notes say so). Without `on`, a new edge is `completed` and an existing
        one keeps its condition. `once` makes `unit` one-time. An unknown `on` raises
        `UsageError` before anything is sent."""
        return await self._call(Want(unit, list(deps), once, on), Ok)

    async def complete(
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
        request = Complete(unit, force, once, hold, self._token(unit, token))
        return await self._call(request, Ok)

    async def fail(
        self, unit: str, reason: str = "", *, force: bool = False, token: str = ""
    ) -> Ok:
        """Mark `unit` failed; `force` declares a failure of a unit nobody has named yet.
        `token`: as for `complete`."""
        return await self._call(Fail(unit, reason, force, self._token(unit, token)), Ok)

    async def forget(self, unit: str) -> Ok:
        """Remove a unit no other unit wants, with its history."""
        return await self._call(Forget(unit), Ok)

    async def set_reason(self, unit: str, reason: str, *, token: str = "") -> Ok:
        """Say what a started unit is doing, without changing its state (`token`: as for
        `complete`)."""
        return await self._call(SetReason(unit, reason, self._token(unit, token)), Ok)

    async def stop(self, unit: str, *, timeout: float = STOP_WAIT) -> Ok:
        """Have the `run` holding `unit` stop its command (SIGTERM to its group, SIGKILL
        after its grace); returns once the group is gone and the unit is pending.
        `WaitTimeout` past `timeout`; refused (`no_run`) if no live `run` holds it."""
        request = Stop(unit, timeout, f"sync stop (pid {os.getpid()})")
        return await self._call(request, Ok, wait=timeout)

    async def restart(self, unit: str, *, timeout: float = STOP_WAIT) -> Ok:
        """Have the `run` holding `unit` stop its command and start it again; returns once
        it is ready again. `UnitFailed` if it failed instead, `WaitTimeout` past `timeout`."""
        request = Restart(unit, timeout, f"sync restart (pid {os.getpid()})")
        return await self._call(request, Ok, wait=timeout)

    async def restarting(self, unit: str, reason: str, *, token: str = "") -> Ok:
        """From the `run` holding `unit`: its command starts again (`started`, `reason`)."""
        return await self._call(Restarting(unit, reason, self._token(unit, token)), Ok)

    async def stopped(self, unit: str, reason: str, *, token: str = "") -> Ok:
        """From the `run` holding `unit`: its command was stopped on order (`pending`)."""
        return await self._call(Stopped(unit, reason, self._token(unit, token)), Ok)

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

    def _token(self, unit: str, token: str) -> str:
        """The token a report goes with: the one given, or that of the run held here."""
        held = self.holding.get(unit)
        return token or (held.token if held is not None else "")

    async def _call(self, request: Request, expect: type[R], *, wait: float = 0.0) -> R:
        """One request, its whole reply; once more on a new connection if that is safe.
        `wait`: seconds the agent may take on purpose before replying (`stop`'s timeout)."""
        check_request(request)  # before connecting: a script hears of it even with no agent
        patience = None if REPLY_TIMEOUT is None else REPLY_TIMEOUT + wait
        lost = bool(self.holding)  # a held run's agent was there: if it is not, it was lost
        conn = await self._connection(lost=lost)
        try:
            try:
                await conn.send(request)
                reply = await conn.receive(patience)
            except AgentGone:
                if not conn.session.retry_is_safe:
                    raise
                # A reused connection the agent closed as idle never carried this request.
                await self.aclose()
                conn = await self._connection(lost=lost)
                await conn.send(request)
                reply = await conn.receive(patience)
        except TimeoutError:
            await self.aclose()
            raise AgentUnavailable(
                f"the agent at {self.path} did not answer within {patience:.0f}s"
            ) from None
        except UnitsyncError:
            if conn.session.state is not State.IDLE:
                await self.aclose()
            raise
        assert isinstance(reply, expect)  # the session checked the reply's type
        return reply

    async def _connection(self, *, lost: bool, deadline: float | None = None) -> AsyncConnection:
        """The open connection if it is between exchanges, else a new one (`_connect`)."""
        if self._conn is not None and self._conn.session.state not in (State.NEW, State.IDLE):
            await self.aclose()  # a call given up half way: its reply must not answer the next
        if self._conn is None:
            self._conn = await self._connect(lost=lost, deadline=deadline)
        return self._conn

    async def _connect(self, *, lost: bool, deadline: float | None = None) -> AsyncConnection:
        """A new connection; if none listens, to an agent started for it (SPEC §7, §11).

        `lost`: the caller had an agent and lost it. Where that agent crashed
        (`AgentCrashed`) it starts one at once; where it stopped cleanly, only once
        RESTART_GRACE has passed without one coming back (the caller retries meanwhile).
        `deadline` (the backend's `clock()`) bounds the wait for a live agent that holds the
        socket or the state dir (autostart's LIVE_AGENT_WAIT when None).
        """
        try:
            conn = await self._open()
        except NoAgent as exc:
            because = self._why_start_agent(exc, lost=lost)
            if because is None:
                raise
            patience = None if deadline is None else self._remaining(deadline) or 0.0
            started = await self._backend.start_agent(self.path, patience, because)
            if started is not None and self.on_autostart is not None:
                self.on_autostart(started)
            conn = await self._open()
        self._missing_since = None
        return conn

    async def _open(self) -> AsyncConnection:
        session = Session(self.path, self.name, self.memory)
        return await AsyncConnection.open(self.path, session, self._backend)

    def _why_start_agent(self, exc: NoAgent, *, lost: bool) -> str | None:
        """Why this client starts an agent now ("" for a first call that found none); None
        if it must not, or not yet (a cleanly stopped agent's grace is still running)."""
        if not self._backend.may_start_agent():
            return None
        if not lost:
            return ""
        if isinstance(exc, AgentCrashed):
            return "the agent crashed"
        now = self._backend.clock()
        if self._missing_since is None:
            self._missing_since = now
        if now - self._missing_since < RESTART_GRACE:
            return None
        return f"the agent stopped and none came back within {RESTART_GRACE:g}s"

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(deadline - self._backend.clock(), 0.0)

    # --- start: wait, surviving agent restarts ---------------------------------------------

    async def start(
        self,
        unit: str,
        *,
        rerun: bool = False,
        timeout: float | None = START_WAIT,
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

        `timeout=None` waits forever (START_WAIT unless told: five minutes for the blocking
        client, forever for the trio client). With `tick`, `on_progress` is told again the
        latest news every `tick` seconds (for a live display). If the agent goes away while
        we wait (restart, crash, upgrade), reconnect with backoff and keep waiting; the
        request carries a token so a start the old agent acknowledged but could not answer
        is not repeated. If it crashed, start another (as `_connect` says). `token` names
        the run (default: a fresh one), for its reports (`complete`).
        """
        deadline = None if timeout is None else self._backend.clock() + timeout
        request = start_request(unit, rerun, once=once, owner=owner, hold=hold, token=token)
        check_request(request)
        wait = WaitClock()
        backoff = Backoff()
        connected_once = False
        while True:
            try:
                conn = await self._connection(lost=connected_once, deadline=deadline)
                connected_once = True
                again = asked_again(request, wait.waited(self._backend.clock()))
                started = await self._wait_started(conn, again, deadline, on_progress, tick, wait)
                if hold:
                    self.holding[unit] = request
                return started
            except AgentUnavailable as exc:
                await self.aclose()
                if not connected_once or not exc.passing:
                    raise
                if on_progress:
                    await on_progress(exc)
                delay = backoff.next_delay(self._remaining(deadline), unit, timeout)
                await self._backend.sleep(delay)
            except TimeoutError:
                await self.aclose()
                raise timed_out(unit, timeout) from None

    async def take_back(self, unit: str) -> Started:
        """After the agent restarted: hold `unit`'s run again, on a new connection (the same
        start, same token). Refused if the agent gave the run up meanwhile."""
        return await self._call(msgspec.structs.replace(self.holding[unit], again=True), Started)

    async def take_orders(self) -> list[Order]:
        """What the agent pushed on the open connection (a held run is told when a newer run
        supersedes it), read without waiting; AgentGone if the agent closed it."""
        if self._conn is None:
            return []
        try:
            return await self._conn.pushed()
        except AgentGone:
            await self.aclose()
            raise

    def fileno(self) -> int | None:
        """The open connection's descriptor (for an event loop to watch), if there is one."""
        return self._conn.stream.fileno() if self._conn is not None else None

    async def _wait_started(
        self,
        conn: AsyncConnection,
        request: Request,
        deadline: float | None,
        on_progress: ProgressCallback | None,
        tick: float | None,
        wait: WaitClock,
    ) -> Started:
        await conn.send(request)
        latest: Waiting | None = None
        while True:
            remaining = self._remaining(deadline)
            try:
                reply = await conn.receive(_shortest(remaining, tick))
            except TimeoutError:
                if remaining is not None and remaining <= (tick or 0):
                    raise
                if on_progress and latest:
                    await on_progress(latest)
                continue
            if isinstance(reply, Started):
                return reply
            assert isinstance(reply, Waiting)
            wait.seen(reply, self._backend.clock())
            latest = reply
            if on_progress:
                await on_progress(reply)

    # --- higher level ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def unit(
        self,
        name: str,
        *,
        wants: list[str] | tuple[str, ...] = (),
        timeout: float | None = START_WAIT,
    ) -> AsyncIterator[Started]:
        """Run a block as unit `name`: declare `wants`, wait and start (as `start` with
        `timeout`), then complete it.

        If the block raises (or, in trio, is cancelled), the unit is marked failed with the
        exception as reason (and the exception goes on), so whatever waits on it stops
        waiting.
        """
        if wants:
            await self.want(name, *wants)
        token = new_token()  # its reports count only while it is the unit's current run
        started = await self.start(name, timeout=timeout, token=token)
        try:
            yield started
        except BaseException as exc:
            with self._backend.shield():  # so a cancelled block still reports its end
                await self.fail(name, reason=failure_reason(exc), token=token)
            raise
        await self.complete(name, token=token)

    async def logs(
        self,
        unit: str,
        *,
        follow: bool = False,
        run: int | None = None,
        boot: int | None = None,
        all: bool = False,
        since: float | None = None,
        tail: int | None = None,
        stream: str | None = None,
    ) -> AsyncIterator[LogLine | LogNote]:
        """`unit`'s recorded output (SPEC §15), as `LogLine`s and `LogNote`s (a run began or
        ended, output dropped for the limit, damage skipped), from this host's log.

        The latest run unless `run`, `boot` or `all` chooses others; `since` (Unix time) and
        `stream` ("stdout", "stderr", "both") keep some lines, `tail` the last N. With
        `follow`, goes on with what is written next, new runs included, until the caller
        stops iterating. An unknown unit raises `Refused` (`unknown_unit`), as `status` does;
        a log folder that is not private to this user raises `Refused` (`invalid`).
        """
        batches = self.log_batches(
            unit,
            follow=follow,
            run=run,
            boot=boot,
            all=all,
            since=since,
            tail=tail,
            stream=stream,
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for event in batch:  # noqa: UP028, RUF100 (the generated copy could `yield from`)
                    yield event

    async def log_batches(
        self,
        unit: str,
        *,
        follow: bool = False,
        run: int | None = None,
        boot: int | None = None,
        all: bool = False,
        since: float | None = None,
        tail: int | None = None,
        stream: str | None = None,
    ) -> AsyncIterator[list[LogLine | LogNote]]:
        """`logs`, as the lists of events each read of the log gives (what was there, then
        each change followed): for a caller that handles 100,000s of lines at once."""
        from unitsync.wire.host.inotify import POLL, Changes
        from unitsync.wire.runlog.layout import Untrusted, unit_folder
        from unitsync.wire.runlog.reader import LogReader, Selection, filtered, tailed

        await self.status(unit)  # known? (its welcome also says where the logs are)
        welcome = self.welcome
        if welcome is None or not welcome.logs:
            return
        reader = LogReader(
            unit_folder(welcome.logs, unit), Selection(run, boot, all), follow=follow
        )
        try:
            events = await self._backend.in_thread(reader.read)
        except Untrusted as exc:
            raise Refused(str(exc), code="invalid", unit=unit) from None
        events = filtered(events, since, stream)
        yield tailed(events, tail) if tail is not None else events
        if not follow:
            return
        changes = Changes(reader.folder)
        try:
            while True:
                await self._backend.wait_readable(changes.fileno(), POLL)
                changes.drain()
                events = filtered(await self._backend.in_thread(reader.read), None, stream)
                if events:
                    yield events
        finally:
            changes.close()

    async def watch(
        self,
        unit: str | None = None,
        *,
        on_unreachable: Callback[UnitsyncError] | None = None,
        on_graph_changed: Callback[GraphChanged] | None = None,
    ) -> AsyncIterator[FullView | Changed]:
        """Every acknowledged change, starting with a full view; reconnects if the agent restarts.

        A new full view follows each reconnection (and any time this client fell behind);
        `on_unreachable` is told each time the agent cannot be reached meanwhile. If a
        reconnection finds another graph, `on_graph_changed` is told and the watch goes on
        with that graph; without it, GraphChanged is raised. The watch has a connection of
        its own, closed when its iteration ends.
        """
        backoff = Backoff()
        connected_once = False
        while True:
            try:
                async with contextlib.aclosing(await self._connect(lost=connected_once)) as conn:
                    await conn.send(Watch(unit))
                    connected_once = True
                    while True:
                        event = await conn.receive(None)
                        assert isinstance(event, FullView | Changed)
                        backoff = Backoff()
                        yield event
            except GraphChanged as exc:
                if on_graph_changed is None:
                    raise
                await on_graph_changed(exc)
                self.memory.adopt(exc)
            except AgentUnavailable as exc:
                if not connected_once or not exc.passing:
                    raise
                if on_unreachable:
                    await on_unreachable(exc)
                await self._backend.sleep(backoff.next_delay(None, unit or "", None))


async def _connect_when_there_is_room(path: str, backend: TrioBackend) -> TrioStream:
    """Connect, waiting while the agent's listen backlog is full (EAGAIN), for at most
    CONNECT_TIMEOUT (None: until cancelled)."""
    deadline = None if CONNECT_TIMEOUT is None else backend.clock() + CONNECT_TIMEOUT
    delay, longest = BACKLOG_FULL_DELAYS
    while True:
        try:
            return await backend.connect(path)
        except BlockingIOError:
            if deadline is not None and backend.clock() + delay > deadline:
                raise
            await backend.sleep(delay)
            delay = min(delay * 2, longest)


def _shortest(*timeouts: float | None) -> float | None:
    return min((t for t in timeouts if t is not None), default=None)
