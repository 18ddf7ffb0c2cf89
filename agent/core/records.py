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

from .machine import DEFAULT_CONDITION, Condition, State


class Known(msgspec.Struct, tag="known", array_like=True, gc=False):
    """A unit became known (first named by any command)."""

    unit: str
    at: float


class Edge(msgspec.Struct, tag="edge", array_like=True, gc=False):
    """`unit` now wants `dep`, on `on` (SPEC §14); an edge that exists already changes its
    condition. Format 4 added `on`: an edge of an older journal (`[edge, unit, dep]`) is a
    `completed` one. (An agent older than format 4 reads a format-4 edge as `completed`:
    msgspec skips the trailing field; docs/commands.md says so.)"""

    unit: str
    dep: str
    on: Condition = DEFAULT_CONDITION


class OwnerRecord(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """The process a run belongs to: `run` itself (kind "run", which holds a connection
    for as long as its command runs), or the script that called `start`."""

    pid: int
    ticks: int
    """Its start time in clock ticks since the kernel booted: a reused pid differs here."""
    command: str
    kind: str
    pidns: str = ""
    host: str = ""
    """The agent's host that recorded it (several share a graph in etcd): only there can
    its liveness be told."""


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
    owner: OwnerRecord | None = None
    """Who owns the run from here on: set by a start, kept by a service's ready `complete`
    (its `run` goes on holding it), cleared by every other move."""
    host: str = ""
    """For a start: the host of the agent that started the run (whose workspace restart
    will start it over, when several hosts share the graph)."""
    boot: int = 0
    """The boot of the deciding agent's host (0 in records from before boots: the graph's)."""


class Once(msgspec.Struct, tag="once", array_like=True, gc=False):
    """`unit` is a one-time unit: once completed, it stays completed across boots."""

    unit: str


class Boot(msgspec.Struct, tag="boot", array_like=True, gc=False):
    """The agent started in boot `number` (1, 2, ...), whose identity is `identity`.

    `restart`: the workspace restarted (the identity changed): every unit goes back to
    pending with reason "workspace restarted", except completed one-time units. The first
    boot of a state dir (or of one written before boots were recorded) resets nothing.
    """

    number: int
    identity: str
    at: float
    restart: bool


class Forget(msgspec.Struct, tag="forget", array_like=True, gc=False):
    """`unit` was removed, with its history and the edges to what it wanted."""

    unit: str
    at: float


class Reason(msgspec.Struct, tag="reason", array_like=True, gc=False):
    """A started unit's reason changed; its state did not (no history entry)."""

    unit: str
    text: str


class Asked(msgspec.Struct, tag="asked", array_like=True, gc=False):
    """An order for the `run` holding `unit`'s run `token` (`sync stop`, `sync restart`):
    `what` to do, `by` whom (for people). It changes no state: it travels with the changes
    so that every agent of the graph sees it, and the one whose connection holds that run
    passes it on (a shared store's agents each hold their own hosts' runs)."""

    unit: str
    what: str
    token: str
    by: str
    at: float


Record = Known | Edge | Move | Forget | Reason | Once | Boot | Asked


class HistoryEntry(msgspec.Struct, frozen=True, gc=False):
    """One transition of a unit, as the snapshot stores it (a map: fields may be added)."""

    at: float
    from_: State = msgspec.field(name="from")
    to: State
    reason: str = ""
    waited: float | None = None
    boot: int = 1
    """The boot it happened in (entries written before boots were recorded: 1)."""
    restart: bool = False
    """A move to started that is the current run starting its command again."""


class UnitImage(msgspec.Struct, array_like=True, gc=False):
    """Everything the graph holds about one unit: the unit of a snapshot."""

    name: str
    status: State
    since: float
    reason: str
    deps: list[str]
    history: list[HistoryEntry]
    token: str = ""
    once: bool = False
    owner: OwnerRecord | None = None
    host: str = ""
    on: dict[str, Condition] = {}
    """The conditions of its edges that are not `completed` (format 4; older snapshots have
    none: every edge `completed`)."""
    restarts: int = 0
    """How many times the current run started its command again."""


class BootImage(msgspec.Struct, array_like=True, gc=False):
    """The current boot, as a snapshot (format 2) stores it."""

    number: int
    identity: str
    since: float


class SnapshotBody(msgspec.Struct, array_like=True, gc=False):
    """A snapshot's body (format 3): the boot, every unit, the graph's id. Format 2 had no
    graph id (decoded with "" here); format 1 held the units only."""

    boot: BootImage
    units: list[UnitImage]
    graph: str = ""
