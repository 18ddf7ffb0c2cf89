"""The timeline as a Gantt chart for a terminal: one line per unit, scaled to its width.

Wait and run are drawn with different characters and a mark column says how each run
ended, so the chart reads the same without colour (`NO_COLOR`, a dumb terminal); colour
only adds to it. Pure: the caller says how wide, whether to colour, whether the terminal
takes Unicode. The live watch draws its bars with `rich_bar`, from the same segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from unitsync.wire.timefmt import duration as format_duration
from unitsync.wire.timefmt import timestamp

from .. import cells
from . import axis
from .model import Outcome, Row, Timeline
from .text import cut_line, empty_message

Kind = Literal["gap", "wait", "completed", "failed", "running", "interrupted", "restart"]
"""What one stretch of a bar shows."""

GAP_BETWEEN_TICK_LABELS = 2
"""Columns kept free between two tick labels, so `1s 2s` never reads as one number."""
MIN_BAR_CELLS = 10
"""Narrower than this, a bar says nothing: the name column gives way first."""
FIGURE_CELLS = 7
"""WAITED and RAN: the longest `format_duration` (`59m59s`) plus the open mark."""
RIGHT_MARGIN = 1
"""Left free so that a terminal that wraps at its last column does not add blank lines."""


@dataclass(frozen=True)
class Glyphs:
    cells: dict[Kind, str]
    open_end: str
    marks: dict[Outcome, str]
    rule: str
    tick: str
    ellipsis: str
    """Ends a name cut to fit, and a figure still growing (a run in progress)."""


UNICODE = Glyphs(
    cells={
        "gap": " ",
        "wait": "░",
        "completed": "█",
        "failed": "▓",
        "running": "█",
        "interrupted": "▒",
        "restart": "↻",
    },
    open_end="▶",
    marks={
        "completed": "✓",
        "failed": "✗",
        "running": "▶",
        "interrupted": "↺",
        "waiting": "…",
        "pending": "·",
    },
    rule="─",
    tick="┬",
    ellipsis="…",
)
ASCII = Glyphs(
    cells={
        "gap": " ",
        "wait": ".",
        "completed": "#",
        "failed": "X",
        "running": "#",
        "interrupted": "~",
        "restart": "|",
    },
    open_end=">",
    marks={
        "completed": "+",
        "failed": "X",
        "running": ">",
        "interrupted": "~",
        "waiting": ".",
        "pending": "-",
    },
    rule="-",
    tick="+",
    ellipsis="~",
)

COLOURS: dict[Kind, str] = {
    "gap": "",
    "wait": "90",
    "completed": "32",
    "failed": "1;31",
    "running": "36",
    "interrupted": "33",
    "restart": "1;33",
}
"""ANSI SGR codes: grey wait, green run, red failure, cyan still running, yellow cut short."""
RICH_STYLES: dict[Kind, str] = {
    "gap": "",
    "wait": "bright_black",
    "completed": "green",
    "failed": "bold red",
    "running": "cyan",
    "interrupted": "yellow",
    "restart": "bold yellow",
}


@dataclass(frozen=True)
class Scale:
    """Maps moments to columns of a bar `width` cells wide."""

    origin: float
    span: float
    width: int

    @classmethod
    def of(cls, timeline: Timeline, width: int) -> Scale:
        origin = timeline.origin if timeline.origin is not None else timeline.now
        return cls(origin, timeline.span, width)

    def column(self, moment: float) -> int:
        if self.span <= 0:
            return 0
        return min(self.width, max(0, math.floor((moment - self.origin) / self.span * self.width)))


def segments(row: Row, scale: Scale, horizon: float) -> list[tuple[Kind, int]]:
    """The row's bar as (kind, cells) stretches from column 0; at most `scale.width` cells."""
    out: list[tuple[Kind, int]] = []
    at = 0

    def draw(kind: Kind, until: int, last: bool = False) -> None:
        nonlocal at
        # Only the last stretch may take the last cell: what follows always has one to show in.
        until = min(until, scale.width if last else scale.width - 1)
        if until > at:
            out.append((kind, until - at))
            at = until

    if row.wait_began is not None:
        draw("gap", scale.column(row.wait_began))
        wait_end = row.started if row.started is not None else horizon
        draw("wait", scale.column(wait_end), last=row.started is None)
    if row.segments:  # a restarted run: each start of its command, a restart mark before it
        for k, segment in enumerate(row.segments):
            draw("gap", scale.column(segment.started))
            if k:
                draw("restart", at + 1)
            end = segment.ended if segment.ended is not None else horizon
            kind = _SEGMENT_KIND[segment.outcome]
            draw(kind, max(scale.column(end), at + 1), last=k == len(row.segments) - 1)
        return out
    if row.started is not None:
        draw("gap", scale.column(row.started))
        end = row.ended if row.ended is not None else horizon
        draw(_RUN_KIND[row.outcome], max(scale.column(end), at + 1), last=True)  # any length shows
    elif row.ended is not None:  # an outcome without a run: one cell where it happened
        draw("gap", scale.column(row.ended))
        draw(_RUN_KIND[row.outcome], at + 1, last=True)
    return out


_RUN_KIND: dict[Outcome, Kind] = {
    "completed": "completed",
    "failed": "failed",
    "interrupted": "interrupted",
    "running": "running",
}
"""How a run is drawn, by how it ended (waiting and pending rows have no run)."""
_SEGMENT_KIND: dict[str, Kind] = {**_RUN_KIND, "restarted": "failed"}
"""How one start of a restarted run's command is drawn: one that ended in a restart before
it was ready ended as a failure."""


def render_chart(
    timeline: Timeline, columns: int, colour: bool = True, unicode: bool = True
) -> str:
    """The whole chart, every line at most `columns - RIGHT_MARGIN` cells wide."""
    glyphs = UNICODE if unicode else ASCII
    usable = max(columns - RIGHT_MARGIN, 20)
    if not timeline.rows:
        return cells.fit(empty_message(timeline), usable).rstrip()
    fixed = 2 + FIGURE_CELLS + 1 + FIGURE_CELLS + 3  # "  WAITED RAN m "
    longest = min(max(cells.width(row.name) for row in timeline.rows), cells.NAME_CELLS)
    name_cells = max(4, min(longest, (usable - fixed) // 3))
    bar_cells = max(usable - fixed - name_cells, MIN_BAR_CELLS)
    name_cells = max(4, min(name_cells, usable - fixed - bar_cells))
    scale = Scale.of(timeline, bar_cells)
    indent = " " * (name_cells + fixed)
    labels, rule = _axis(scale, glyphs)
    head = cells.fit("UNIT", name_cells) + "  " + "WAITED".rjust(FIGURE_CELLS)
    head += " " + "RAN".rjust(FIGURE_CELLS) + "   "
    lines = [cells.fit(_title(timeline), usable).rstrip(), head + labels, indent + rule]
    for row in timeline.rows:
        lines.append(_line(row, timeline, scale, name_cells, glyphs, colour))
    restarted = any(row.segments for row in timeline.rows)
    lines += _wrap(_legend(glyphs, restarted), usable)
    if timeline.cut:
        lines += _wrap([cut_line(timeline).strip()], usable)
    return "\n".join(lines)


def _title(timeline: Timeline) -> str:
    count = len(timeline.rows)
    title = f"boot {timeline.boot}: {count} unit{'s' if count != 1 else ''}"
    if timeline.origin is None:
        return title
    return f"{title} in {format_duration(timeline.span)}, 0s = {timestamp(timeline.origin)}"


def _wrap(items: list[str], usable: int) -> list[str]:
    """Legend items on as few lines as fit; an item wider than a line is cut."""
    lines: list[str] = []
    for item in items:
        if lines and cells.width(lines[-1]) + 2 + cells.width(item) <= usable:
            lines[-1] += "  " + item
        else:
            lines.append(cells.fit(item, usable).rstrip())
    return lines


def _line(
    row: Row, timeline: Timeline, scale: Scale, name_cells: int, glyphs: Glyphs, colour: bool
) -> str:
    name = cells.fit(row.name, name_cells, glyphs.ellipsis)
    if colour and row.outcome == "failed":
        name = _paint(name, COLOURS["failed"])
    waited = "-" if row.waited is None else format_duration(row.waited)
    ran = "-" if row.ran is None else format_duration(row.ran)
    if row.outcome == "running":
        ran += glyphs.ellipsis
    bar = []
    stretches = segments(row, scale, timeline.horizon)
    for i, (kind, count) in enumerate(stretches):
        text = glyphs.cells[kind] * count
        if kind == "running" and i == len(stretches) - 1:
            text = text[:-1] + glyphs.open_end
        bar.append(_paint(text, COLOURS[kind]) if colour else text)
    mark = glyphs.marks[row.outcome]
    figures = f"{waited:>{FIGURE_CELLS}} {ran:>{FIGURE_CELLS}} {mark} "
    return f"{name}  {figures}{''.join(bar)}".rstrip()


def _axis(scale: Scale, glyphs: Glyphs) -> tuple[str, str]:
    """Tick labels and the rule under them, each `scale.width` cells."""
    span = scale.span if scale.span > 0 else 1.0
    step, positions = axis.ticks(span, max(1, scale.width // 10))
    labels = [" "] * scale.width
    rule = [glyphs.rule] * scale.width
    free_from = 0
    for seconds in positions:
        column = min(math.floor(seconds / span * scale.width), scale.width - 1)
        text = axis.label(seconds, step)
        start = min(column, scale.width - len(text))
        if start < free_from:
            continue
        labels[start : start + len(text)] = text
        rule[column] = glyphs.tick
        free_from = start + len(text) + GAP_BETWEEN_TICK_LABELS
    return "".join(labels).rstrip(), "".join(rule)


def _legend(glyphs: Glyphs, restarted: bool = False) -> list[str]:
    c, m = glyphs.cells, glyphs.marks
    items = [
        f"{c['wait']} waited for dependencies",
        f"{c['completed']} ran {m['completed']}",
        f"{c['failed']} failed {m['failed']}",
        f"{glyphs.open_end} still running",
        f"{c['interrupted']} cut short by a restart {m['interrupted']}",
    ]
    if restarted:  # (only then: the legend of a chart without restarts stays as it was)
        items.append(f"{c['restart']} its command started again (--restart, sync restart)")
    return items


def _paint(text: str, sgr: str) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if sgr and text.strip() else text


def rich_bar(row: Row, timeline: Timeline, width: int) -> object:
    """The row's bar as rich `Text` (for the live watch), on the timeline's own axis."""
    from rich.text import Text

    text = Text(no_wrap=True, overflow="crop")
    stretches = segments(row, Scale.of(timeline, width), timeline.horizon)
    for i, (kind, count) in enumerate(stretches):
        chars = UNICODE.cells[kind] * count
        if kind == "running" and i == len(stretches) - 1:
            chars = chars[:-1] + UNICODE.open_end
        text.append(chars, style=RICH_STYLES[kind])
    return text
