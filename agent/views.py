"""The one seam between the agent's state and the wire, both ways: the graph's units as
`UnitView`s, and what a request carries (its run's owner) as the journal keeps it.

The graph and the journal keep their own types (`records.py`); what clients see is
built here, and what they send is turned into records here, so either side can change
without the other noticing.
"""

from __future__ import annotations

from unitsync.wire.protocol import Dependency, Owner, OwnerView, Transition, UnitView

from .graph import Graph
from .records import HistoryEntry, OwnerRecord


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
    units = graph.units
    owner = unit.owner
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
        once=unit.once,
        owner=owner and OwnerView(owner.pid, owner.command, owner.kind, owner_alive),  # type: ignore[arg-type]
    )


def transition(entry: HistoryEntry) -> Transition:
    return Transition(entry.at, entry.from_, entry.to, entry.reason, entry.waited, entry.boot)


def owner_record(owner: Owner | None, host: str) -> OwnerRecord | None:
    """A request's owner as the journal keeps it, on the host of the agent that took it."""
    if owner is None:
        return None
    return OwnerRecord(owner.pid, owner.ticks, owner.command, owner.kind, owner.pidns, host)
