"""`status --watch`: a live table on a terminal, one JSON object per event otherwise."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from unitsync.client.client import Client, UnitsyncError
from unitsync.wire.protocol import Changed, FullView, UnitView

from .cells import NAME_CELLS, width
from .gantt import rich_bar
from .render import STATUS_STYLES, TABLE_COLUMNS, plain, table_row
from .timeline import Timeline, build_timeline, note_waits

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions
    from rich.table import Table

BAR_CELLS = 30
"""The widest a unit's timeline bar gets (the whole boot, rescaled as it grows)."""
MIN_BAR_CELLS = 10
"""Narrower than this a bar says nothing: a terminal that narrow gets no timeline column."""


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


FIXED_CELLS = {
    "STATUS": len("completed"),
    "READY": len("READY"),
    "SINCE": 8,
    "FOR": 6,
    "OWNER": len("OWNER"),
}
"""Columns that never give way: whatever the terminal's width, these stay readable."""
SHARES = {"UNIT": 0.45, "WAITING ON": 0.25}
"""On a narrow terminal, the part of the remaining width names may take (REASON: the rest)."""
CELL_OVERHEAD = 3
"""A border and two cells of padding per column."""


def column_widths(rows: list[list[str]], cells: int) -> dict[str, int]:
    """Widths for the flexible columns (UNIT, WAITING ON, REASON) so the table fits `cells`."""
    natural = {
        name: max([width(row[i]) for row in rows] + [len(name)])
        for i, name in enumerate(TABLE_COLUMNS)
    }
    natural["UNIT"] = min(natural["UNIT"], NAME_CELLS)
    natural["WAITING ON"] = min(natural["WAITING ON"], NAME_CELLS)
    room = cells - _fixed_and_borders()
    widths = {name: natural[name] for name in SHARES}
    if sum(widths.values()) + natural["REASON"] > room:
        for name, share in SHARES.items():
            widths[name] = max(min(natural[name], int(room * share)), len(name[:7]))
    widths["REASON"] = max(min(room - sum(widths.values()), natural["REASON"]), 6)
    return widths


def _fixed_and_borders() -> int:
    return sum(FIXED_CELLS.values()) + CELL_OVERHEAD * len(TABLE_COLUMNS) + 1


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
        now = time.time()
        views = sorted(self.units.values(), key=lambda u: u.name)
        rows = [table_row(view, now) for view in views]
        widths = column_widths(rows, options.max_width)
        free = options.max_width - sum(widths.values()) - _fixed_and_borders() - CELL_OVERHEAD
        bar_cells = min(free, BAR_CELLS) if free >= MIN_BAR_CELLS else 0
        timeline = build_timeline(list(self.units.values()), now, wait_began=self.wait_began)
        yield self._table(views, rows, widths, timeline, bar_cells)

    def _table(
        self,
        views: list[UnitView],
        rows: list[list[str]],
        widths: dict[str, int],
        timeline: Timeline,
        bar_cells: int,
    ) -> Table:
        from rich.markup import escape
        from rich.table import Table

        title = f"{self.unit} and its dependencies" if self.unit else "every unit"
        caption = self.note or "Ctrl-C to stop"
        table = Table(title=f"unitsync: {title}", caption=caption, title_justify="left")
        for column in TABLE_COLUMNS:
            if column in FIXED_CELLS:
                table.add_column(column, min_width=FIXED_CELLS[column], no_wrap=True)
            else:
                table.add_column(
                    column, max_width=widths[column], overflow="ellipsis", no_wrap=True
                )
        if bar_cells:
            table.add_column("TIMELINE", no_wrap=True, width=bar_cells)
        bars = {row.name: row for row in timeline.rows}
        for view, row in zip(views, rows, strict=True):
            cells = [escape(cell) for cell in row]  # names are not markup
            cells[1] = f"[{STATUS_STYLES[view.status][0]}]{cells[1]}[/]"
            if bar_cells:
                bar = bars.get(view.name)
                cells.append(rich_bar(bar, timeline, bar_cells) if bar else "")
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
