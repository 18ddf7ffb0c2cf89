"""The wire protocol shared by the agent and every client.

A frame is a 4-byte big-endian length followed by a msgpack body. Bodies are
tagged msgspec structs: clients send `Request`s, the agent answers with
`Reply`s (and, on a watching connection or while a `start` waits, with
events). The first frame of every connection is a `Hello` stating the
protocol version, so a mismatch is caught before anything else happens.

This module imports only msgspec: the CLI's start-up time depends on it.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
"""Largest frame body either side accepts (1 MiB)."""

HEADER = struct.Struct(">I")

State = Literal["pending", "started", "completed", "failed"]


class Base(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, omit_defaults=True):
    """Common options for every frame type."""


# --- requests ------------------------------------------------------------------------------


class Hello(Base, tag="hello"):
    version: int
    client: str = ""


class Ping(Base, tag="ping"):
    pass


class Want(Base, tag="want"):
    unit: str
    deps: list[str]


class Start(Base, tag="start"):
    unit: str
    rerun: bool = False
    token: str = ""
    """Chosen by the client per `start` call; lets a retry after a lost reply be recognised."""


class Complete(Base, tag="complete"):
    unit: str
    force: bool = False


class Fail(Base, tag="fail"):
    unit: str
    reason: str = ""


class Reset(Base, tag="reset"):
    unit: str | None = None
    """None resets every unit."""


class Status(Base, tag="status"):
    unit: str | None = None
    """None asks for every unit."""


class Watch(Base, tag="watch"):
    unit: str | None = None


Request = Hello | Ping | Want | Start | Complete | Fail | Reset | Status | Watch


# --- views of the agent's state ------------------------------------------------------------


class Transition(msgspec.Struct, frozen=True, gc=False):
    """One entry of a unit's history: plain values, never in a cycle, so not GC-tracked."""

    at: float
    """Unix time of the change."""
    from_: State = msgspec.field(name="from")
    to: State
    reason: str = ""
    waited: float | None = None
    """For a move to `started`: how long that start waited for its dependencies (seconds)."""


class Dependency(msgspec.Struct):
    unit: str
    required: State
    current: State
    satisfied: bool


class UnitView(msgspec.Struct):
    name: str
    status: State
    ready: bool
    since: float
    """Unix time of the last transition (or of the unit becoming known)."""
    reason: str
    waiting_on: list[str]
    """Dependencies not yet completed, while a `start` of this unit waits."""
    waiters: int
    dependencies: list[Dependency]
    dependents: list[str]
    history: list[Transition]


# --- replies and events --------------------------------------------------------------------


class Welcome(Base, tag="welcome"):
    version: int
    agent: str
    """The agent's software version."""
    pid: int


class Pong(Base, tag="pong"):
    agent: str
    pid: int
    uptime: float
    socket: str
    state_dir: str = ""


class Ok(Base, tag="ok"):
    unit: str | None = None
    message: str = ""
    notes: list[str] = []
    """Things the user should know although the request succeeded."""


class Waiting(Base, tag="waiting"):
    """Event: a `start` is blocked; `on` lists the dependencies not yet completed."""

    unit: str
    on: list[str]
    since: float


class Started(Base, tag="started"):
    unit: str
    at: float
    waited: float
    notes: list[str] = []


ErrorCode = Literal[
    "protocol",  # undecodable, invalid or unexpected frame, version mismatch
    "invalid",  # bad unit name, self-dependency and similar bad arguments
    "cycle",
    "unknown_unit",
    "already_started",
    "not_started",
    "dependency_failed",
    "shutting_down",
    "busy",  # the agent cannot take more connections
]


class Error(Base, tag="error"):
    code: ErrorCode
    message: str
    unit: str | None = None
    dependency: str | None = None
    """For dependency_failed: the unit that failed."""


class StatusReply(Base, tag="status"):
    units: list[UnitView]
    at: float
    more: bool = False
    """More units follow in the next frame (a long list is split to fit the frame limit)."""


class Snapshot(Base, tag="snapshot"):
    """Event: the whole watched view; sent first and whenever a watcher fell behind."""

    units: list[UnitView]
    at: float
    more: bool = False
    """More units follow in the next frame (a long list is split to fit the frame limit)."""


class Changed(Base, tag="changed"):
    """Event: one unit's new view after an acknowledged change."""

    unit: UnitView
    at: float


Reply = Welcome | Pong | Ok | Waiting | Started | Error | StatusReply | Snapshot | Changed


# --- framing -------------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)


class FrameTooLarge(ValueError):
    def __init__(self, size: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
        self.size = size


def encode(message: msgspec.Struct) -> bytes:
    """Encode one message as a complete frame (header and body)."""
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(len(body))
    return HEADER.pack(len(body)) + body


def take_frame(buffer: bytearray) -> bytes | None:
    """Remove the first whole frame from `buffer` and return its body; None until one is in.

    Raises FrameTooLarge as soon as a header announces more than MAX_FRAME bytes.
    """
    if len(buffer) < HEADER.size:
        return None
    (size,) = HEADER.unpack_from(buffer)
    if size > MAX_FRAME:
        raise FrameTooLarge(size)
    end = HEADER.size + size
    if len(buffer) < end:
        return None
    body = bytes(buffer[HEADER.size : end])
    del buffer[:end]
    return body


CHUNK_BUDGET = MAX_FRAME // 2
"""Bytes of unit views per frame, leaving ample room for the rest of the frame."""


class Reassembly:
    """Puts back together a snapshot that came split over several frames (`more`)."""

    def __init__(self) -> None:
        self._units: list[UnitView] = []

    def event(self, event: Snapshot | Changed) -> Snapshot | Changed | None:
        """The event to hand on, or None while a split snapshot is still incomplete."""
        if not isinstance(event, Snapshot):
            return event
        self._units += event.units
        if event.more:
            return None
        whole, self._units = Snapshot(self._units, event.at), []
        return whole


def chunked(views: list[UnitView]) -> list[list[UnitView]]:
    """Split views into lists whose frames stay under the limit (always at least one list)."""
    chunks: list[list[UnitView]] = [[]]
    size = 0
    for view in views:
        cost = len(_encoder.encode(view))
        if chunks[-1] and size + cost > CHUNK_BUDGET:
            chunks.append([])
            size = 0
        chunks[-1].append(view)
        size += cost
    return chunks
