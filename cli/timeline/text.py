"""The timeline as plain text and JSON: the piped `timeline`, `-o json`, `critical-chain`
and `blame`. Pure functions from the model to text.

Times in text are offsets from the boot's first event (`@2.214s`), as systemd-analyze
prints them; JSON keeps Unix times, exact, beside that origin.
"""

from __future__ import annotations

import itertools

import msgspec

from unitsync.wire.bounds import listed
from unitsync.wire.timefmt import clock, timestamp

from .. import cells
from .model import Row, Segment, Timeline

OPEN = "…"
"""Marks a figure still growing: a run in progress."""
CHAIN_INDENT_STEPS = 16
"""Steps of a critical chain each indented one more than the last; deeper steps stay at
that indentation and say their depth (`└─[17] `): the output grows with the chain's
length, not with its square (a 5,000-deep chain printed 25 MB of spaces)."""


def precise(seconds: float) -> str:
    """A duration to the millisecond, as systemd-analyze writes them: 850ms, 2.214s, 3m05.200s."""
    millis = round(seconds * 1000)  # rounded once, so 59.9996s is 1m00.000s, never 60.000s
    if millis < 1000:
        return f"{millis}ms"
    if millis < 60_000:
        return f"{millis / 1000:.3f}s"
    minutes, millis = divmod(millis, 60_000)
    if minutes < 60:
        return f"{minutes}m{millis / 1000:06.3f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{millis // 1000:02d}s"


def caption(timeline: Timeline) -> str:
    """What the times count from, in one line."""
    return f"boot {timeline.boot}: {_counted_from(timeline)}"


def _counted_from(timeline: Timeline) -> str:
    if timeline.origin is None:
        return "nothing has happened in it yet"
    return (
        f"@ times count from its first event, "
        f"{timestamp(timeline.origin)} ({clock(timeline.origin)})"
    )


def empty_message(timeline: Timeline) -> str:
    return f"no units in boot {timeline.boot} yet: `unitsync sync start` or `run` begins the first"


def render_table(timeline: Timeline) -> str:
    """One line per unit: waited from, started, ended (@ offsets), how long it waited and ran."""
    if not timeline.rows:
        return empty_message(timeline)
    header = ["UNIT", "STATUS", "WAITING FROM", "STARTED", "ENDED", "WAITED", "RAN", "REASON"]
    lines = [header]
    for row in timeline.rows:
        lines.append(
            [
                row.name,  # cut to NAME_CELLS by `cells.columns`
                row.outcome,
                _at(timeline, row.wait_began),
                _at(timeline, row.started),
                _at(timeline, row.ended),
                "-" if row.waited is None else precise(row.waited),
                ran(row),
                row.reason or "-",
            ]
        )
        for k, segment in enumerate(row.segments[1:], 1):  # each restart: a line of its own
            lines.append(
                [
                    f"  restart {k}",
                    segment.outcome,
                    "-",
                    _at(timeline, segment.started),
                    _at(timeline, segment.ended),
                    "-",
                    _segment_ran(segment, timeline.now),
                    segment.reason or "-",
                ]
            )
    return caption(timeline) + "\n" + cells.columns(lines) + cut_line(timeline)


def _segment_ran(segment: Segment, now: float) -> str:
    if segment.ended is None:
        return precise(now - segment.started) + OPEN
    return precise(segment.ended - segment.started)


def cut_line(timeline: Timeline) -> str:
    """A line after the text naming the units whose views were cut ("" if none)."""
    if not timeline.cut:
        return ""
    return (
        f"\ncut: the agent's views of {listed(list(timeline.cut), 5)} leave something out "
        "(`unitsync sync status UNIT` says what), so the figures here may miss it"
    )


def ran(row: Row) -> str:
    if row.ran is None:
        return "-"
    return precise(row.ran) + (OPEN if row.outcome == "running" else "")


def to_json(timeline: Timeline) -> str:
    """The figures, documented in the README: Unix times, seconds, and the boot's origin."""
    document = {
        "boot": timeline.boot,
        "boots": list(timeline.boots),
        "origin": timeline.origin,
        "now": timeline.now,
        "units": [
            {
                "name": row.name,
                "status": row.outcome,
                "wait_began": row.wait_began,
                "started": row.started,
                "ended": row.ended,
                "waited": row.waited,
                "ran": row.ran,
                "reason": row.reason,
                "runs": row.runs,
                "dependencies": list(row.deps),
                "required": {dep: row.condition(dep) for dep in row.deps},
                "restarts": [
                    {
                        "started": segment.started,
                        "ended": segment.ended,
                        "outcome": segment.outcome,
                        "reason": segment.reason,
                    }
                    for segment in row.segments[1:]
                ],
            }
            for row in timeline.rows
        ],
        "cut": list(timeline.cut),
    }
    return msgspec.json.format(msgspec.json.encode(document), indent=2).decode()


def render_blame(rows: list[Row]) -> str:
    """systemd-analyze blame: run time right-aligned, then the unit, longest first."""
    if not rows:
        return "no unit has run in this boot yet"
    figures = [ran(row) for row in rows]
    width = max(len(figure) for figure in figures)
    return "\n".join(
        f"{figure:>{width}} {cells.short_name(row.name)}{_fate(row)}"
        for figure, row in zip(figures, rows, strict=True)
    )


def render_chain(timeline: Timeline, chain: list[Row]) -> str:
    """systemd-analyze critical-chain: `@` when each unit finished, `+` how long it ran."""
    lines = [
        'The time when a unit completed (became ready for its dependents) is after "@",',
        f'how long it ran after "+"; {_counted_from(timeline)}.',
        "",
    ]
    links = ["completed"] + [up.condition(row.name) for up, row in itertools.pairwise(chain)]
    if "started" in links:
        lines.insert(2, 'For a unit wanted --on started, "@" is the time it started.')
    for depth, (row, on) in enumerate(zip(chain, links, strict=True)):
        if depth == 0:
            indent = ""
        elif depth <= CHAIN_INDENT_STEPS:
            indent = "  " * (depth - 1) + "└─"
        else:
            indent = "  " * (CHAIN_INDENT_STEPS - 1) + f"└─[{depth}] "
        name = cells.short_name(row.name)
        wanted = f" (wanted on {on})" if on != "completed" else ""
        figures = _chain_figures(timeline, row, on)
        lines.append(f"{indent}{name}{figures}{_fate(row)}{wanted}")
    return "\n".join(lines) + cut_line(timeline)


# --- helpers ---------------------------------------------------------------------------------


def _chain_figures(timeline: Timeline, row: Row, on: str = "completed") -> str:
    """`@` when the row stopped holding up the unit before it in the chain (its start, for
    one wanted on `started`; its end otherwise), `+` how long it ran."""
    if on == "started" and row.started is not None:
        moment = row.started
    elif row.ended is not None:
        moment = row.ended
    elif row.started is not None:
        moment = row.started
    else:
        return ""
    text = f" @{precise(timeline.offset(moment))}"
    if row.ran is not None:
        text += f" +{ran(row)}"
    return text


def _fate(row: Row) -> str:
    """Anything but a plain completion, said in words (so it reads without colour)."""
    if row.outcome == "completed":
        return ""
    if row.outcome == "waiting":
        return f" ({row.reason})"
    return f" ({row.outcome}: {row.reason})" if row.reason else f" ({row.outcome})"


def _at(timeline: Timeline, moment: float | None) -> str:
    return "-" if moment is None else "@" + precise(timeline.offset(moment))
