"""The unit graph: plain Python, no I/O, no trio.

Commands (`want`, `admit`, `start`, `complete`, `fail`, `reset`) look up what they may
do in the state machine's table (`machine.MOVES`), raise `Refused` without changing
anything when they must, and otherwise return the records they applied. `apply` is the
only place that mutates the graph, so replaying a journal and serving a live request
go through exactly the same code. Making the records durable is the service's job.

A graph that replicates a shared store (`etcd_store`) sets `applies_decisions` to False:
its commands then only decide, and their records reach it through `apply` once the store
has committed them, in the store's order, like every other agent's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from unitsync.wire.errors import Refused
from unitsync.wire.timefmt import timestamp

from .machine import COMPLETE, FAIL, RESET, START, Command, Go, Refuse, State, Stay, outcome
from .records import Edge, HistoryEntry, Known, Move, Record, UnitImage

HISTORY_LIMIT = 100
"""Transitions kept per unit: an agent that runs for months does not grow without bound."""
MAX_NAME_BYTES = 255
MAX_REASON_BYTES = 4096
"""Keeps a unit's view (100 transitions with reasons) far below one frame."""


def check_name(name: str) -> None:
    """Enforce SPEC §1: non-empty UTF-8, at most 255 bytes, no control characters."""
    if not name:
        raise Refused("a unit name must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise Refused(f"unit name {name!r} is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise Refused(
            f"unit name {name[:40]!r}... is {size} bytes long; the limit is {MAX_NAME_BYTES} bytes"
        )
    for char in name:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise Refused(
                f"unit name {name!r} contains the control character U+{ord(char):04X}; "
                "control characters (U+0000-U+001F, U+007F) are not allowed"
            )


@dataclass(eq=False)
class Unit:
    name: str
    since: float
    status: State = "pending"
    reason: str = ""
    token: str = ""
    """The token of the `start` that began the current run."""
    deps: dict[str, None] = field(default_factory=dict)
    """Units this one wants, in declaration order (a dict used as an ordered set)."""
    dependents: set[str] = field(default_factory=set)
    history: deque[HistoryEntry] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))


@dataclass(frozen=True)
class Readiness:
    pending: tuple[str, ...] = ()
    """Dependencies not yet completed."""
    failed: str | None = None
    """A dependency that failed: the start cannot succeed."""

    @property
    def ready(self) -> bool:
        return not self.pending and self.failed is None


class Graph:
    def __init__(self) -> None:
        self.units: dict[str, Unit] = {}
        self.applies_decisions = True
        """Commands apply the records they return (False: they only decide)."""

    # --- the one mutation path ------------------------------------------------------------

    def apply(self, record: Record) -> None:
        # Dispatch on the exact type: replay runs this a million times at start-up.
        kind = type(record)
        if kind is Move:
            unit = self.units[record.unit]
            unit.history.append(
                HistoryEntry(record.at, unit.status, record.to, record.reason, record.waited)
            )
            unit.status, unit.since, unit.reason = record.to, record.at, record.reason
            if record.to == "started":
                unit.token = record.token
        elif kind is Edge:
            self.units[record.unit].deps[record.dep] = None
            self.units[record.dep].dependents.add(record.unit)
        elif record.unit not in self.units:  # Known
            self.units[record.unit] = Unit(record.unit, since=record.at)

    def _applied(self, records: list[Record]) -> list[Record]:
        """Apply `records` in memory and hand them back (for the service to make durable)."""
        if self.applies_decisions:
            for record in records:
                self.apply(record)
        return records

    # --- commands ------------------------------------------------------------------------

    def want(self, name: str, deps: Iterable[str], now: float) -> tuple[list[Record], list[str]]:
        """Declare that `name` depends on each of `deps`; all or nothing."""
        deps = list(dict.fromkeys(deps))
        if not deps:
            raise Refused("want needs at least one dependency", unit=name)
        for each in (name, *deps):
            check_name(each)
        if name in deps:
            raise Refused(f"unit {name!r} cannot depend on itself", unit=name)
        new_edges = [dep for dep in deps if dep not in self._deps(name)]
        for dep in new_edges:
            cycle = self._path(dep, name)
            if cycle:
                path = " -> ".join([name, *cycle])
                raise Refused(f"dependency would close a cycle: {path}", code="cycle", unit=name)
        records: list[Record] = [Known(n, now) for n in (name, *new_edges) if n not in self.units]
        records += [Edge(name, dep) for dep in new_edges]
        notes = []
        unit = self.units.get(name)
        if new_edges and unit is not None and unit.status != "pending":
            notes.append(
                f"{name} is already {unit.status}; the new dependencies apply to its next start"
            )
        return self._applied(records), notes

    def admit(self, name: str, rerun: bool, now: float) -> list[Record]:
        """First step of `start`: register the unit, refuse a second concurrent run early."""
        self._decide(name, START, {"rerun"} if rerun else set())
        return self._applied(self._known(name, now))

    def start(
        self, name: str, rerun: bool, now: float, token: str = "", waited: float | None = None
    ) -> list[Record]:
        """Last step of `start`, once the unit is ready; decided afresh, as another start
        may have begun a run while this one waited."""
        readiness = self.readiness(name)
        if not readiness.ready:
            raise AssertionError(f"start of {name!r} before it is ready: {readiness}")
        return self._move(name, START, {"rerun"} if rerun else set(), now, token, waited)

    def complete(self, name: str, force: bool, now: float) -> list[Record]:
        return self._move(name, COMPLETE, {"force"} if force else set(), now)

    def fail(self, name: str, reason: str, now: float) -> list[Record]:
        if len(reason.encode("utf-8", "surrogatepass")) > MAX_REASON_BYTES:
            check_name(name)
            raise Refused(
                f"the reason is longer than {MAX_REASON_BYTES} bytes; shorten it "
                "(put long logs in a file and name the file)",
                unit=name,
            )
        return self._move(name, FAIL, set(), now, reason=reason)

    def reset(self, name: str | None, now: float) -> list[Record]:
        """Back to pending, edges kept; `None` resets every unit."""
        if name is not None:
            return self._move(name, RESET, set(), now)
        return self._applied(
            [
                Move(n, "pending", now, "reset")
                for n, unit in self.units.items()
                if unit.status != "pending"
            ]
        )

    # --- the table, applied ----------------------------------------------------------------

    def _decide(self, name: str, command: Command, overrides: set[str]) -> Go | Stay:
        """The table's outcome for `command` on `name`, or the refusal it calls for."""
        check_name(name)
        unit = self.units.get(name)
        result = outcome(unit.status if unit else None, command, frozenset(overrides))
        if isinstance(result, Refuse):
            raise Refused(_refusal_message(name, unit, result), code=result.code, unit=name)
        return result

    def _move(
        self,
        name: str,
        command: Command,
        overrides: set[str],
        now: float,
        token: str = "",
        waited: float | None = None,
        reason: str | None = None,
    ) -> list[Record]:
        result = self._decide(name, command, overrides)
        records = self._known(name, now)
        if isinstance(result, Go):
            why = result.reason if reason is None else reason
            records.append(Move(name, result.to, now, why, token, waited))
        return self._applied(records)

    def _known(self, name: str, now: float) -> list[Record]:
        return [] if name in self.units else [Known(name, now)]

    # --- queries -------------------------------------------------------------------------

    def readiness(self, name: str) -> Readiness:
        pending = []
        for dep in self._deps(name):
            status = self.units[dep].status
            if status == "failed":
                return Readiness(failed=dep)
            if status != "completed":
                pending.append(dep)
        return Readiness(pending=tuple(pending))

    def get(self, name: str) -> Unit:
        check_name(name)
        try:
            return self.units[name]
        except KeyError:
            raise Refused(
                f"unknown unit {name!r}: no command has named it yet",
                code="unknown_unit",
                unit=name,
            ) from None

    # --- snapshots -----------------------------------------------------------------------

    def images(self) -> Iterator[UnitImage]:
        for unit in self.units.values():
            yield UnitImage(
                unit.name,
                unit.status,
                unit.since,
                unit.reason,
                list(unit.deps),
                list(unit.history),
                unit.token,
            )

    @classmethod
    def from_images(cls, images: Iterable[UnitImage]) -> Graph:
        graph = cls()
        images = list(images)
        for image in images:
            unit = Unit(image.name, image.since, image.status, image.reason, image.token)
            unit.history.extend(image.history)
            graph.units[image.name] = unit
        for image in images:
            for dep in image.deps:
                graph.apply(Edge(image.name, dep))
        return graph

    # --- internals -----------------------------------------------------------------------

    def _deps(self, name: str) -> Iterable[str]:
        unit = self.units.get(name)
        return unit.deps if unit else ()

    def _path(self, start: str, goal: str) -> list[str] | None:
        """A dependency path from `start` to `goal`, if there is one (depth-first)."""
        parent: dict[str, str | None] = {start: None}
        stack = [start]
        while stack:
            node = stack.pop()
            if node == goal:
                path = [node]
                while (up := parent[path[-1]]) is not None:
                    path.append(up)
                return path[::-1]
            for dep in self._deps(node):
                if dep not in parent:
                    parent[dep] = node
                    stack.append(dep)
        return None


def _refusal_message(name: str, unit: Unit | None, refusal: Refuse) -> str:
    """What a refused command says: what is wrong, and what to do instead."""
    if refusal.code == "already_started":
        assert unit is not None
        return (
            f"unit {name!r} already started at {timestamp(unit.since)}; "
            "use --rerun to start a new run"
        )
    if refusal.code == "not_started":
        if unit is None:
            known = "is not known to the agent"
        elif unit.history:
            known = "has not been started since it was reset"
        else:
            known = "was never started"
        return f"unit {name!r} {known}; check the name, or use --force to complete it anyway"
    if refusal.code == "unknown_unit":
        return f"unknown unit {name!r}: no command has named it yet; check the name"
    raise AssertionError(f"no message for the refusal {refusal}")
