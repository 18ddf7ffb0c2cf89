"""The one seam between the agent's state and the wire: the graph's units as `UnitView`s.

The graph and the journal keep their own types (`records.py`); what clients see is
built here, so either side can change without the other noticing.
"""

from __future__ import annotations

from unitsync.wire.protocol import Dependency, Transition, UnitView

from .graph import Graph
from .records import HistoryEntry


def unit_view(
    graph: Graph, name: str, waiting_on: list[str] | None = None, waiters: int = 0
) -> UnitView:
    """The view of `name` (which must be known) for `status`, watchers and replies."""
    unit = graph.get(name)
    units = graph.units
    return UnitView(
        name=name,
        status=unit.status,
        ready=graph.readiness(name).ready,
        since=unit.since,
        reason=unit.reason,
        waiting_on=waiting_on or [],
        waiters=waiters,
        dependencies=[
            Dependency(dep, "completed", status := units[dep].status, status == "completed")
            for dep in unit.deps
        ],
        dependents=sorted(unit.dependents),
        history=[transition(entry) for entry in unit.history],
    )


def transition(entry: HistoryEntry) -> Transition:
    return Transition(entry.at, entry.from_, entry.to, entry.reason, entry.waited)
