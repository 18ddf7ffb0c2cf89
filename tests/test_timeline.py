"""The timeline model, critical chain and blame (SPEC §9), and how they are drawn.

Hand-made start-ups through the agent's own graph and views, so the figures are exact;
`test_timeline_cli.py` runs real ones against a real agent.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET

import msgspec
import pytest
from rich.console import Console

from unitsync.agent.core.graph import Graph
from unitsync.agent.core.views import unit_view
from unitsync.cli import cells
from unitsync.cli.timeline import axis
from unitsync.cli.timeline.critical_chain import critical_chain, default_unit
from unitsync.cli.timeline.gantt import render_chart
from unitsync.cli.timeline.live import LiveTimeline
from unitsync.cli.timeline.model import Row, build_timeline, by_run_time, note_waits
from unitsync.cli.timeline.svg import FONT_SIZE, TICK_SIZE, TITLE_SIZE, render_svg, text_px
from unitsync.cli.timeline.text import render_blame, render_chain, render_table, to_json
from unitsync.cli.watch import FRAME_LINES, _Board
from unitsync.wire.errors import NotInHistory
from unitsync.wire.protocol import Changed, FullView, UnitView

from harness.applied import AppliedGraph

SVG = "{http://www.w3.org/2000/svg}"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def startup() -> Graph:
    """git runs 100-102.2; claude waits for it from 100, runs to 103.6; lint fails at 103;
    tests (wants claude) starts at 103.6 and is still running."""
    graph = AppliedGraph()
    graph.want("claude", ["git"], now=100.0)
    graph.want("lint", ["git"], now=100.0)
    graph.want("tests", ["claude"], now=100.0)
    graph.start("git", now=100.0, waited=0.0)
    graph.complete("git", now=102.2)
    graph.start("claude", now=102.2, waited=2.2)
    graph.start("lint", now=102.5, waited=0.3)
    graph.fail("lint", "exit status 2", now=103.0)
    graph.complete("claude", now=103.6)
    graph.start("tests", now=103.6, waited=3.6)
    return graph


def views(graph: Graph, waiters: dict[str, int] | None = None) -> list[UnitView]:
    waiters = waiters or {}
    return [
        unit_view(graph, name, list(graph.readiness(name).pending), waiters.get(name, 0))
        for name in graph.units
    ]


def in_boot(view: UnitView, boot: int, first: int = 0) -> UnitView:
    """The view with its history entries from index `first` on marked as boot `boot`."""
    history = [
        msgspec.structs.replace(entry, boot=boot) if i >= first else entry
        for i, entry in enumerate(view.history)
    ]
    return msgspec.structs.replace(view, history=history)


# --- the model -------------------------------------------------------------------------------


def test_each_unit_has_its_wait_its_run_and_how_it_ended() -> None:
    timeline = build_timeline(views(startup()), now=105.0)
    rows = {row.name: row for row in timeline.rows}
    # In the order they began (tests began waiting for claude at once), ties by name.
    assert [row.name for row in timeline.rows] == ["claude", "git", "tests", "lint"]
    assert timeline.origin == 100.0 and timeline.horizon == 105.0  # tests still runs
    claude = rows["claude"]
    assert (claude.outcome, claude.wait_began, claude.started, claude.ended) == (
        "completed",
        100.0,
        102.2,
        103.6,
    )
    assert claude.waited == pytest.approx(2.2) and claude.ran == pytest.approx(1.4)
    assert rows["git"].waited == 0.0 and rows["git"].ran == pytest.approx(2.2)
    assert (rows["lint"].outcome, rows["lint"].reason) == ("failed", "exit status 2")
    tests = rows["tests"]
    assert (tests.outcome, tests.ended, tests.ran) == ("running", None, pytest.approx(1.4))
    assert claude.deps == ("git",) and claude.runs == 1


def test_the_latest_boot_is_the_default_and_an_old_boot_has_no_open_run() -> None:
    graph = startup()
    graph.reset_all(now=110.0)  # the workspace restarts: everything is pending again
    graph.start("git", now=111.0, waited=0.0)
    graph.complete("git", now=112.0)
    # Boot 2 begins with the reset (the sixth entry of each unit that had run).
    marked = [
        in_boot(v, 2, next((i for i, e in enumerate(v.history) if e.at >= 110), 99))
        for v in views(graph)
    ]
    latest = build_timeline(marked, now=120.0)
    assert latest.boot == 2 and latest.boots == (1, 2)
    outcomes = {row.name: row.outcome for row in latest.rows}
    assert outcomes == {
        "git": "completed",
        "claude": "pending",
        "lint": "pending",
        "tests": "pending",
    }
    assert latest.origin == 111.0 and latest.horizon == 112.0
    first = build_timeline(marked, now=120.0, boot=1)
    tests = next(row for row in first.rows if row.name == "tests")
    assert (tests.outcome, tests.ended) == ("interrupted", 110.0)  # cut short by the restart
    assert first.horizon == 110.0
    with pytest.raises(NotInHistory, match=r"boot 3; the histories hold boot\(s\) 1, 2"):
        build_timeline(marked, now=120.0, boot=3)


def test_a_reset_starts_a_units_story_over() -> None:
    graph = startup()
    graph.reset("lint", now=104.0)
    timeline = build_timeline(views(graph), now=105.0)
    lint = next(row for row in timeline.rows if row.name == "lint")
    assert (lint.outcome, lint.started, lint.ran) == ("pending", None, None)
    graph.reset_all(now=200.0)
    graph.start("git", now=300.0, waited=0.0)
    later = build_timeline(views(graph), now=301.0)
    assert later.origin == 300.0  # the old runs, and the reset itself, are not on the axis


def test_a_start_that_waits_now_is_a_waiting_row_with_the_wait_a_watcher_saw() -> None:
    graph = AppliedGraph()
    graph.want("web", ["db"], now=100.0)
    graph.start("db", now=101.0, waited=0.0)
    seen: dict[str, float] = {}
    note_waits(seen, views(graph, {"web": 1}), None)  # a full view: since when, unknown
    assert seen == {}
    note_waits(seen, views(graph, {"web": 1}), 102.0)
    note_waits(seen, views(graph, {"web": 1}), 103.0)  # still the same wait
    assert seen == {"web": 102.0}
    timeline = build_timeline(views(graph, {"web": 1}), now=104.0, wait_began=seen)
    web = next(row for row in timeline.rows if row.name == "web")
    assert (web.outcome, web.wait_began, web.reason) == ("waiting", 102.0, "waiting on db")
    assert timeline.horizon == 104.0
    note_waits(seen, views(graph), 105.0)  # the wait is over
    assert seen == {}


def test_a_unit_failed_while_waiting_has_an_outcome_and_no_run() -> None:
    graph = AppliedGraph()
    graph.want("api", ["db"], now=100.0)
    graph.fail("db", "port in use", now=101.0)
    graph.fail("api", "dependency db failed", now=101.0)
    timeline = build_timeline(views(graph), now=102.0)
    api = next(row for row in timeline.rows if row.name == "api")
    assert (api.outcome, api.started, api.ended, api.ran) == ("failed", None, 101.0, None)
    assert critical_chain(timeline, "api")[1].name == "db"


def diamond() -> Graph:
    """base 0-1s; left 1-1.2s and right 1-1.8s want base; top wants both, runs 1.8-2.1s."""
    graph = AppliedGraph()
    graph.want("left", ["base"], now=0.0)
    graph.want("right", ["base"], now=0.0)
    graph.want("top", ["left", "right"], now=0.0)
    graph.start("base", now=1000.0, waited=0.0)
    graph.complete("base", now=1001.0)
    graph.start("left", now=1001.0, waited=1.0)
    graph.start("right", now=1001.0, waited=1.0)
    graph.complete("left", now=1001.2)
    graph.complete("right", now=1001.8)
    graph.start("top", now=1001.8, waited=1.8)
    graph.complete("top", now=1002.1)
    return graph


def test_the_critical_chain_follows_the_dependency_that_finished_last() -> None:
    timeline = build_timeline(views(diamond()), now=1003.0)
    assert default_unit(timeline) == "top"
    assert [row.name for row in critical_chain(timeline)] == ["top", "right", "base"]
    assert [row.name for row in critical_chain(timeline, "left")] == ["left", "base"]
    text = render_chain(timeline, critical_chain(timeline))
    assert text.splitlines()[-3:] == [
        "top @2.100s +300ms",
        "└─right @1.800s +800ms",
        "  └─base @1.000s +1.000s",
    ]
    with pytest.raises(NotInHistory, match="'ghost' has no history in boot 1"):
        critical_chain(timeline, "ghost")


def test_a_started_edge_ends_the_chain_at_the_dependencys_start() -> None:
    """db starts at 10 and completes at 30; api wants it on `started` (and git, completed
    at 12): api started at 12, held up by git, not by db's completion after it; db's step is
    at its start. With db wanted on `completed`, api could not have started before 30."""
    graph = AppliedGraph()
    graph.want("api", ["db", "git"], now=0.0, on="started")
    graph.want("api", ["git"], now=0.0, on="completed")
    graph.want("git", ["db"], now=0.0, on="started")
    graph.start("db", now=10.0, waited=0.0)
    graph.start("git", now=10.5, waited=0.5)
    graph.complete("git", now=12.0)
    graph.start("api", now=12.0, waited=12.0)
    graph.complete("api", now=20.0)
    graph.complete("db", now=30.0)
    timeline = build_timeline(views(graph), now=31.0)
    chain = critical_chain(timeline, "api")
    assert [row.name for row in chain] == ["api", "git", "db"]
    text = render_chain(timeline, chain).splitlines()
    assert 'For a unit wanted --on started, "@" is the time it started.' in text
    assert text[-2:] == ["└─git @12.000s +1.500s", "  └─db @10.000s +20.000s (wanted on started)"]
    assert json.loads(to_json(timeline))["units"][-1]["required"] == {"db": "started"}


def test_a_waiting_row_names_the_conditions_it_waits_on() -> None:
    graph = AppliedGraph()
    graph.want("web", ["db"], now=0.0, on="finished")
    graph.want("web", ["cache"], now=0.0)
    timeline = build_timeline(views(graph, {"web": 1}), now=1.0)
    [web] = [row for row in timeline.rows if row.name == "web"]
    assert web.reason == "waiting on db (finished), cache"
    assert web.required == ("finished", "completed")


def test_a_waiting_units_chain_goes_through_what_it_still_waits_for() -> None:
    graph = AppliedGraph()
    graph.want("web", ["db", "cache"], now=0.0)
    graph.start("cache", now=10.0, waited=0.0)
    graph.complete("cache", now=11.0)
    graph.start("db", now=10.0, waited=0.0)
    timeline = build_timeline(views(graph, {"web": 1}), now=12.0)
    assert [row.name for row in critical_chain(timeline, "web")] == ["web", "db"]
    assert "(waiting on db)" in render_chain(timeline, critical_chain(timeline, "web"))
    graph.reset_all(now=13.0)
    with pytest.raises(NotInHistory, match="no unit has completed in boot 1 yet; name the unit"):
        critical_chain(build_timeline(views(graph), now=14.0))


def test_blame_lists_runs_longest_first() -> None:
    rows = by_run_time(build_timeline(views(startup()), now=105.5))
    assert [row.name for row in rows] == ["git", "tests", "claude", "lint"]
    assert render_blame(rows).splitlines() == [
        " 2.200s git",
        "1.900s… tests (running)",
        " 1.400s claude",
        "  500ms lint (failed: exit status 2)",
    ]


def test_the_table_and_json_hold_the_same_figures() -> None:
    timeline = build_timeline(views(startup()), now=105.0)
    table = render_table(timeline).splitlines()
    assert table[0].startswith("boot 1: @ times count from its first event")
    assert table[1].split() == [
        "UNIT", "STATUS", "WAITING", "FROM", "STARTED", "ENDED", "WAITED", "RAN", "REASON",
    ]  # fmt: skip
    assert table[2].split() == [
        "claude", "completed", "@0ms", "@2.200s", "@3.600s", "2.200s", "1.400s", "-",
    ]  # fmt: skip
    data = json.loads(to_json(timeline))
    assert data["boot"] == 1 and data["boots"] == [1] and data["origin"] == 100.0
    claude = data["units"][0]
    assert claude == {
        "name": "claude",
        "status": "completed",
        "wait_began": 100.0,
        "started": 102.2,
        "ended": 103.6,
        "waited": pytest.approx(2.2),
        "ran": pytest.approx(1.4),
        "reason": "",
        "runs": 1,
        "dependencies": ["git"],
        "required": {"git": "completed"},
        "restarts": [],
    }
    tests = next(unit for unit in data["units"] if unit["name"] == "tests")
    assert tests["ended"] is None and tests["status"] == "running"


# --- the terminal chart ------------------------------------------------------------------------


def bar_of(chart: str, name: str) -> str:
    """The bar part of `name`'s line: what follows the mark column."""
    line = next(line for line in chart.splitlines() if line.startswith(name + " "))
    return re.split(r" [✓✗▶↺…·+X>~.-] ", line, maxsplit=1)[1]


@pytest.mark.parametrize("columns", [80, 200])
def test_the_chart_fits_the_terminal_and_reads_without_colour(columns: int) -> None:
    chart = render_chart(build_timeline(views(startup()), now=105.0), columns, colour=False)
    assert not ANSI.search(chart)
    assert all(cells.width(line) <= columns for line in chart.splitlines())
    assert chart.splitlines()[1].split()[:4] == ["UNIT", "WAITED", "RAN", "0s"]
    claude = bar_of(chart, "claude")
    assert set(claude) == {"░", "█"} and claude.index("█") > claude.rindex("░")
    lint = bar_of(chart, "lint")  # waited 0.3s, then failed: a run with its own shading
    assert set(lint.strip()) == {"░", "▓"} and lint.endswith("▓")
    assert bar_of(chart, "tests").endswith("▶")  # still running: an open end
    assert "✗" in next(line for line in chart.splitlines() if line.startswith("lint"))
    # Run lengths follow durations: git ran 2.2s, claude 1.4s, on the same scale.
    ratio = bar_of(chart, "git").count("█") / claude.count("█")
    assert ratio == pytest.approx(2.2 / 1.4, rel=0.25)


def test_a_run_of_no_length_at_the_last_moment_still_shows() -> None:
    graph = AppliedGraph()
    graph.want("b", ["a"], now=100.0)
    graph.start("a", now=100.0, waited=0.0)
    graph.complete("a", now=105.0)
    graph.start("b", now=105.0, waited=5.0)
    graph.complete("b", now=105.0)
    chart = render_chart(build_timeline(views(graph), now=110.0), 60, colour=False)
    assert bar_of(chart, "b").endswith("░█")
    assert len(bar_of(chart, "b")) == len(bar_of(chart, "a"))


def test_the_chart_colours_failures_red_and_falls_back_to_ascii() -> None:
    timeline = build_timeline(views(startup()), now=105.0)
    coloured = render_chart(timeline, 100, colour=True)
    lint = next(line for line in coloured.splitlines() if "lint" in line)
    assert "\x1b[1;31m" in lint
    assert render_chart(timeline, 100, colour=False) == ANSI.sub("", coloured)
    plain = render_chart(timeline, 100, colour=False, unicode=False)
    assert plain.isascii() and "#" in plain and "." in bar_of(plain, "claude")


def long_names() -> list[str]:
    """255 bytes each: wide CJK, accented Latin with combining marks, Arabic, emoji."""
    names = ["名" * 85, "é" * 127 + "a", "e\u0301" * 85, "ب" * 127 + "x", "🚀" * 63 + "abc"]
    assert all(len(name.encode()) == 255 for name in names)
    return names


@pytest.mark.parametrize("columns", [80, 200])
def test_long_non_ascii_names_render_within_the_width(columns: int) -> None:
    graph = AppliedGraph()
    names = long_names()
    for i, name in enumerate(names):
        graph.start(name, now=100.0 + i, waited=0.0)
        graph.complete(name, now=101.0 + i)
    timeline = build_timeline(views(graph), now=110.0)
    chart = render_chart(timeline, columns)
    assert all(cells.width(ANSI.sub("", line)) <= columns for line in chart.splitlines())
    assert chart.count("…") >= len(names)  # each name cut with an ellipsis
    assert "名名" in chart
    assert len(render_table(timeline).splitlines()) == len(names) + 2
    svg = ET.fromstring(render_svg(timeline))
    titles = [g.find(f"{SVG}title").text for g in svg.iter(f"{SVG}g")]
    assert all(any(t.startswith(name + ":") for t in titles) for name in names)


@pytest.mark.parametrize("case", ["empty", "single", "failed", "running", "no_xml"])
def test_every_output_renders_the_corner_cases(case: str) -> None:
    graph = AppliedGraph()
    if case == "single":
        graph.start("only", now=100.0, waited=0.0)
        graph.complete("only", now=100.0)  # a run of no length at all
    elif case == "failed":
        graph.start("only", now=100.0, waited=0.0)
        graph.fail("only", "exit status 1", now=101.0)
    elif case == "running":
        graph.start("only", now=100.0, waited=0.0)
    elif case == "no_xml":
        graph.start("a\ufffe<&>\"'b", now=100.0, waited=0.0)  # U+FFFE: not an XML character
    timeline = build_timeline(views(graph), now=102.0)
    for columns in (80, 200):
        chart = render_chart(timeline, columns)
        assert all(cells.width(ANSI.sub("", line)) <= columns for line in chart.splitlines())
    svg = ET.fromstring(render_svg(timeline))
    units = [g for g in svg.iter(f"{SVG}g") if "unit" in g.get("class", "").split()]
    assert len(units) == (0 if case == "empty" else 1)
    json.loads(to_json(timeline))
    render_table(timeline)
    render_blame(by_run_time(timeline))
    if case == "empty":
        assert "no units in boot 1 yet" in render_chart(timeline, 80)
        assert render_table(timeline).startswith("no units in boot 1 yet")
    if case == "running":
        assert "▶" in render_chart(timeline, 80)
        assert units[0].find(f"{SVG}path").get("class") == "running"
    if case == "failed":
        assert units[0].get("class") == "unit failed"


# --- the SVG -----------------------------------------------------------------------------------


def test_the_svg_has_one_bar_per_unit_with_its_name_and_exact_figures() -> None:
    timeline = build_timeline(views(diamond()), now=1003.0)
    text = render_svg(timeline)
    root = ET.fromstring(text)
    units = {
        g.find(f"{SVG}text").text: g
        for g in root.iter(f"{SVG}g")
        if g.get("class", "").startswith("unit")
    }
    assert set(units) == {"base", "left", "right", "top"}
    runs = {
        name: float(next(r for r in g.iter(f"{SVG}rect") if "run" in r.get("class")).get("width"))
        for name, g in units.items()
    }
    # Widths are proportional to run times: 1.0s, 0.2s, 0.8s, 0.3s.
    assert runs["base"] / runs["right"] == pytest.approx(1.0 / 0.8, rel=1e-3)
    assert runs["left"] / runs["top"] == pytest.approx(0.2 / 0.3, rel=1e-3)
    wait = next(r for r in units["top"].iter(f"{SVG}rect") if r.get("class") == "wait")
    assert float(wait.get("width")) / runs["base"] == pytest.approx(1.8, rel=1e-3)
    tooltip = units["top"].find(f"{SVG}title").text
    assert tooltip.splitlines() == [
        "top: completed",
        "waited 1.800s, from @0ms",
        "ran 300ms, @1.800s to @2.100s",
    ]
    ticks = [t for t in root.iter(f"{SVG}text") if t.get("class") == "tick"]
    top = min(float(t.get("y")) for t in ticks)
    labels = [t.text for t in ticks if float(t.get("y")) == top]
    assert labels == ["0s", "200ms", "400ms", "600ms", "800ms", "1s"] + [
        f"{tenths / 10}s" for tenths in (12, 14, 16, 18)
    ] + ["2s"]
    legend = " ".join(t.text for t in root.iter(f"{SVG}text") if t.get("class") == "sub")
    assert "waited for dependencies" in legend and "failed" in legend


def test_the_svg_is_self_contained() -> None:
    text = render_svg(build_timeline(views(startup()), now=105.0))
    root = ET.fromstring(text)
    tags = {element.tag.removeprefix(SVG) for element in root.iter()}
    assert tags <= {"svg", "title", "style", "rect", "text", "g", "line", "path"}
    for element in root.iter():
        for attribute in element.attrib:
            assert "href" not in attribute and not attribute.startswith("on")
    assert "url(" not in text and "@import" not in text and "@font-face" not in text
    lint = next(g for g in root.iter(f"{SVG}g") if g.find(f"{SVG}text").text == "lint")
    assert lint.get("class") == "unit failed"
    assert lint.find(f"{SVG}text").get("class") == "name failed"


def crowded() -> Graph:
    """What pushes an SVG's text to its edges: a run going for 14m51.955s, a 255-byte name,
    a failure with a 4 KiB reason, a start waiting on the long-named unit."""
    long = "migrate-the-orders-database-" + "x" * 227
    graph = AppliedGraph()
    graph.want("report", [long], now=100.0)
    graph.start("base", now=100.0, waited=0.0)
    graph.complete("base", now=101.0)
    graph.start(long, now=101.0, waited=0.0)
    graph.start("lint", now=101.0, waited=0.0)
    graph.fail("lint", "WARNING: " * 455, now=102.0)
    graph.start("名" * 85, now=100.5, waited=0.0)
    graph.fail("名" * 85, "exit status 1", now=101.0)
    return graph


def crowded_svg() -> str:
    return render_svg(build_timeline(views(crowded(), {"report": 1}), now=101.0 + 891.955))


def text_extents(svg: str) -> tuple[float, list[tuple[str, float, float]]]:
    """The SVG's width, and each text's (text, left, right) as `text_px` estimates them."""
    root = ET.fromstring(svg)
    width = float(root.get("viewBox").split()[2])
    extents = []
    for text in root.iter(f"{SVG}text"):
        classes = text.get("class", "").split()
        size = TITLE_SIZE if "title" in classes else TICK_SIZE if "tick" in classes else FONT_SIZE
        drawn = text_px(text.text, size, bold="title" in classes or "failed" in classes)
        left = float(text.get("x")) - (drawn / 2 if text.get("text-anchor") == "middle" else 0)
        extents.append((text.text, left, left + drawn))
    return width, extents


def test_every_svg_label_fits_inside_the_drawing() -> None:
    svg = crowded_svg()
    width, extents = text_extents(svg)
    outside = [
        (text[:40], left, right) for text, left, right in extents if left < 0 or right > width
    ]
    assert not outside, (width, outside)
    labels = [text for text, _, _ in extents]
    assert "14m51.955s so far, running" in labels
    long = next(name for name in crowded().units if name.startswith("migrate"))
    shown = next(label for label in labels if label.startswith("migrate"))
    assert shown == long[:39] + "…"  # as `status` shortens it
    titles = [g.find(f"{SVG}title").text for g in ET.fromstring(svg).iter(f"{SVG}g")]
    assert any(title.startswith(f"{long}: running") for title in titles)  # whole in the tooltip
    assert any(("WARNING: " * 455).strip() in title for title in titles)  # the whole reason
    # The name column holds the widest name; bars start right of it.
    names_end = max(right for text, _, right in extents if text.startswith(("migrate", "名")))
    runs = [
        float(r.get("x"))
        for r in ET.fromstring(svg).iter(f"{SVG}rect")
        if "run" in r.get("class", "")
    ]
    assert names_end < min(runs)


# --- the axis, cells and the live watch --------------------------------------------------------


def test_axis_ticks_are_round_and_never_too_many() -> None:
    assert axis.ticks(3.6, 8) == (0.5, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    assert axis.step_for(170.0, 8) == 30.0
    assert axis.step_for(5 * 86400.0, 3) == 2 * 86400.0
    for span in (0.004, 0.9, 7.0, 59.0, 61.0, 3599.0, 7200.0, 1e6):
        _step, positions = axis.ticks(span, 10)
        assert len(positions) <= 11 and positions[-1] <= span
    assert [axis.label(s, 0.25) for s in (0.0, 0.25, 1.5)] == ["0s", "250ms", "1.5s"]
    assert [axis.label(s, 30.0) for s in (30.0, 90.0, 3600.0, 5400.0)] == [
        "30s",
        "1m30s",
        "1h",
        "1h30m",
    ]


def test_cells_measure_and_cut_wide_text() -> None:
    assert cells.width("名前") == 4 and cells.width("e\u0301") == 1
    assert cells.fit("名前です", 5) == "名前…"
    assert cells.fit("名前です", 4) == "名… "  # a wide character never straddles the cut
    assert cells.fit("git", 5) == "git  "
    assert cells.width(cells.fit("🚀" * 40, 9)) == 9


def test_the_live_watch_draws_each_units_bar_growing(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = AppliedGraph()
    graph.want("claude", ["git"], now=100.0)
    graph.start("git", now=100.0, waited=0.0)
    graph.complete("git", now=101.0)
    graph.start("claude", now=101.0, waited=1.0)
    board = _Board(None)
    board.apply(FullView(views(graph), at=101.0))
    board.apply(Changed(unit_view(graph, "claude"), at=101.0))

    def frame(now: float, width: int = 200) -> dict[str, str]:
        monkeypatch.setattr("unitsync.cli.watch.time.time", lambda: now)
        console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
        console.print(board)
        lines = console.export_text().splitlines()
        assert ("TIMELINE" in lines[2]) == (width > 80)
        return {n: next(line for line in lines if f"│ {n} " in line) for n in ("git", "claude")}

    early, late = frame(102.0), frame(110.0)
    assert early["claude"].count("█") < late["claude"].count("█")  # it grows as it runs
    assert early["git"].count("█") > late["git"].count("█")  # the axis rescales
    assert "▶" in late["claude"] and "░" in late["claude"]
    narrow = frame(110.0, width=80)  # no room for a bar: the table's own columns come first
    assert "█" not in narrow["claude"] and narrow["claude"].rstrip().endswith("│")


def test_the_live_timeline_kept_one_unit_at_a_time_matches_one_built_from_scratch() -> None:
    """The watch rebuilds only the rows of the units that changed; what it draws is what
    `build_timeline` makes of every view, through runs, a failure, a reset and a new boot."""
    graph = startup()
    live = LiveTimeline()
    units: dict[str, UnitView] = {}

    def catch_up(latest: list[UnitView], now: float) -> None:
        changed = [view.name for view in latest if units.get(view.name) != view]
        units.update({view.name: view for view in latest})
        live.mark(changed)  # as the watch does: only what an event named
        expected = build_timeline(list(units.values()), now)
        drawn = live.timeline(units, now, {}, [row.name for row in expected.rows])
        assert (drawn.boot, drawn.origin, drawn.horizon) == (
            expected.boot,
            expected.origin,
            expected.horizon,
        )
        assert set(live.rows) == {row.name for row in expected.rows}
        assert [_bar_figures(row) for row in drawn.rows] == list(map(_bar_figures, expected.rows))

    catch_up(views(graph), 105.0)
    graph.complete("tests", now=106.0)
    catch_up(views(graph), 107.0)
    graph.reset("lint", now=108.0)
    catch_up(views(graph), 109.0)
    graph.reset_all(now=110.0)
    graph.start("git", now=111.0, waited=0.0)
    graph.complete("git", now=112.0)
    catch_up(  # boot 2 begins with the reset: every row is another run now
        [
            in_boot(v, 2, next((i for i, e in enumerate(v.history) if e.at >= 110), 99))
            for v in views(graph)
        ],
        120.0,
    )
    assert {row.name: row.outcome for row in live.rows.values()}["git"] == "completed"


def _bar_figures(row: Row) -> tuple[object, ...]:
    """What a bar is drawn from (a running row's `ran` ticks: the bar reads the axis)."""
    return (row.name, row.outcome, row.wait_began, row.started, row.ended, row.reason)


def test_the_live_table_shows_what_needs_a_look_first_and_says_how_many_it_leaves_out() -> None:
    graph = AppliedGraph()
    for i in range(50):
        graph.want(f"unit-{i:02d}", ["base"], now=100.0)
    graph.start("base", now=100.0, waited=0.0)
    graph.complete("base", now=101.0)
    graph.start("unit-30", now=102.0, waited=0.0)
    graph.fail("unit-40", "exit status 1", now=103.0)
    board = _Board(None)
    board.apply(FullView(views(graph, {"unit-20": 1}), at=104.0))
    console = Console(file=io.StringIO(), width=120, height=20, record=True, color_system=None)
    console.print(board)
    lines = console.export_text().splitlines()
    assert len(lines) < 20  # the terminal's height, with a line to spare
    names = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert names[:3] == ["unit-40", "unit-20", "unit-30"]  # failed, waiting, running
    assert names[3:] == sorted(names[3:]) and "base" not in names  # pending, then completed
    assert len(names) == 20 - FRAME_LINES
    assert lines[-1] == f"… and {51 - len(names)} more units: `unitsync sync status` lists them all"
