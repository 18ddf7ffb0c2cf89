"""The timeline as one self-contained SVG: what `timeline -o svg` prints. Pure.

Self-contained means a browser shows the file as is, offline and safely: no scripts,
no external fonts, images or links, only an inline style sheet and the system's sans
font. One `<g class="unit">` per unit holds its name, its bars (wait, then run) and a
`<title>` with the exact figures, which browsers show as a tooltip.
"""

from __future__ import annotations

import math
import re

from .. import cells
from . import axis
from .model import Row, Timeline
from .text import caption, precise

MARGIN = 16
ROW_HEIGHT = 22
BAR_HEIGHT = 14
FONT_SIZE = 12
TITLE_SIZE = 15
TICK_SIZE = 11
PLOT_WIDTH = 960
RIGHT_ROOM = 40
"""At least this much right of the plot: half the last tick label, an open run's arrow."""
FIGURE_CELLS = 60
"""Longest the figure after a bar gets (a failure's reason may be 4 KiB): cut with an
ellipsis; the tooltip has it whole. The figure widens the drawing as far as it needs."""
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
"""Colours also tell the legend apart in grey: light wait, mid run, dark failure. Sizes as
FONT_SIZE, TITLE_SIZE and TICK_SIZE say: `text_px` measures with them."""

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 cannot hold (U+FFFE, U+FFFF, control characters in a reason)."""


def render_svg(timeline: Timeline) -> str:
    names = [cells.short_name(row.name) for row in timeline.rows]
    name_px = max([text_px(name, bold=True) for name in names] + [60.0])  # failed: bold
    plot_x = MARGIN + name_px + 12
    rows_bottom = HEADER_HEIGHT + len(timeline.rows) * ROW_HEIGHT
    height = rows_bottom + 40
    scale = _Scale(timeline, plot_x)
    title = (
        f"unitsync timeline: boot {timeline.boot}, "
        f"{len(timeline.rows)} unit{'s' if len(timeline.rows) != 1 else ''}, "
        f"{precise(timeline.span)}"
    )
    legend, legend_end = _legend(plot_x)
    body = [
        f'<text class="title" x="{MARGIN}" y="24">{title}</text>',
        f'<text class="sub" x="{MARGIN}" y="42">{_text(caption(timeline))}</text>',
        *legend,
        *_axis(scale, plot_x, rows_bottom),
    ]
    # The drawing is as wide as its widest text: nothing is cut at the right edge.
    right = max(
        plot_x + PLOT_WIDTH + RIGHT_ROOM,
        MARGIN + text_px(title, TITLE_SIZE, bold=True),
        MARGIN + text_px(caption(timeline)),
        legend_end,
    )
    for i, (row, name) in enumerate(zip(timeline.rows, names, strict=True)):
        parts, end = _unit(row, name, timeline, scale, HEADER_HEIGHT + i * ROW_HEIGHT)
        body += parts
        right = max(right, end)
    if not timeline.rows:
        empty = f"{caption(timeline)}: no units"
        body.append(
            f'<text class="sub" x="{plot_x:.1f}" y="{HEADER_HEIGHT + 16}">{_text(empty)}</text>'
        )
        right = max(right, plot_x + text_px(empty))
    width = math.ceil(right + MARGIN)
    return "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">',
            f"<title>unitsync timeline, boot {timeline.boot}</title>",
            f"<style>{STYLE}</style>",
            '<rect width="100%" height="100%" fill="#ffffff"/>',
            *body,
            "</svg>",
        ]
    )


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


def _unit(
    row: Row, name: str, timeline: Timeline, scale: _Scale, top: int
) -> tuple[list[str], float]:
    """The unit's group, and where its rightmost text ends."""
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
    if row.segments:  # a restarted run: a bar for each start of its command
        for segment in row.segments:
            outcome = "failed" if segment.outcome == "restarted" else segment.outcome
            right = bar(f"run {outcome}", segment.started, _or(segment.ended, scale.horizon))
    elif row.started is not None:
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
    figure = cells.shorten(_figure(row), FIGURE_CELLS)
    x = (right if right is not None else scale.plot_x) + 6
    parts.append(
        f'<text class="figure{failed}" x="{x:.1f}" y="{text_y:.1f}">{_text(figure)}</text>'
    )
    parts.append("</g>")
    return parts, x + text_px(figure, bold=bool(failed))


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
    for k, segment in enumerate(row.segments[1:], 1):
        lines.append(f"restart {k} {at(segment.started)}: {segment.reason}")
    return "\n".join(lines)


def _legend(plot_x: float) -> tuple[list[str], float]:
    """The legend's shapes and words, and where its last words end."""
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
        x += 19 + text_px(words) + 18
    return out, x - 18


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


# --- measuring text ----------------------------------------------------------------------------

_NARROW_EM = 0.42
_EM = 0.65
_CAPITAL_EM = 0.8
_BROAD_EM = 1.0
_BOLD = 1.1
"""Widths in ems, on the wide side of DejaVu Sans (what Linux draws `sans-serif` with, and
wider than the system fonts of macOS and Windows): digits and most lower case 0.64,
capitals up to 0.86, `m` and `W` nearly 1; bold is about a tenth wider."""
_ASCII_EM = {
    chr(code): _NARROW_EM
    if chr(code) in " !'(),-./:;I[]fijlrt|"
    else _BROAD_EM
    if chr(code) in "%@MWmw"
    else _CAPITAL_EM
    if chr(code).isupper()
    else _EM
    for code in range(32, 127)
}


def text_px(text: str, size: float = FONT_SIZE, bold: bool = False) -> float:
    """How wide `text` is drawn at `size` px, estimated without the font: per character,
    never narrower than DejaVu Sans draws it, so that room made with it is enough."""
    if text.isascii():
        ems = sum(_ASCII_EM.get(char, _EM) for char in text)
    else:
        ems = sum(_em(char) for char in text)
    return ems * size * (_BOLD if bold else 1.0)


def _em(char: str) -> float:
    if char in _ASCII_EM:
        return _ASCII_EM[char]
    cells_wide = cells.char_width(char)
    if cells_wide != 1:
        return cells_wide * _BROAD_EM / 2  # CJK a full em; combining marks nothing
    return _CAPITAL_EM if char.isupper() else _EM
