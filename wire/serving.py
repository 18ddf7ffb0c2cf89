"""The agent's side of one connection, with no I/O: frames in, frames to send out.

The counterpart of `session.py` (the client's side), in the same style: the agent's
connection task (`agent/serve/connection.py`) reads frames, hands their bodies to a
`Serving`, carries out the requests it returns, and sends the frames it is given. Every
rule of the agent's side of the protocol lives here once:

- peers: only the agent's own user may talk to it (`untrusted`: the refusal, sent before
  the hello is read; the uid comes from SO_PEERCRED, read by the caller);
- the hello: the first frame must be a `Hello` of this protocol version, answered with the
  `Welcome` naming the graph served (SPEC §11); nothing is sent before the welcome but a
  refusal; a hello naming another graph (its client talked to another agent at this
  socket before) gets its welcome, then `graph_changed`, and the connection ends before
  any request is read, so nothing is carried out on a graph the client did not start with;
- requests: each frame after the hello is one request, decoded and checked against the
  bounds (`bounds.check_request`); a frame that is neither is answered with the `Error`
  that says why, and the connection goes on (the frame boundary is intact); a second
  hello is a protocol error;
- what may be sent when: one exchange at a time, each answered with the replies its
  request may get (`session.EXPECTED`, the client's own table), a start's `Waiting`s
  before its `Started`, a watch's events until the connection ends; a reply holding a
  list of units is split over frames under the size limit (`more` on all but the last);
- orders (a held run was superseded): pushed by another task at any time, sent only
  between exchanges, so an order never lands inside a reply, and never before the welcome.

Error rules: a peer's mistake is answered with an `Error` frame (`protocol`, or the
refusal a bound makes) and changes no state but the exchange's; the agent's own mistake
(a reply the exchange does not allow, a frame sent in the wrong state) raises
`RuntimeError`, a bug to fix, never sent.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import msgspec

from unitsync.wire import __version__
from unitsync.wire.bounds import MAX_DEPS, check_request
from unitsync.wire.errors import ProtocolError, UnitsyncError, to_reply
from unitsync.wire.framing import MAX_FRAME, chunked, decode_request
from unitsync.wire.graph_id import short
from unitsync.wire.protocol import (
    PROTOCOL_VERSION,
    Changed,
    Error,
    FullView,
    Hello,
    Order,
    Request,
    Restart,
    Start,
    StatusReply,
    Stop,
    Waiting,
    Watch,
    Welcome,
)
from unitsync.wire.session import EXPECTED, FINAL

SHUTTING_DOWN = Error(
    "shutting_down", "the agent is shutting down; a waiting start reconnects to the next one"
)
"""What a waiting start or a watch is told when the agent stops in order."""

Frame = msgspec.Struct
"""A message to send as one frame (`framing.encode` makes its bytes)."""


class State(enum.Enum):
    GREETING = "greeting"
    """Connected: the first frame must be a hello; nothing but a refusal goes out yet."""
    IDLE = "idle"
    """Between exchanges: a request may come; orders go out."""
    SERVING = "serving"
    """A request is being answered: its replies only (a start's `Waiting`s first)."""
    WATCHING = "watching"
    """A watch: its events, until the connection ends."""
    CLOSED = "closed"
    """Nothing more is read; the connection ends."""


# Every request passes here twice: plain names and sets of exact types, not enum lookups
# and isinstance of unions (they cost a third of a request's protocol time).
_GREETING, _IDLE, _SERVING, _WATCHING, _CLOSED = State
_ANSWERS = {request: frozenset(replies) for request, replies in EXPECTED.items()}
_FINAL = frozenset(FINAL)
_OPEN_ENDED = frozenset({Start, Watch, Stop, Restart})
_EVENTS = frozenset({FullView, Changed})
_LISTS = frozenset({StatusReply, FullView})
_NO_ORDERS: tuple[Order, ...] = ()


def untrusted(uid: int, me: int) -> Error | None:
    """The refusal for a peer running as another user (None: it may talk to the agent)."""
    if uid == me:
        return None
    return Error("untrusted", f"uid {uid} may not use this agent; it serves uid {me} only")


def cannot_start(socket: str, reason: str) -> Error:
    """What a client that connected while the agent was starting is told when the agent
    cannot start after all (a damaged journal): its reason, not a reset connection."""
    return Error("start_failed", f"the agent at {socket} cannot start: {reason}")


def busy(max_connections: int) -> Error:
    """The refusal for a connection past the cap, sent at once instead of leaving it hanging."""
    return Error(
        "busy",
        f"the agent is serving its limit of {max_connections} connections; "
        "retry later, or raise --max-connections",
    )


def too_large(size: int) -> Error:
    """What answers a request whose reply would not fit in a frame (none should: a bug)."""
    return Error(
        "protocol",
        f"the reply would be {size} bytes, past the {MAX_FRAME}-byte frame limit, so it was "
        "not sent; every reply should fit (SPEC §12): please report this as a bug",
    )


class Serving:
    """The agent's side of one connection: what the frames received ask, what to send."""

    def __init__(
        self, graph: str, state: str, pid: int, *, logs: str = "", boot: int = 0, host: str = ""
    ) -> None:
        self.welcome = Welcome(PROTOCOL_VERSION, __version__, pid, graph, state, logs, boot, host)
        """What every accepted hello is answered with: the graph served, where it is kept."""
        self.state = _GREETING
        self._request: Request | None = None
        """The request being answered (SERVING, WATCHING)."""
        self._orders: list[Order] = []

    # --- receiving ---------------------------------------------------------------------------

    def hello(self, body: bytes) -> list[Frame]:
        """The frames that answer the first frame; the connection goes on if `state` is
        IDLE after them, and ends if it is CLOSED."""
        self._expect(_GREETING, "a hello")
        hello = _decoded(body)
        self.state = _CLOSED
        if isinstance(hello, Error):  # it did not decode: say why
            return [hello]
        if not isinstance(hello, Hello):
            return [Error("protocol", "the first frame must be a hello stating the version")]
        if hello.version != PROTOCOL_VERSION:
            return [
                Error(
                    "protocol",
                    f"protocol version {hello.version} is not supported; this agent "
                    f"({__version__}) speaks version {PROTOCOL_VERSION}: use a matching "
                    "unitsync",
                )
            ]
        graph, state = self.welcome.graph, self.welcome.state
        if hello.graph and hello.graph != graph:
            changed = Error(
                "graph_changed",
                f"this agent serves graph {short(graph)} (state in {state}), not graph "
                f"{short(hello.graph)}, the one this client talked to before; nothing was done",
            )
            return [self.welcome, changed]
        self.state = _IDLE
        return [self.welcome]

    def request(self, body: bytes) -> Request | Error:
        """The request in a frame, to carry out; or the `Error` that answers a frame that
        is not a valid request (send it with `reply`). Either way an exchange begins."""
        if self.state is not _IDLE:
            raise RuntimeError(f"a request in state {self.state.name}")
        request = _decoded(body)
        self.state = _SERVING
        kind = type(request)
        if kind is Error:
            return request  # type: ignore[return-value]
        if kind is Hello:
            return Error("protocol", "hello may only be sent once, as the first frame")
        try:
            check_request(request)
        except UnitsyncError as exc:
            return to_reply(exc)
        self._request = request  # type: ignore[assignment]
        return request  # type: ignore[return-value]

    # --- sending -----------------------------------------------------------------------------

    def reply(self, message: Frame) -> list[Frame]:
        """The frames that carry `message`, a reply or an event of the exchange under way
        (a `StatusReply` or `FullView` split under the frame limit); the exchange ends with
        its final reply or an `Error`."""
        kind = type(message)
        if self.state is _WATCHING:
            if kind not in _EVENTS:
                raise RuntimeError(f"a watch sends no {kind.__name__}")
            return _frames(message)
        if self.state is not _SERVING:
            raise RuntimeError(f"a {kind.__name__} in state {self.state.name}")
        request = self._request
        if kind is Error:
            self._end()
            return [message]
        if request is None or kind not in _ANSWERS[type(request)]:
            what = type(request).__name__ if request is not None else "a bad frame"
            raise RuntimeError(f"{kind.__name__} does not answer {what}")
        if kind is Waiting and len(message.on) > MAX_DEPS:  # type: ignore[attr-defined]
            # A unit from a journal written before the bound: the client's frame stays legal.
            message = msgspec.structs.replace(message, on=message.on[:MAX_DEPS])  # type: ignore[attr-defined]
        if type(request) is Watch:
            self.state = _WATCHING
        elif kind in _FINAL:
            self.state, self._request = _IDLE, None
        return _frames(message)

    def closing(self, error: Error) -> list[Frame]:
        """The last frame: why the agent ends the connection (a stall, an oversize frame, the
        agent shutting down, eviction), in any state."""
        self.state = _CLOSED
        return [error]

    def push(self, order: Order) -> None:
        """An order for the peer (its held run was superseded), sent between exchanges."""
        self._orders.append(order)

    def orders_due(self) -> Sequence[Order]:
        """The orders to send now: those pushed, once no exchange is under way (and the
        hello was answered); none otherwise."""
        if not self._orders or self.state is not _IDLE:
            return _NO_ORDERS
        orders, self._orders = self._orders, []
        return orders

    @property
    def open_ended(self) -> bool:
        """Whether the exchange under way may last as long as it takes (a start waits for
        its dependencies, a watch for changes): no timeout applies to it."""
        return self.state is _WATCHING or type(self._request) in _OPEN_ENDED

    # --- internals ---------------------------------------------------------------------------

    def _end(self) -> None:
        self.state = _IDLE
        self._request = None

    def _expect(self, state: State, what: str) -> None:
        if self.state is not state:
            raise RuntimeError(f"{what} in state {self.state.name}")


def _decoded(body: bytes) -> object:
    """The request in a frame body, or the `Error` that answers a body that is not one."""
    try:
        return decode_request(body)
    except ProtocolError as exc:
        return to_reply(exc)


def _frames(message: Frame) -> list[Frame]:
    """`message` as frames: a list of units over as many as keep each under the limit."""
    if type(message) not in _LISTS:
        return [message]
    parts = chunked(message.units)
    last = len(parts) - 1
    return [
        msgspec.structs.replace(message, units=part, more=i < last) for i, part in enumerate(parts)
    ]
