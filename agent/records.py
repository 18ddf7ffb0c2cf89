"""The records that change the unit graph.

Every accepted command becomes a short list of records; the graph applies them
and the journal stores them. Records describe effects, not requests, so replay
needs no validation and does not depend on who was waiting at the time.
"""

from __future__ import annotations

import msgspec

from unitsync.client.protocol import State, Transition


class Known(msgspec.Struct, tag="known", array_like=True):
    """A unit became known (first named by any command)."""

    unit: str
    at: float


class Edge(msgspec.Struct, tag="edge", array_like=True):
    """`unit` now wants `dep`."""

    unit: str
    dep: str


class Move(msgspec.Struct, tag="move", array_like=True):
    """`unit` changed state."""

    unit: str
    to: State
    at: float
    reason: str = ""
    token: str = ""
    """For a start: the client's token, so a retried start is recognised as the same run."""
    waited: float | None = None
    """For a start: how long it waited for its dependencies."""


Record = Known | Edge | Move


class UnitImage(msgspec.Struct, array_like=True):
    """Everything the graph holds about one unit: the unit of a snapshot."""

    name: str
    status: State
    since: float
    reason: str
    deps: list[str]
    history: list[Transition]
    token: str = ""
