"""`status --watch`: a live table on a terminal, one JSON object per event otherwise.

The live table has two threads: the watch (the main thread, where Ctrl-C lands) feeds a
`_Board`; rich's refresh thread draws it. The board's lock is all they share, and is held
only to apply an event or to build one frame's rows, never while waiting on the agent.

A watch follows whatever graph the socket serves (SPEC §11): when a reconnection finds an
agent of another graph (another state dir), it does not stop, but says so, in the table's
note line (which stays) or as a `graph-changed` JSON event, before that graph's snapshot.
"""

from __future__ import annotations

import heapq
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from unitsync.client import Client, GraphChanged, UnitsyncError
from unitsync.wire.graph_id import short
from unitsync.wire.protocol import Changed, FullView, UnitView

from .app import error_exit
from .live_columns import layout
from .render import STATUS_STYLES, TABLE_COLUMNS, cut_note, plain, table_row
from .timeline.gantt import rich_bar
from .timeline.live import LiveTimeline
from .timeline.model import Timeline, note_waits

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions
    from rich.table import Table


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
        return error_exit(exc)
    return 0


def _json_lines(client: Client, unit: str | None) -> None:
    outage = False

    def unreachable(exc: UnitsyncError) -> None:
        nonlocal outage
        if not outage:  # one line per outage, not one per retry
            print(f"unitsync: agent unreachable, reconnecting: {exc}", file=sys.stderr)
        outage = True

    def graph_changed(exc: GraphChanged) -> None:
        line = {
            "event": "graph-changed",
            "at": time.time(),
            "socket": str(client.path),
            "from": {"graph": exc.expected, "state": exc.expected_state},
            "to": {"graph": exc.found, "state": exc.found_state},
        }
        print(json.dumps(line, ensure_ascii=False), flush=True)

    for event in client.watch(unit, on_unreachable=unreachable, on_graph_changed=graph_changed):
        outage = False
        if isinstance(event, FullView):
            line = {"event": "snapshot", "at": event.at, "units": [plain(u) for u in event.units]}
        else:
            line = {"event": "changed", "at": event.at, "unit": plain(event.unit)}
        print(json.dumps(line, ensure_ascii=False), flush=True)


REFRESHES_PER_SECOND = 2
"""How often the live table redraws: durations tick and a change shows within half a
second, however fast changes come (a start-up of 10,000 units is not 10,000 redraws). A
redraw costs rich about a millisecond per row shown: a few percent of a core at this rate."""
FRAME_LINES = 8
"""Lines of a frame besides its rows: title, the header's three, the bottom border, the
caption, the line saying how many units are not shown, and one spare (a frame as tall as
the terminal would scroll it)."""
ATTENTION = {"failed": 0, "waiting": 1, "started": 2, "pending": 3, "completed": 4}
"""The live table's order, units that need a look first: what failed, what waits for its
dependencies, what runs; then what has not started and what is done. By name within each."""


def attention(view: UnitView) -> tuple[int, str]:
    """Where a unit goes in the live table (a start waiting on it counts as waiting)."""
    return ATTENTION["waiting" if view.waiters else view.status], view.name


class _Board:
    """The live table's state, drawn by rich's refresh thread, fed by the watch.

    A frame shows as many units as the terminal has lines for, those in `attention` order;
    its cost grows with the rows shown, plus, only after changes, one pass over the units
    to pick them again and to catch the timeline up.
    """

    def __init__(self, unit: str | None) -> None:
        self.unit = unit
        self.units: dict[str, UnitView] = {}
        self.note = ""
        """What the watch is going through (an outage): gone with the next event."""
        self.graph_note = ""
        """The graph changed under the watch: said below the table for as long as it runs."""
        self.wait_began: dict[str, float] = {}
        """When each waiting start began to wait, as seen by this watch (for its bar)."""
        self._timeline = LiveTimeline()
        self._picked: list[str] = []
        self._picked_for: int | None = None
        """How many rows `_picked` was chosen for; None: chosen before the last change."""
        self._lock = threading.Lock()
        """Between the watch (main thread) and rich's refresh thread."""

    def apply(self, event: FullView | Changed) -> None:
        with self._lock:
            if isinstance(event, FullView):
                self._timeline.mark(self.units)  # units gone from the new view lose their row
                self.units = {u.name: u for u in event.units}
                note_waits(self.wait_began, event.units, None)  # since when, it cannot say
                self._timeline.mark(self.units)
            else:
                self.units[event.unit.name] = event.unit
                note_waits(self.wait_began, [event.unit], event.at)
                self._timeline.mark([event.unit.name])
            self._picked_for = None
            self.note = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[object]:
        """The table, with each unit's timeline bar when the terminal is wide enough."""
        from rich.text import Text

        with self._lock:
            graph_note = self.graph_note
            lines = options.size.height - (1 if graph_note else 0)
            table, hidden = self._frame(options.max_width, lines)
        yield table
        if hidden:
            more = f"… and {hidden:,} more unit{'s' if hidden != 1 else ''}"
            line = f"{more}: `unitsync sync status` lists them all"
            yield Text(line, no_wrap=True, overflow="ellipsis")
        if graph_note:  # a line of its own, as wide as the terminal: both states must show
            yield Text(graph_note, style="bold", no_wrap=True, overflow="ellipsis")

    def _frame(self, cells: int, lines: int) -> tuple[Table, int]:
        now = time.time()
        shown = self._pick(max(1, lines - FRAME_LINES))
        views = [self.units[name] for name in shown]
        rows = [table_row(view, now) for view in views]
        widths = layout(rows, cells)
        timeline = self._timeline.timeline(self.units, now, self.wait_began, shown)
        return self._table(views, rows, widths, timeline), len(self.units) - len(shown)

    def _pick(self, count: int) -> list[str]:
        """The names of the `count` units first in `attention` order, picked again only
        after a change or a resize."""
        if self._picked_for != count:
            picked = heapq.nsmallest(count, self.units.values(), key=attention)
            self._picked = [view.name for view in picked]
            self._picked_for = count
        return self._picked

    def _table(
        self,
        views: list[UnitView],
        rows: list[list[str]],
        widths: dict[str, int],
        timeline: Timeline,
    ) -> Table:
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        title = f"{self.unit} and its dependencies" if self.unit else "every unit"
        note = self.note or "Ctrl-C to stop"
        if cut := cut_note(list(self.units.values())):
            note = f"{note} · {cut}"
        caption = Text(note, no_wrap=True, overflow="ellipsis")
        table = Table(title=f"unitsync: {title}", caption=caption, title_justify="left")
        for column in widths:
            table.add_column(column, width=widths[column], overflow="ellipsis", no_wrap=True)
        kept = [TABLE_COLUMNS.index(column) for column in widths if column in TABLE_COLUMNS]
        status = TABLE_COLUMNS.index("STATUS")
        bars = {row.name: row for row in timeline.rows}
        for view, row in zip(views, rows, strict=True):
            cells = [escape(cell) for cell in row]  # names are not markup
            cells[status] = f"[{STATUS_STYLES[view.status][0]}]{cells[status]}[/]"
            shown: list[object] = [cells[i] for i in kept]
            if "TIMELINE" in widths:
                bar = bars.get(view.name)
                shown.append(rich_bar(bar, timeline, widths["TIMELINE"]) if bar else "")
            table.add_row(*shown)
        return table


def _live_table(client: Client, unit: str | None) -> None:
    from rich.live import Live

    board = _Board(unit)

    def unreachable(exc: UnitsyncError) -> None:
        board.note = f"agent unreachable, reconnecting: {exc}"

    def graph_changed(exc: GraphChanged) -> None:
        board.graph_note = (
            f"another graph since {time.strftime('%H:%M:%S')}: {short(exc.found)} (state in "
            f"{exc.found_state}), not {short(exc.expected)} (state in {exc.expected_state})"
        )

    with Live(board, refresh_per_second=REFRESHES_PER_SECOND, auto_refresh=True) as live:
        for event in client.watch(unit, on_unreachable=unreachable, on_graph_changed=graph_changed):
            board.apply(event)
            if isinstance(event, FullView):  # the first frame, or one after a reconnection
                live.refresh()
