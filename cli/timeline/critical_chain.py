"""The chain of dependencies that decided when a unit could start (SPEC §9). Pure.

As `systemd-analyze critical-chain` does: from the unit, step to the dependency that
finished last before the unit started (the one it was still waiting for), and repeat. A
dependency wanted `--on started` stopped holding the unit up when it started, not when it
finished: the chain steps to it by its start, and through it goes on from that start.
A unit that never started (its start waits, or failed because a dependency failed)
steps to the dependency that holds it up: one not finished yet, else the last to end.
"""

from __future__ import annotations

import math

from unitsync.wire.errors import NotInHistory

from .model import Row, Timeline


def default_unit(timeline: Timeline) -> str:
    """The unit that completed last: where the start-up as a whole was held up."""
    completed = [row for row in timeline.rows if row.outcome == "completed"]
    if not completed:
        raise NotInHistory(
            f"no unit has completed in boot {timeline.boot} yet; "
            "name the unit whose chain you want: `unitsync sync critical-chain UNIT`"
        )
    return max(completed, key=lambda row: (row.ended or 0.0, row.name)).name


def critical_chain(timeline: Timeline, unit: str | None = None) -> list[Row]:
    """The unit's row, then each dependency that held it up, in order (longest first)."""
    rows = {row.name: row for row in timeline.rows}
    name = default_unit(timeline) if unit is None else unit
    row = rows.get(name)
    if row is None:
        raise NotInHistory(
            f"unit {name!r} has no history in boot {timeline.boot}; "
            "`unitsync sync timeline` lists the units of the boot"
        )
    chain = [row]
    seen = {name}
    while (nxt := _holding_up(row, rows, seen)) is not None:
        chain.append(nxt)
        seen.add(nxt.name)
        row = nxt
    return chain


def _holding_up(row: Row, rows: dict[str, Row], seen: set[str]) -> Row | None:
    # A run could begin only once its dependencies had finished: the last one to finish
    # before it began is the one it waited for. Without a run, the unfinished one is.
    limit = row.started if row.started is not None else row.ended
    if limit is None:
        limit = math.inf
    candidates = [
        (freed, rows[dep])
        for dep in row.deps
        if dep in rows
        and dep not in seen
        and (freed := _freed(rows[dep], row.condition(dep))) <= limit
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda item: item[0])[1]


def _freed(row: Row, on: str) -> float:
    """When the row stopped holding up a dependent that wants it `on`: its start for a
    `started` edge (ordering only), its end for the others."""
    if on == "started" and row.started is not None:
        return row.started
    return _finish(row)


def _finish(row: Row) -> float:
    """When the row stopped holding its dependents up (never, while it runs or waits)."""
    if row.outcome in ("completed", "failed", "interrupted") and row.ended is not None:
        return row.ended
    return math.inf
