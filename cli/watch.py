"""`status --watch`: a live table on a terminal, one JSON object per event otherwise."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from unitsync.client.client import Client, UnitsyncError
from unitsync.wire.protocol import Changed, FullView, UnitView
from unitsync.wire.timefmt import duration as format_duration

from .gantt import rich_bar
from .render import plain
from .timeline import Timeline, build_timeline, note_waits

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions
    from rich.table import Table

BAR_CELLS = 30
"""The widest a unit's timeline bar gets (the whole boot, rescaled as it grows)."""
MIN_BAR_CELLS = 10
"""Narrower than this a bar says nothing: a terminal that narrow gets no timeline column."""
STATUS_STYLE = {"pending": "dim", "started": "cyan", "completed": "green", "failed": "bold red"}


def follow(client: Client, unit: str | None, live: bool) -> int:
    """Show every change until Ctrl-C (exit 0) or a refusal (its exit code)."""
    try:
        if live:
            _live_table(client, unit)
        else:
            _json_lines(client, unit)
    except KeyboardInterrupt:
        return 0
    except UnitsyncError as exc:
        print(f"unitsync: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _json_lines(client: Client, unit: str | None) -> None:
    outage = False

    def unreachable(exc: UnitsyncError) -> None:
        nonlocal outage
        if not outage:  # one line per outage, not one per retry
            print(f"unitsync: agent unreachable, reconnecting: {exc}", file=sys.stderr)
        outage = True

    for event in client.watch(unit, on_unreachable=unreachable):
        outage = False
        if isinstance(event, FullView):
            line = {"event": "snapshot", "at": event.at, "units": [plain(u) for u in event.units]}
        else:
            line = {"event": "changed", "at": event.at, "unit": plain(event.unit)}
        print(json.dumps(line, ensure_ascii=False), flush=True)


class _Board:
    """The live table's state; rendered afresh on every refresh so durations tick."""

    def __init__(self, unit: str | None) -> None:
        self.unit = unit
        self.units: dict[str, UnitView] = {}
        self.note = ""
        self.wait_began: dict[str, float] = {}
        """When each waiting start began to wait, as seen by this watch (for its bar)."""

    def apply(self, event: FullView | Changed) -> None:
        if isinstance(event, FullView):
            self.units = {u.name: u for u in event.units}
            note_waits(self.wait_began, event.units, None)  # since when, it cannot say
        else:
            self.units[event.unit.name] = event.unit
            note_waits(self.wait_began, [event.unit], event.at)
        self.note = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        """The table, with each unit's timeline bar in the width the terminal leaves free."""
        from rich.measure import Measurement

        now = time.time()
        timeline = build_timeline(list(self.units.values()), now, wait_began=self.wait_began)
        table = self._table(now, timeline, 0)
        free = options.max_width - Measurement.get(console, options, table).maximum - 3
        if free >= MIN_BAR_CELLS:  # 3: the new column's border and padding
            table = self._table(now, timeline, min(free, BAR_CELLS))
        yield table

    def _table(self, now: float, timeline: Timeline, bar_cells: int) -> Table:
        from rich.table import Table

        title = f"{self.unit} and its dependencies" if self.unit else "every unit"
        caption = self.note or "Ctrl-C to stop"
        table = Table(title=f"unitsync: {title}", caption=caption, title_justify="left")
        for column in ("UNIT", "STATUS", "READY", "WAITING ON", "SINCE", "FOR", "REASON"):
            table.add_column(column, no_wrap=column != "REASON")
        bars = {row.name: row for row in timeline.rows}
        if bar_cells:
            table.add_column("TIMELINE", no_wrap=True, width=bar_cells)
        for view in sorted(self.units.values(), key=lambda u: u.name):
            blocking = view.waiting_on or [d.unit for d in view.dependencies if not d.satisfied]
            cells = [
                view.name,
                f"[{STATUS_STYLE[view.status]}]{view.status}[/]",
                "yes" if view.ready else "no",
                ", ".join(blocking) or "-",
                time.strftime("%H:%M:%S", time.localtime(view.since)),
                format_duration(now - view.since),
                view.reason or "-",
            ]
            if bar_cells:
                row = bars.get(view.name)
                cells.append(rich_bar(row, timeline, bar_cells) if row else "")
            table.add_row(*cells)
        return table


def _live_table(client: Client, unit: str | None) -> None:
    from rich.live import Live

    board = _Board(unit)

    def unreachable(exc: UnitsyncError) -> None:
        board.note = f"agent unreachable, reconnecting: {exc}"
        live.refresh()

    with Live(board, refresh_per_second=2, auto_refresh=True) as live:
        for event in client.watch(unit, on_unreachable=unreachable):
            board.apply(event)
            live.refresh()
