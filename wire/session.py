"""One conversation with the agent, with no I/O: bytes in, events out (in the style of h11).

The client (`unitsync.client`: the trio client and the blocking one generated from it)
drives a `Session` and only moves bytes, so every rule of talking to the agent lives here
once:

- trust: before a byte is sent, the socket's folder must be the user's own and not
  writable by others, and the process listening must run as the user (or root), from
  SO_PEERCRED; otherwise `AgentUntrusted` and nothing is sent (`check_trust`);
- a request past a bound, or with a string that is not UTF-8, is refused before anything
  is sent, as the agent would refuse it (`wire.bounds.check_request`);
- the hello goes out with the first request, and the welcome must be the first reply;
- one graph per client (SPEC §11): the client remembers the graph of its first welcome
  (`GraphMemory`, shared by every session of one client); each later hello names it,
  and a welcome naming another graph (the agent at the socket was replaced by one with
  another state dir) ends the connection with `GraphChanged` before any reply is taken.
  The agent carries out nothing on such a connection either (`agent.connection`);
- each request has the replies it may get (`EXPECTED`); anything else is a breach;
- a reply split over several frames (`more`) comes out whole;
- an `Error` reply ends the exchange and is raised as the same exception in every client
  (`unitsync.wire.errors.from_reply`);
- the reconnect-once rule: the agent closes idle connections between requests, never
  during one, so a reused connection found closed before any reply never carried the
  request, and sending it again on a new connection is safe (`retry_is_safe`);
- orders: on a connection that holds a run, the agent may push an `Order` unasked (its run
  was superseded), between replies or before one; it is never a reply to anything, so it
  is set aside in `orders` for the caller (`take_orders`), whatever the exchange.

Resource rules: a session owns no socket. It is used for one connection; after
`CLOSED` (the peer went, or broke the protocol) the caller opens a new connection with a
new session. A call cancelled half way leaves the session in
`AWAITING`, which the clients take as "open a new connection before the next call",
so no reply ever answers the wrong request.
"""

from __future__ import annotations

import enum
import os
import stat

import msgspec

from unitsync.wire import __version__
from unitsync.wire.bounds import check_request
from unitsync.wire.errors import (
    AgentCrashed,
    AgentGone,
    AgentUnavailable,
    AgentUntrusted,
    GraphChanged,
    NoAgent,
    ProtocolError,
    from_reply,
)
from unitsync.wire.framing import decode_reply, encode, take_frame
from unitsync.wire.graph_id import short
from unitsync.wire.host.paths import folder_of, private_socket_hint
from unitsync.wire.host.peer import Peer
from unitsync.wire.protocol import (
    PROTOCOL_VERSION,
    Changed,
    Complete,
    Error,
    Fail,
    Forget,
    FullView,
    Hello,
    Ok,
    Order,
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
    Waiting,
    Want,
    Watch,
    Welcome,
)

EXPECTED: dict[type[Request], tuple[type[Reply], ...]] = {
    Ping: (Pong,),
    Want: (Ok,),
    Complete: (Ok,),
    Fail: (Ok,),
    SetReason: (Ok,),
    Restarting: (Ok,),
    Stopped: (Ok,),
    Stop: (Ok,),
    Restart: (Ok,),
    Reset: (Ok,),
    Forget: (Ok,),
    Status: (StatusReply,),
    Start: (Waiting, Started),
    Watch: (FullView, Changed),
}
"""The replies and events each request may get (an `Error` may answer any of them)."""
FINAL: tuple[type[Reply], ...] = (Pong, Ok, Started, StatusReply)
"""Replies that end their exchange; a watch never ends."""


class State(enum.Enum):
    NEW = "new"
    """Connected, nothing sent: the hello goes out with the first request."""
    GREETING = "greeting"
    """Hello and a request sent; the welcome must come first."""
    IDLE = "idle"
    """Between exchanges: a request may be sent."""
    AWAITING = "awaiting"
    """A request sent, its final reply not yet received."""
    WATCHING = "watching"
    """A watch: events until the connection ends."""
    CLOSED = "closed"
    """The connection ended or broke: use a new one."""


def failure_reason(exc: BaseException) -> str:
    """The reason a unit run as a block (`unit()`) fails with when the block raises."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class NeedData:
    """`next_event` has no whole event yet: read more bytes and `receive_data` them."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


def check_trust(path: str, folder: os.stat_result, peer: Peer, me: int) -> None:
    """Refuse an agent that may not be the user's own (SPEC §5, from the client's side).

    Anyone who can write the socket's folder can put a listener there; anyone else's
    process may answer `start` at once and break the order the tool exists to keep.
    """
    where = folder_of(path)
    if folder.st_uid not in (me, 0):
        raise AgentUntrusted(
            f"refusing to talk to the agent at {path}: its folder {where} belongs to uid "
            f"{folder.st_uid}, not to you (uid {me}), so its owner could be listening there "
            f"instead of your agent. Use a socket in a folder of your own, e.g. "
            f"--socket {private_socket_hint()}"
        )
    if folder.st_mode & 0o022:
        mode = stat.S_IMODE(folder.st_mode)
        raise AgentUntrusted(
            f"refusing to talk to the agent at {path}: its folder {where} is writable by "
            f"others (mode {mode:04o}), so anyone could have put a socket there. Use a socket "
            f"in a private folder, e.g. --socket {private_socket_hint()}"
        )
    if peer.uid not in (me, 0):
        raise AgentUntrusted(
            f"refusing to talk to the process listening at {path}: it runs as uid {peer.uid} "
            f"(pid {peer.pid}), not as you (uid {me}); nothing was sent to it. Stop it, or "
            "point --socket / UNITSYNC_SOCKET at your own agent"
        )


def unreachable(path: str, exc: OSError) -> AgentUnavailable:
    """The error for a connection attempt that failed, the same in every client."""
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        # A file nobody accepts on is a dead agent's: a clean stop removes it first.
        kind = AgentCrashed if isinstance(exc, ConnectionRefusedError) else NoAgent
        return kind(
            f"no agent is listening at {path}; start one with `unitsync agent` "
            "(or point --socket / UNITSYNC_SOCKET at the right socket)"
        )
    return AgentUnavailable(f"cannot reach the agent at {path}: {exc.strerror or exc}")


class GraphMemory:
    """The graph a client first talked to: remembered from its first welcome, named in every
    later hello, and checked against every later welcome (one per client, shared by the
    sessions of its connections)."""

    def __init__(self) -> None:
        self.graph = ""
        """The remembered graph's id; "" before the first welcome."""
        self.state = ""
        """Where that graph is kept, as its agent said."""

    def check(self, welcome: Welcome, path: str, request: Request | None) -> None:
        """Remember `welcome`'s graph if it is the first; GraphChanged if it is another."""
        if not self.graph:
            self.graph, self.state = welcome.graph, welcome.state
            return
        if welcome.graph == self.graph:
            return
        raise GraphChanged(
            f"the agent at {path} now serves another graph ({short(welcome.graph)}, state in "
            f"{welcome.state}), not the one {_what_waited(request)} ({short(self.graph)}, "
            f"state in {self.state}); {_not_done(request)}",
            expected=self.graph,
            expected_state=self.state,
            found=welcome.graph,
            found_state=welcome.state,
        )

    def adopt(self, changed: GraphChanged) -> None:
        """Go on with the graph found instead (a watch follows whatever the socket serves)."""
        self.graph, self.state = changed.found, changed.found_state


def _what_waited(request: Request | None) -> str:
    """Who was in the first graph, as the message about a changed graph names it."""
    match request:
        case Start(unit=unit, again=True):
            return f"{unit!r} was running in"
        case Start(unit=unit):
            return f"{unit!r} was waiting in"
        case Complete(unit=unit) | Fail(unit=unit) | SetReason(unit=unit):
            return f"{unit!r} was running in"
        case Watch():
            return "this watch began with"
    return "this client talked to before"


def _not_done(request: Request | None) -> str:
    """What was not done about it: the request, named as a person would."""
    match request:
        case Start(unit=unit, again=True):
            return f"not taking {unit}'s run back"
        case Start(unit=unit):
            return f"not starting {unit}"
        case Complete(unit=unit):
            return f"not completing {unit}"
        case Fail(unit=unit):
            return f"not failing {unit}"
        case SetReason(unit=unit):
            return f"not telling it what {unit} does"
    return "nothing was done there"


class Session:
    """The client's side of one connection: what to send, and what the bytes received mean."""

    def __init__(
        self, path: str, client: str = "python", memory: GraphMemory | None = None
    ) -> None:
        self.path = path
        self.client = client
        self.memory = memory if memory is not None else GraphMemory()
        """The client's graph: one per client, shared by its sessions."""
        self.state = State.NEW
        self.welcome: Welcome | None = None
        self._request: Request | None = None
        self._buffer = bytearray()
        self._ended = False
        """The peer closed its side: no more bytes will come."""
        self._expected: tuple[type[Reply], ...] = ()
        self._parts: list[StatusReply | FullView] = []
        """The frames so far of a reply split over several (`more`)."""
        self._exchanges = 0
        self._received = 0
        """Bytes received since the current request was sent."""
        self.orders: list[Order] = []
        """Orders the agent pushed, not yet taken (`take_orders`)."""

    # --- sending -----------------------------------------------------------------------------

    def send(self, request: Request) -> bytes:
        """The bytes to write for `request` (with the hello, the first time)."""
        if self.state not in (State.NEW, State.IDLE):
            raise RuntimeError(f"cannot send {type(request).__name__} in state {self.state.name}")
        check_request(request)  # as the agent would, before a frame too big is even built
        frames = encode(request)
        if self.state is State.NEW:
            hello = Hello(PROTOCOL_VERSION, f"{self.client}/{__version__}", self.memory.graph)
            frames = encode(hello) + frames
        self._request = request
        self.state = State.GREETING if self.state is State.NEW else State.AWAITING
        self._expected = EXPECTED[type(request)]
        self._received = 0
        return frames

    @property
    def retry_is_safe(self) -> bool:
        """After the connection was lost: may the request go again on a new connection?

        Yes if this connection had already carried an exchange (the agent closes idle
        connections between requests, never during one) and nothing of the reply came.
        """
        return self._exchanges > 0 and self._received == 0

    # --- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the socket; `b""` when the peer closed its side."""
        if data:
            self._buffer += data
            self._received += len(data)
        else:
            self._ended = True

    def next_event(self) -> Reply | NeedData:
        """The next whole reply or event, NEED_DATA, or the error the agent answered with.

        Raises the `UnitsyncError` an `Error` reply stands for, and `AgentGone` when the
        connection ended or the agent broke the protocol (the session is then CLOSED).
        """
        while True:
            try:
                body = take_frame(self._buffer)
            except ProtocolError as exc:
                raise self._unreadable(exc) from None
            if body is None:
                if not self._ended:
                    return NEED_DATA
                if self._buffer:
                    raise self._broken(f"the agent at {self.path} closed in the middle of a reply")
                raise self._broken(f"the agent at {self.path} closed the connection")
            try:
                reply = decode_reply(body)
            except ProtocolError as exc:
                raise self._unreadable(exc) from None
            event = self._accept(reply)
            if event is not None:
                return event

    def connection_lost(self, exc: OSError | None = None) -> AgentGone:
        """The socket failed: the session is over; the error to raise (naming the path and
        the socket's own error: the clients' backends hand it on unwrapped)."""
        cause = f": {exc}" if exc else ""
        return self._broken(f"lost the connection to the agent at {self.path}{cause}")

    def take_orders(self) -> list[Order]:
        """Between exchanges: the orders received so far (read what is waiting and
        `receive_data` it first). AgentGone if the agent closed the connection and pushed
        nothing more: a connection holding a run is closed only when the agent goes."""
        if self.state is State.CLOSED and not self.orders:
            raise self._broken(f"the agent at {self.path} closed the connection")
        if self.state is State.IDLE:
            try:
                event = self.next_event()
            except AgentGone:
                if not self.orders:
                    raise
            else:
                assert event is NEED_DATA  # anything else raised: nothing was asked
        orders, self.orders = self.orders, []
        return orders

    # --- internals ---------------------------------------------------------------------------

    def _accept(self, reply: Reply) -> Reply | None:
        """Check a decoded frame against the exchange; the event to hand on, if any."""
        if isinstance(reply, Order) and self.welcome is not None:
            self.orders.append(reply)  # pushed, not an answer: the exchange goes on
            return None
        if self.state is State.GREETING:
            if isinstance(reply, Error):  # refused before the hello: busy, another uid
                self.state = State.CLOSED
                raise from_reply(reply)
            if not isinstance(reply, Welcome):
                raise self._broken(f"the agent answered {type(reply).__name__} before its welcome")
            self.welcome = reply
            try:
                self.memory.check(reply, self.path, self._request)
            except GraphChanged:
                self.state = State.CLOSED
                raise
            self.state = State.AWAITING
            return None
        if self.state not in (State.AWAITING, State.WATCHING):
            raise self._broken(f"the agent sent {type(reply).__name__} when nothing was asked")
        if isinstance(reply, Error):
            self._end_exchange()
            raise from_reply(reply)
        if not isinstance(reply, self._expected):
            raise self._broken(f"the agent sent an unexpected {type(reply).__name__}")
        if isinstance(reply, StatusReply | FullView):
            reply = self._whole(reply)
            if reply is None:
                return None
        if isinstance(reply, FINAL):
            self._end_exchange()
        elif isinstance(reply, FullView | Changed):
            self.state = State.WATCHING
        return reply

    def _whole(self, part: StatusReply | FullView) -> StatusReply | FullView | None:
        """Reassemble a reply split over several frames; None until its last frame."""
        self._parts.append(part)
        if part.more:
            return None
        parts, self._parts = self._parts, []
        if len(parts) == 1:
            return part
        units = [unit for each in parts for unit in each.units]
        return msgspec.structs.replace(part, units=units, more=False)

    def _end_exchange(self) -> None:
        self.state = State.IDLE
        self._exchanges += 1
        self._expected = ()

    def _unreadable(self, exc: ProtocolError) -> AgentGone:
        return self._broken(f"the agent sent a frame this client cannot read: {exc}")

    def _broken(self, message: str) -> AgentGone:
        self.state = State.CLOSED
        return AgentGone(message)
