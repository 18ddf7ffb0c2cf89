"""The records that change the unit graph: the journal's own types (its on-disk format).

Every accepted command becomes a short list of records; the graph applies them
and the journal stores them. Records describe effects, not requests, so replay
needs no validation and does not depend on who was waiting at the time.

These types belong to the agent alone: the wire has its own (`unitsync.wire.protocol`)
and `views.py` converts between them, so a protocol change never changes what is on
disk. `tests/test_journal.py` loads a journal and snapshot written by an earlier
release (`tests/fixtures/`) to pin the format.

Records hold plain values and can never be part of a reference cycle, so they are
not tracked by the cyclic GC (`gc=False`): replay creates a million of them, and
skipping the tracking makes decoding and applying them a sixth faster.
"""

from __future__ import annotations

import msgspec

from .machine import State


class Known(msgspec.Struct, tag="known", array_like=True, gc=False):
    """A unit became known (first named by any command)."""

    unit: str
    at: float


class Edge(msgspec.Struct, tag="edge", array_like=True, gc=False):
    """`unit` now wants `dep`."""

    unit: str
    dep: str


class Move(msgspec.Struct, tag="move", array_like=True, gc=False):
    """`unit` changed state."""

    unit: str
    to: State
    at: float
    reason: str = ""
    token: str = ""
    """For a start: the client's token, so a retried start is recognised as the same run."""
    waited: float | None = None
    """For a start: how long it waited for its dependencies."""


class Forget(msgspec.Struct, tag="forget", array_like=True, gc=False):
    """`unit` was removed, with its history and the edges to what it wanted."""

    unit: str
    at: float


class Reason(msgspec.Struct, tag="reason", array_like=True, gc=False):
    """A started unit's reason changed; its state did not (no history entry)."""

    unit: str
    text: str


Record = Known | Edge | Move | Forget | Reason


class HistoryEntry(msgspec.Struct, frozen=True, gc=False):
    """One transition of a unit, as the snapshot stores it (a map: fields may be added)."""

    at: float
    from_: State = msgspec.field(name="from")
    to: State
    reason: str = ""
    waited: float | None = None


class UnitImage(msgspec.Struct, array_like=True, gc=False):
    """Everything the graph holds about one unit: the unit of a snapshot."""

    name: str
    status: State
    since: float
    reason: str
    deps: list[str]
    history: list[HistoryEntry]
    token: str = ""
