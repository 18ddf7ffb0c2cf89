"""`status --watch`: a live table on a terminal, one JSON object per event otherwise."""

from __future__ import annotations

import json
import sys
import time

from unitsync.client.client import Client, UnitsyncError
from unitsync.wire.protocol import Changed, FullView, UnitView

from .render import STATUS_STYLES, TABLE_COLUMNS, plain, table_row


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

    def apply(self, event: FullView | Changed) -> None:
        if isinstance(event, FullView):
            self.units = {u.name: u for u in event.units}
        else:
            self.units[event.unit.name] = event.unit
        self.note = ""

    def __rich__(self) -> object:
        from rich.markup import escape
        from rich.table import Table

        now = time.time()
        title = f"{self.unit} and its dependencies" if self.unit else "every unit"
        caption = self.note or "Ctrl-C to stop"
        table = Table(title=f"unitsync: {title}", caption=caption, title_justify="left")
        for column in TABLE_COLUMNS:
            table.add_column(column, no_wrap=column != "REASON")
        for view in sorted(self.units.values(), key=lambda u: u.name):
            cells = [escape(cell) for cell in table_row(view, now)]  # names are not markup
            cells[1] = f"[{STATUS_STYLES[view.status][0]}]{cells[1]}[/]"
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
