"""The unit graph and its state machine: plain Python, no I/O, no trio.

Commands (`want`, `admit`, `start`, `complete`, `fail`, `reset`) validate their
arguments against the current state, raise `Refused` without changing anything
when they must, and otherwise return the records they applied. `apply` is the
only place that mutates the graph, so replaying a journal and serving a live
request go through exactly the same code.
"""

from __future__ import annotations

import datetime
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from unitsync.client.protocol import Dependency, ErrorCode, State, Transition, UnitView

from .records import Edge, Known, Move, Record, UnitImage

HISTORY_LIMIT = 100
MAX_NAME_BYTES = 255
MAX_REASON_BYTES = 4096
"""Keeps a unit's view (100 transitions with reasons) far below one frame."""


class Refused(Exception):
    """A command the graph will not carry out; the message says what to do instead."""

    def __init__(
        self, code: ErrorCode, message: str, unit: str | None = None, dependency: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.unit = unit
        self.dependency = dependency


def check_name(name: str) -> None:
    """Enforce SPEC §1: non-empty UTF-8, at most 255 bytes, no control characters."""
    if not name:
        raise Refused("invalid", "a unit name must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise Refused("invalid", f"unit name {name!r} is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise Refused(
            "invalid",
            f"unit name {name[:40]!r}... is {size} bytes long; the limit is {MAX_NAME_BYTES} bytes",
        )
    for char in name:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise Refused(
                "invalid",
                f"unit name {name!r} contains the control character U+{ord(char):04X}; "
                "control characters (U+0000-U+001F, U+007F) are not allowed",
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
    history: deque[Transition] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))


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

    # --- the one mutation path ------------------------------------------------------------

    def apply(self, record: Record) -> None:
        # Dispatch on the exact type: replay runs this a million times at start-up.
        kind = type(record)
        if kind is Move:
            unit = self.units[record.unit]
            unit.history.append(
                Transition(record.at, unit.status, record.to, record.reason, record.waited)
            )
            unit.status, unit.since, unit.reason = record.to, record.at, record.reason
            if record.to == "started":
                unit.token = record.token
        elif kind is Edge:
            self.units[record.unit].deps[record.dep] = None
            self.units[record.dep].dependents.add(record.unit)
        elif record.unit not in self.units:  # Known
            self.units[record.unit] = Unit(record.unit, since=record.at)

    def _commit(self, records: list[Record]) -> list[Record]:
        for record in records:
            self.apply(record)
        return records

    # --- commands ------------------------------------------------------------------------

    def want(self, name: str, deps: Iterable[str], now: float) -> tuple[list[Record], list[str]]:
        """Declare that `name` depends on each of `deps`; all or nothing."""
        deps = list(dict.fromkeys(deps))
        if not deps:
            raise Refused("invalid", "want needs at least one dependency", unit=name)
        for each in (name, *deps):
            check_name(each)
        if name in deps:
            raise Refused("invalid", f"unit {name!r} cannot depend on itself", unit=name)
        new_edges = [dep for dep in deps if dep not in self._deps(name)]
        for dep in new_edges:
            cycle = self._path(dep, name)
            if cycle:
                path = " -> ".join([name, *cycle])
                raise Refused("cycle", f"dependency would close a cycle: {path}", unit=name)
        records: list[Record] = [Known(n, now) for n in (name, *new_edges) if n not in self.units]
        records += [Edge(name, dep) for dep in new_edges]
        notes = []
        unit = self.units.get(name)
        if new_edges and unit is not None and unit.status != "pending":
            notes.append(
                f"{name} is already {unit.status}; the new dependencies apply to its next start"
            )
        return self._commit(records), notes

    def admit(self, name: str, rerun: bool, now: float) -> list[Record]:
        """First step of `start`: register the unit and refuse a second concurrent run."""
        check_name(name)
        unit = self.units.get(name)
        if unit is None:
            return self._commit([Known(name, now)])
        if unit.status == "started" and not rerun:
            raise Refused(
                "already_started",
                f"unit {name!r} already started at {_clock(unit.since)}; "
                "use --rerun to start a new run",
                unit=name,
            )
        return []

    def start(
        self, name: str, rerun: bool, now: float, token: str = "", waited: float | None = None
    ) -> list[Record]:
        """Mark a ready unit started (the last step of `start`)."""
        readiness = self.readiness(name)
        if not readiness.ready:
            raise AssertionError(f"start of {name!r} before it is ready: {readiness}")
        known = self.admit(name, rerun, now)
        reason = "" if self.units[name].status == "pending" else "new run"
        return known + self._commit([Move(name, "started", now, reason, token, waited)])

    def complete(self, name: str, force: bool, now: float) -> list[Record]:
        check_name(name)
        unit = self.units.get(name)
        status = unit.status if unit else None
        if status == "completed":
            return []
        if status in (None, "pending") and not force:
            if unit is None:
                known = "is not known to the agent"
            elif unit.history:
                known = "has not been started since it was reset"
            else:
                known = "was never started"
            raise Refused(
                "not_started",
                f"unit {name!r} {known}; check the name, or use --force to complete it anyway",
                unit=name,
            )
        records: list[Record] = [] if unit else [Known(name, now)]
        reason = "forced" if status in (None, "pending") else ""
        return self._commit([*records, Move(name, "completed", now, reason)])

    def fail(self, name: str, reason: str, now: float) -> list[Record]:
        check_name(name)
        if len(reason.encode("utf-8", "surrogatepass")) > MAX_REASON_BYTES:
            raise Refused(
                "invalid",
                f"the reason is longer than {MAX_REASON_BYTES} bytes; shorten it "
                "(put long logs in a file and name the file)",
                unit=name,
            )
        records: list[Record] = [] if name in self.units else [Known(name, now)]
        return self._commit([*records, Move(name, "failed", now, reason)])

    def reset(self, name: str | None, now: float) -> list[Record]:
        """Back to pending, edges kept; `None` resets every unit."""
        if name is None:
            names: Iterable[str] = list(self.units)
            records: list[Record] = []
        else:
            check_name(name)
            names = [name]
            records = [] if name in self.units else [Known(name, now)]
        records += [
            Move(n, "pending", now, "reset")
            for n in names
            if n in self.units and self.units[n].status != "pending"
        ]
        return self._commit(records)

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
                "unknown_unit",
                f"unknown unit {name!r}: no command has named it yet",
                unit=name,
            ) from None

    def view(self, name: str, waiting_on: list[str] | None = None, waiters: int = 0) -> UnitView:
        unit = self.get(name)
        return UnitView(
            name=name,
            status=unit.status,
            ready=self.readiness(name).ready,
            since=unit.since,
            reason=unit.reason,
            waiting_on=waiting_on or [],
            waiters=waiters,
            dependencies=[
                Dependency(dep, "completed", s := self.units[dep].status, s == "completed")
                for dep in unit.deps
            ],
            dependents=sorted(unit.dependents),
            history=list(unit.history),
        )

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


def _clock(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")
