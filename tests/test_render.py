"""What `status` prints, and the durations `--timeout` accepts."""

from __future__ import annotations

import json

import msgspec
import pytest

from unitsync.agent.core.views import unit_view
from unitsync.cli import render
from unitsync.cli.durations import parse_duration
from unitsync.wire.protocol import UnitView
from unitsync.wire.timefmt import clock
from unitsync.wire.timefmt import duration as format_duration

from harness.applied import AppliedGraph


def views() -> list[UnitView]:
    graph = AppliedGraph()
    graph.want("claude code", ["git", 'we"ird <name>'], now=100.0)
    graph.start("git", now=101.0)
    graph.complete("git", now=103.0)
    graph.fail('we"ird <name>', "exit status 2", now=104.0)
    graph.units["claude code"].deps.pop('we"ird <name>')  # so that it can start
    graph.start("claude code", now=110.0, waited=9.5)
    return [unit_view(graph, name) for name in graph.units]


def test_the_table_has_aligned_columns_sorted_by_name() -> None:
    heading, *lines = render.render_table(views(), 120.0, 2, 100.0).splitlines()
    assert heading == f"boot 2 since {clock(100.0)}"
    assert lines[0].split()[:3] == ["UNIT", "STATUS", "READY"]
    assert [line.split()[0] for line in lines[1:]] == ["claude", "git", 'we"ird']
    status_column = lines[0].index("STATUS")
    assert all(line[status_column - 2 : status_column] == "  " for line in lines[1:])
    assert "exit status 2" in lines[3]
    assert "no units yet" in render.render_table([], 0, 1, 0)


def test_one_unit_shows_its_wait_its_run_and_its_history() -> None:
    text = render.render_unit(views()[0], now=125.0)
    assert "waited:     9.5s" in text
    assert "ran:        15.0s so far" in text
    assert "pending  started" in text.replace("  9.5s", "")


def test_a_replica_behind_etcd_says_since_when_under_the_boot_line() -> None:
    """Every view an agent on etcd gives while its copy is not known to be current."""
    _boot, behind, header, *_rows = render.render_table(views(), 130.0, 1, 90.0, 110.0).split("\n")
    assert behind == (
        f"replica behind since {clock(110.0)} (20.0s): this agent cannot reach etcd, so what "
        "it shows may be out of date"
    )
    assert header.startswith("UNIT")
    assert render.render_unit(views()[0], 130.0, 110.0).splitlines()[0] == behind
    assert "replica behind" not in render.render_table(views(), 130.0, 1, 90.0)
    assert json.loads(render.to_json(views(), 1, 90.0, 110.0))["replica_behind_since"] == 110.0
    assert json.loads(render.to_json(views(), 1, 90.0))["replica_behind_since"] is None


@pytest.mark.parametrize("fmt", ["dot", "mermaid"])
def test_graphs_escape_names_and_draw_every_edge(fmt: str) -> None:
    text = getattr(render, f"render_{fmt}")(views())
    if fmt == "dot":
        assert text.startswith("digraph unitsync {") and text.endswith("}")
        assert r"we\"ird <name>" in text
        assert text.count("->") == 1
    else:
        assert text.startswith("graph TD")
        assert "we#quot;ird #lt;name#gt;" in text
        assert text.count("-->") == 1


def test_json_is_stable_and_round_trips() -> None:
    data = json.loads(render.to_json(views(), 3, 99.0))
    assert (data["boot"], data["boot_since"]) == (3, 99.0)
    claude = data["units"][0]
    assert set(claude) == set(UnitView.__struct_fields__)
    assert claude["history"][-1] == {
        "at": 110.0,
        "from": "pending",
        "to": "started",
        "reason": "",
        "waited": 9.5,
        "boot": 1,
        "restart": False,
    }
    assert msgspec.convert(claude, UnitView).name == "claude code"
    assert json.loads(render.to_json_one(views()[1]))["name"] == "git"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", None),
        ("30", 30.0),
        ("1.5", 1.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2m30s", 150.0),
        ("0s", None),
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "soon", "5 m", "m5", "-3", "1d", "5m30", "nan", "inf", "-inf", "1e400"]
)
def test_bad_durations_show_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 30s, 5m, 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["1e9", "10000h", "600000m"])
def test_a_duration_over_a_year_points_at_forever(text: str) -> None:
    with pytest.raises(ValueError, match="longer than a year: give 0 to wait forever"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.85, "850ms"), (4.2, "4.2s"), (185, "3m05s"), (3720, "1h02m")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_live_table_keeps_status_and_ready_readable_however_long_the_names(
    width: int,
) -> None:
    """255-byte names and long reasons give way; STATUS, READY and the times never do."""
    import io

    from rich.console import Console

    from unitsync.cli.watch import _Board
    from unitsync.wire.protocol import FullView

    long_views = [
        msgspec.structs.replace(view, name=prefix + "é" * 120, reason="r" * 300)
        for prefix, view in zip("ab", views(), strict=False)
    ]
    board = _Board(None)
    board.apply(FullView(long_views, 120.0))
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(board)
    lines = console.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    rows = [line for line in lines if "é" in line]
    assert [row.split("│")[2].strip() for row in rows] == ["started", "completed"]
    assert all(row.split("│")[3].strip() in ("yes", "no") for row in rows)
    assert all("…" in row.split("│")[1] for row in rows)


@pytest.mark.parametrize("cells", range(60, 201, 10))
def test_the_live_columns_fit_the_terminal_whatever_the_cells(cells: int) -> None:
    """The widest cells there are (a 255-byte name, a 7-digit pid, a run of 12 hours, a
    long reason): the table fits, and what gives way is what the README says."""
    from unitsync.cli.live_columns import COLUMNS, TIMELINE_FROM_CELLS, layout, table_cells

    widest = ["n" * 255, "completed", "yes", "w" * 100, "10:00:00", "12h05m", "pid 4194304 gone"]
    widths = layout(
        [[*widest, "r" * 300], ["git", "pending", "no", "-", "-", "1.2s", "-", "-"]], cells
    )
    assert table_cells(widths) <= cells
    assert list(widths) == [c for c in COLUMNS if c in widths]  # in order
    assert {"UNIT", "STATUS", "FOR", "REASON"} <= set(widths)
    assert ("TIMELINE" in widths) == (cells >= TIMELINE_FROM_CELLS)
    assert ("OWNER" in widths) == (cells >= 80) and widths.get("OWNER", 16) == 16  # never cut
    missing = set(COLUMNS) - set(widths) - ({"TIMELINE"} if cells < TIMELINE_FROM_CELLS else set())
    assert not missing or "SINCE" in missing  # the first to go


def test_the_live_columns_keep_everything_when_it_fits() -> None:
    from unitsync.cli.live_columns import layout, table_cells

    row = ["claude", "started", "yes", "-", "07:25:37", "3.3s", "run 4242", "-"]
    widths = layout([row], 200)
    assert widths == {
        "UNIT": 6,
        "STATUS": 9,
        "READY": 5,
        "WAITING ON": 10,
        "SINCE": 8,
        "FOR": 6,
        "OWNER": 8,
        "REASON": 6,
        "TIMELINE": 30,
    }
    assert table_cells(widths) < 200
