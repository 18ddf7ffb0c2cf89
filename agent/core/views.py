"""The one seam between the agent's state and the wire, both ways: the graph's units as
`UnitView`s, and what a request carries (its run's owner) as the journal keeps it.

The graph and the journal keep their own types (`records.py`); what clients see is
built here, and what they send is turned into records here, so either side can change
without the other noticing.

Every view fits in a frame, whatever the graph holds (SPEC §12): a list or a string longer
than its bound (`wire.bounds`) is cut here, and the view's `cut` says what was left out. In
a graph made under the bounds only a unit wanted by more than DEPENDENTS_SHOWN units is cut;
a journal written before them may hold more.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import ItemsView

from unitsync.wire.bounds import (
    DEPENDENTS_SHOWN,
    MAX_COMMAND_BYTES,
    MAX_DEPS,
    MAX_REASON_BYTES,
    cut_utf8,
)
from unitsync.wire.protocol import Dependency, Owner, OwnerView, Transition, UnitView

from .graph import Graph
from .machine import NEEDS, Condition, Verdict
from .records import HistoryEntry, OwnerRecord

CUT_MARK = "…"
"""Ends a string cut to its bound (3 bytes of UTF-8, counted in the bound)."""
BEFORE_THE_BOUNDS = "stored before that bound"


def unit_view(
    graph: Graph,
    name: str,
    waiting_on: list[str] | None = None,
    waiters: int = 0,
    owner_alive: bool | None = None,
) -> UnitView:
    """The view of `name` (which must be known) for `status`, watchers and replies.

    `owner_alive` says whether the owner of its run still runs (None: cannot tell), which
    only the agent's shell can find out.
    """
    unit = graph.get(name)
    owner = unit.owner
    cut: list[str] = []
    deps: list[tuple[str, Condition]] | ItemsView[str, Condition] = unit.deps.items()
    if len(deps) > MAX_DEPS:  # only a journal from before the bound holds more
        deps = list(itertools.islice(deps, MAX_DEPS))
        cut.append(_not_listed("dependencies", len(unit.deps), MAX_DEPS, BEFORE_THE_BOUNDS))
    waiting_on = waiting_on or []
    if len(waiting_on) > MAX_DEPS:
        cut.append(_not_listed("waiting_on", len(waiting_on), MAX_DEPS, BEFORE_THE_BOUNDS))
        waiting_on = waiting_on[:MAX_DEPS]
    if len(unit.dependents) > DEPENDENTS_SHOWN:  # any number may want a unit
        dependents = heapq.nsmallest(DEPENDENTS_SHOWN, unit.dependents)
        why = f"a view lists the first {DEPENDENTS_SHOWN} by name"
        cut.append(_not_listed("dependents", len(unit.dependents), DEPENDENTS_SHOWN, why))
    else:
        dependents = sorted(unit.dependents)
    history = [transition(entry) for entry in unit.history]
    cut_reasons = 0
    for i, entry in enumerate(history):
        if len(entry.reason) > MAX_REASON_BYTES // 4 and _too_long(entry.reason, MAX_REASON_BYTES):
            history[i] = Transition(
                entry.at,
                entry.from_,
                entry.to,
                _cut(entry.reason, MAX_REASON_BYTES),
                entry.waited,
                entry.boot,
                entry.restart,
            )
            cut_reasons += 1
    if cut_reasons:
        cut.append(
            f"history: the reasons of {cut_reasons} transition(s) cut to {MAX_REASON_BYTES:,} "
            f"bytes ({BEFORE_THE_BOUNDS})"
        )
    return UnitView(
        name=name,
        status=unit.status,
        ready=graph.readiness(name).ready,
        since=unit.since,
        reason=_bounded("reason", unit.reason, MAX_REASON_BYTES, cut),
        waiting_on=waiting_on,
        waiters=waiters,
        dependencies=[_dependency(graph, dep, on) for dep, on in deps],
        dependents=dependents,
        history=history,
        once=unit.once,
        restarts=unit.restarts,
        owner=owner
        and OwnerView(
            owner.pid,
            _bounded("owner", owner.command, MAX_COMMAND_BYTES, cut, "its command "),
            owner.kind,  # type: ignore[arg-type]
            owner_alive,
        ),
        cut=cut,
        host=unit.host,
    )


def _dependency(graph: Graph, dep: str, on: Condition) -> Dependency:
    """One edge as `status` shows it: its condition, DEP's status, and whether it holds."""
    status = graph.units[dep].status
    state = graph.dep_state(dep) if status == "failed" else status  # only then: the history
    return Dependency(dep, on, status, NEEDS[on, state] is Verdict.SATISFIED)


def transition(entry: HistoryEntry) -> Transition:
    return Transition(
        entry.at, entry.from_, entry.to, entry.reason, entry.waited, entry.boot, entry.restart
    )


def _not_listed(what: str, total: int, shown: int, why: str) -> str:
    return f"{what}: {total - shown:,} of {total:,} not listed ({why})"


def _bounded(field: str, text: str, limit: int, cut: list[str], what: str = "") -> str:
    """`text`, or, past `limit` bytes (a journal from before the bound), its head, noted."""
    if len(text) <= limit // 4 or not _too_long(text, limit):  # nearly always the first test
        return text
    size = len(text.encode("utf-8", "surrogatepass"))
    cut.append(f"{field}: {what}cut to {limit:,} of {size:,} bytes ({BEFORE_THE_BOUNDS})")
    return _cut(text, limit)


def _too_long(text: str, limit: int) -> bool:
    return len(text.encode("utf-8", "surrogatepass")) > limit


def _cut(text: str, limit: int) -> str:
    return cut_utf8(text, limit - len(CUT_MARK.encode())) + CUT_MARK


def owner_record(owner: Owner | None, host: str) -> OwnerRecord | None:
    """A request's owner as the journal keeps it, on the host of the agent that took it."""
    if owner is None:
        return None
    return OwnerRecord(owner.pid, owner.ticks, owner.command, owner.kind, owner.pidns, host)
