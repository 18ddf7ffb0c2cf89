"""The timeline as one self-contained SVG: what `timeline -o svg` prints. Pure.

Self-contained means a browser shows the file as is, offline and safely: no scripts,
no external fonts, images or links, only an inline style sheet and the system's sans
font. One `<g class="unit">` per unit holds its name, its bars (wait, then run) and a
`<title>` with the exact figures, which browsers show as a tooltip.
"""

from __future__ import annotations

import re

from . import axis, cells
from .timeline import Row, Timeline
from .timeline_text import caption, precise

MARGIN = 16
ROW_HEIGHT = 22
BAR_HEIGHT = 14
FONT_SIZE = 12
CELL_PX = 7.0
"""Width of one terminal cell of text at FONT_SIZE in a sans font: names are measured in
cells (CJK counts two), so this sizes the name column without knowing the font."""
NAME_CELLS = 40
"""Longer names are shown cut with an ellipsis; the tooltip has them whole."""
PLOT_WIDTH = 960
FIGURE_WIDTH = 150
"""Room right of the plot for the figure written after the last bar."""
TICK_SPACING_PX = 80
"""At least this far apart, so that tick labels never touch."""
HEADER_HEIGHT = 84
"""Title, legend and the top axis labels."""

STYLE = """
text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;
font-size:12px;fill:#1f2328}
.title{font-size:15px;font-weight:600}.sub,.tick,.figure{fill:#59636e}
.tick{font-size:11px}.grid{stroke:#d8dee4;stroke-width:1}.axis{stroke:#8c959f}
.wait{fill:#c8d1dc}.completed{fill:#2da44e}.failed{fill:#cf222e}
.running{fill:#0969da}.interrupted{fill:#d4a72c}
.name.failed,.figure.failed{fill:#cf222e;font-weight:600}
"""
"""Colours also tell the legend apart in grey: light wait, mid run, dark failure."""

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 cannot hold (U+FFFE, U+FFFF, control characters in a reason)."""


def render_svg(timeline: Timeline) -> str:
    names = [cells.fit(row.name, NAME_CELLS).rstrip() for row in timeline.rows]
    name_px = max([cells.width(name) * CELL_PX for name in names] + [60.0])
    plot_x = MARGIN + name_px + 12
    width = plot_x + PLOT_WIDTH + FIGURE_WIDTH + MARGIN
    rows_bottom = HEADER_HEIGHT + len(timeline.rows) * ROW_HEIGHT
    height = rows_bottom + 40
    scale = _Scale(timeline, plot_x)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}">',
        f"<title>unitsync timeline, boot {timeline.boot}</title>",
        f"<style>{STYLE}</style>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text class="title" x="{MARGIN}" y="24">unitsync timeline: boot {timeline.boot}, '
        f"{len(timeline.rows)} unit{'s' if len(timeline.rows) != 1 else ''}, "
        f"{precise(timeline.span)}</text>",
        f'<text class="sub" x="{MARGIN}" y="42">{_text(caption(timeline))}</text>',
        *_legend(plot_x),
        *_axis(scale, plot_x, rows_bottom),
    ]
    for i, (row, name) in enumerate(zip(timeline.rows, names, strict=True)):
        out += _unit(row, name, timeline, scale, HEADER_HEIGHT + i * ROW_HEIGHT)
    if not timeline.rows:
        out.append(
            f'<text class="sub" x="{plot_x:.1f}" y="{HEADER_HEIGHT + 16}">'
            f"{_text(caption(timeline))}: no units</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


class _Scale:
    def __init__(self, timeline: Timeline, plot_x: float) -> None:
        self.origin = timeline.origin if timeline.origin is not None else timeline.now
        self.span = timeline.span
        self.plot_x = plot_x
        self.horizon = timeline.horizon

    def x(self, moment: float) -> float:
        if self.span <= 0:
            return self.plot_x
        return self.plot_x + (moment - self.origin) / self.span * PLOT_WIDTH


def _unit(row: Row, name: str, timeline: Timeline, scale: _Scale, top: int) -> list[str]:
    failed = " failed" if row.outcome == "failed" else ""
    bar_y = top + (ROW_HEIGHT - BAR_HEIGHT) / 2
    text_y = top + ROW_HEIGHT / 2 + FONT_SIZE * 0.35
    parts = [
        f'<g class="unit {row.outcome}">',
        f"<title>{_text(_tooltip(row, timeline))}</title>",
        f'<text class="name{failed}" x="{MARGIN}" y="{text_y:.1f}">{_text(name)}</text>',
    ]

    def bar(kind: str, begin: float, end: float) -> float:
        x0, x1 = scale.x(begin), scale.x(end)
        parts.append(
            f'<rect class="{kind}" x="{x0:.2f}" y="{bar_y:.1f}" width="{x1 - x0:.2f}" '
            f'height="{BAR_HEIGHT}" rx="2"/>'
        )
        return x1

    right = None
    if row.wait_began is not None:
        right = bar("wait", row.wait_began, _or(row.started, scale.horizon))
    if row.started is not None:
        kind = f"run {row.outcome}"
        right = bar(kind, row.started, _or(row.ended, scale.horizon))
        if row.outcome == "running":  # an open end: an arrow, the run goes on
            mid = bar_y + BAR_HEIGHT / 2
            parts.append(
                f'<path class="running" d="M{right:.2f} {bar_y - 2:.1f}'
                f'L{right + 8:.2f} {mid:.1f}L{right:.2f} {bar_y + BAR_HEIGHT + 2:.1f}Z"/>'
            )
            right += 8
    elif row.ended is not None:  # an outcome without a run: a diamond where it happened
        x, mid = scale.x(row.ended), bar_y + BAR_HEIGHT / 2
        parts.append(
            f'<path class="{row.outcome}" d="M{x:.2f} {bar_y:.1f}L{x + 7:.2f} {mid:.1f}'
            f'L{x:.2f} {bar_y + BAR_HEIGHT:.1f}L{x - 7:.2f} {mid:.1f}Z"/>'
        )
        right = x + 7
    figure = _figure(row)
    x = (right if right is not None else scale.plot_x) + 6
    parts.append(
        f'<text class="figure{failed}" x="{x:.1f}" y="{text_y:.1f}">{_text(figure)}</text>'
    )
    parts.append("</g>")
    return parts


def _or(moment: float | None, instead: float) -> float:
    return instead if moment is None else moment


def _figure(row: Row) -> str:
    """What is written after the bar: the run time, and any outcome but success in words."""
    ran = "" if row.ran is None else precise(row.ran)
    if row.outcome == "completed":
        return ran
    if row.outcome == "running":
        return f"{ran} so far, running"
    if row.outcome in ("waiting", "pending"):
        return row.reason or row.outcome
    said = f"{row.outcome}: {row.reason}" if row.reason else row.outcome
    return f"{ran} {said}".strip()


def _tooltip(row: Row, timeline: Timeline) -> str:
    def at(moment: float) -> str:
        return f"@{precise(timeline.offset(moment))}"

    lines = [f"{row.name}: {row.outcome}" + (f" ({row.reason})" if row.reason else "")]
    if row.waited is not None and row.wait_began is not None:
        lines.append(f"waited {precise(row.waited)}, from {at(row.wait_began)}")
    elif row.wait_began is not None:
        lines.append(f"waiting since {at(row.wait_began)}")
    if row.started is not None and row.ran is not None:
        end = "now" if row.ended is None else at(row.ended)
        so_far = " so far" if row.ended is None else ""
        lines.append(f"ran {precise(row.ran)}{so_far}, {at(row.started)} to {end}")
    elif row.ended is not None:
        lines.append(f"{row.outcome} {at(row.ended)} without running")
    if row.runs > 1:
        lines.append(f"started {row.runs} times in boot {timeline.boot}; this is the last run")
    return "\n".join(lines)


def _legend(plot_x: float) -> list[str]:
    items = [
        ("wait", "waited for dependencies"),
        ("completed", "ran"),
        ("failed", "failed"),
        ("running", "still running"),
        ("interrupted", "cut short by a workspace restart"),
    ]
    out, x = [], plot_x
    for kind, words in items:
        out.append(f'<rect class="{kind}" x="{x:.1f}" y="50" width="14" height="10" rx="2"/>')
        out.append(f'<text class="sub" x="{x + 19:.1f}" y="59">{words}</text>')
        x += 19 + len(words) * CELL_PX + 18
    return out


def _axis(scale: _Scale, plot_x: float, rows_bottom: int) -> list[str]:
    span = scale.span if scale.span > 0 else 1.0
    step, positions = axis.ticks(span, PLOT_WIDTH // TICK_SPACING_PX)
    out = [
        f'<line class="axis" x1="{plot_x:.1f}" y1="{HEADER_HEIGHT - 2}" '
        f'x2="{plot_x + PLOT_WIDTH:.1f}" y2="{HEADER_HEIGHT - 2}"/>'
    ]
    for seconds in positions:
        x = plot_x + seconds / span * PLOT_WIDTH
        label = axis.label(seconds, step)
        out.append(
            f'<line class="grid" x1="{x:.2f}" y1="{HEADER_HEIGHT - 6}" x2="{x:.2f}" '
            f'y2="{rows_bottom + 4}"/>'
        )
        for y in (HEADER_HEIGHT - 10, rows_bottom + 18):
            out.append(
                f'<text class="tick" x="{x:.2f}" y="{y}" text-anchor="middle">{label}</text>'
            )
    return out


def _text(text: str) -> str:
    """Character data for XML: escaped, and characters XML cannot hold made visible.

    (By hand: `xml.sax.saxutils.escape` would import urllib, 30 ms of start-up.)"""
    text = _NOT_XML.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
