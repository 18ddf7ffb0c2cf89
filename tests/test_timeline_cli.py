"""`timeline`, `critical-chain`, `blame` and the live watch against a real agent (SPEC §9).

A scripted start-up with known sleeps (a chain and a diamond, run concurrently as real
`run` processes): the figures the commands print must match the sleeps, generously (these
are not timing tests: they check that the right intervals are measured). The SVG is opened
in a real headless browser and its screenshot checked for what it should show.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from unitsync.agent.serve.server import AgentConfig

from conftest import AgentProcess, on_a_terminal, read_all, run_cli, spawn_cli

SVG = "{http://www.w3.org/2000/svg}"
SLEEPS = {"c": 0.6, "b": 0.3, "a": 1.6, "base": 1.2, "left": 0.1, "right": 0.9, "top": 0.3}
WANTS = {"b": ["c"], "a": ["b"], "left": ["base"], "right": ["base"], "top": ["left", "right"]}
SLACK = 1.5
"""How much longer than its sleep a run may measure: process start-up on a busy machine."""


@dataclass
class StartUp:
    socket: Path
    units: dict[str, dict]
    """`timeline -o json`'s units, by name."""


@pytest.fixture(scope="module")
def started_up() -> Iterator[StartUp]:
    """One real agent and the scripted start-up on it, shared by the tests that read it."""
    base = Path(tempfile.mkdtemp(prefix="us-"))
    agent = AgentProcess(AgentConfig(socket=base / "run" / "agent.sock", state_dir=base / "state"))
    agent.start()
    try:
        socket = agent.config.socket
        runs = []
        for unit, sleep in SLEEPS.items():
            wants = [arg for dep in WANTS.get(unit, []) for arg in ("--want", dep)]
            run = ("sync", "run", unit, *wants, "--", "sleep", str(sleep))
            runs.append(spawn_cli(*run, socket=socket))
        broken = ("sync", "run", "broken", "--want", "c", "--", "sh", "-c", "exit 3")
        runs.append(spawn_cli(*broken, socket=socket))
        runs.append(
            spawn_cli("sync", "run", "after", "--want", "broken", "--", "true", socket=socket)
        )
        for proc in runs:
            proc.communicate(timeout=60)
        result = run_cli("sync", "timeline", "-o", "json", socket=socket)
        assert result.code == 0, result.err
        yield StartUp(socket, {unit["name"]: unit for unit in json.loads(result.out)["units"]})
    finally:
        agent.kill()
        shutil.rmtree(base, ignore_errors=True)


def seconds(text: str) -> float:
    """A duration as the commands print it (850ms, 2.214s, 3m05.200s) in seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?([\d.]+)(ms|s)", text)
    assert match, text
    minutes, number, unit = match.groups()
    return int(minutes or 0) * 60 + float(number) * (0.001 if unit == "ms" else 1)


def test_the_timeline_measures_each_wait_and_run(started_up: StartUp) -> None:
    units = started_up.units
    for unit, sleep in SLEEPS.items():
        row = units[unit]
        assert row["status"] == "completed"
        assert sleep <= row["ran"] <= sleep + SLACK, (unit, row)
        assert row["ended"] - row["started"] == pytest.approx(row["ran"])
        assert row["started"] - row["wait_began"] == pytest.approx(row["waited"])
        # A unit starts once its last dependency completed, and not long after.
        if unit in WANTS:
            ready = max(units[dep]["ended"] for dep in WANTS[unit])
            assert 0 <= row["started"] - ready < SLACK, (unit, row)
    assert units["a"]["started"] - units["c"]["started"] >= SLEEPS["c"] + SLEEPS["b"]
    assert units["top"]["started"] - units["base"]["started"] >= SLEEPS["base"] + SLEEPS["right"]
    assert units["a"]["waited"] > SLEEPS["b"]  # it waited at least for all of b's run
    assert (units["broken"]["status"], units["broken"]["reason"]) == ("failed", "exit status 3")
    after = units["after"]  # failed while waiting: an outcome, no run
    assert (after["status"], after["started"], after["reason"]) == (
        "failed",
        None,
        "dependency broken failed",
    )


def test_critical_chain_and_blame_report_the_sleeps(started_up: StartUp) -> None:
    socket = started_up.socket
    for unit, expected in (("a", ["a", "b", "c"]), ("top", ["top", "right", "base"])):
        result = run_cli("sync", "critical-chain", unit, socket=socket)
        assert result.code == 0, result.err
        chain = [
            re.fullmatch(r"(?:\s*└─)?(\S+) @(\S+) \+(\S+)", line)
            for line in result.out.splitlines()[3:]
        ]
        assert [m.group(1) for m in chain] == expected, result.out
        for m in chain:
            assert SLEEPS[m.group(1)] <= seconds(m.group(3)) <= SLEEPS[m.group(1)] + SLACK
        total = sum(SLEEPS[name] for name in expected)
        assert total <= seconds(chain[0].group(2)) <= total + 3 * SLACK  # @: since the start
    last = max(started_up.units.values(), key=lambda u: u["ended"] or 0)["name"]
    default = run_cli("sync", "critical-chain", socket=socket).out.splitlines()[3]
    assert default.startswith(f"{last} @")

    blame = run_cli("sync", "blame", socket=socket).out.splitlines()
    figures = [seconds(line.split()[0]) for line in blame]
    assert figures == sorted(figures, reverse=True)
    names = [line.split()[1] for line in blame]
    assert names[:4] == ["a", "base", "right", "c"]  # at least 0.3s apart: no ties
    assert set(names) == {*SLEEPS, "broken"}  # `after` never ran
    assert "broken (failed: exit status 3)" in "\n".join(blame)


def test_piped_output_is_a_table_and_svg_is_drawn_to_scale(started_up: StartUp) -> None:
    socket = started_up.socket
    table = run_cli("sync", "timeline", socket=socket).out.splitlines()
    assert "\x1b" not in "\n".join(table)
    assert table[1].split()[:3] == ["UNIT", "STATUS", "WAITING"]
    assert {line.split()[0] for line in table[2:]} == set(started_up.units)

    svg = ET.fromstring(run_cli("sync", "timeline", "-o", "svg", socket=socket).out)
    bars = {}
    for group in svg.iter(f"{SVG}g"):
        if "unit" in group.get("class", "").split():
            name = group.find(f"{SVG}text").text
            run = [r for r in group.iter(f"{SVG}rect") if "run" in r.get("class")]
            bars[name] = float(run[0].get("width")) if run else None
    assert set(bars) == set(started_up.units)
    for unit in SLEEPS:  # widths in proportion to the measured run times
        ratio = bars[unit] / bars["a"]
        ran = started_up.units[unit]["ran"] / started_up.units["a"]["ran"]
        assert ratio == pytest.approx(ran, rel=1e-3)


def test_an_empty_history_and_what_is_not_there(agent_process: AgentProcess) -> None:
    socket = agent_process.config.socket
    empty = run_cli("sync", "timeline", socket=socket)
    assert empty.code == 0 and empty.out.startswith("no units in boot 1 yet: `unitsync sync start`")
    data = json.loads(run_cli("sync", "timeline", "-o", "json", socket=socket).out)
    assert (data["boot"], data["origin"], data["units"]) == (1, None, [])
    assert run_cli("sync", "blame", socket=socket).out == "no unit has run in this boot yet\n"
    chain = run_cli("sync", "critical-chain", socket=socket)
    assert chain.code == 1 and "no unit has completed in boot 1 yet; name the unit" in chain.err
    run_cli("sync", "run", "only", "--", "true", socket=socket)
    ghost = run_cli("sync", "critical-chain", "ghost", socket=socket)
    assert ghost.code == 1 and "unit 'ghost' has no history in boot 1" in ghost.err
    boot = run_cli("sync", "timeline", "--boot", "2", socket=socket)
    assert boot.code == 1 and "boot 2; the histories hold boot(s) 1; pick one" in boot.err
    single = run_cli("sync", "critical-chain", socket=socket).out.splitlines()
    assert re.fullmatch(r"only @\d+ms \+\d+ms", single[-1])


LONG = "migrate-the-orders-database-" + "x" * 217 + "-then-seed"
"""A 255-character unit name: the longest there is."""
TEXT_WIDTH = 120
"""The widest a line of `timeline`, `blame` or `critical-chain` gets with a unit name cut
to NAME_CELLS (40) columns and the figures of short runs."""


def test_a_long_name_is_shortened_in_text_and_whole_in_json(
    agent_process: AgentProcess,
) -> None:
    from unitsync.cli import cells

    socket = agent_process.config.socket
    assert len(LONG) == 255
    for unit, wants in (("base", []), (LONG, ["base"]), ("after", [LONG])):
        run = ("sync", "run", unit, *[a for dep in wants for a in ("--want", dep)], "--", "true")
        assert run_cli(*run, socket=socket).code == 0
    shown = LONG[:39] + "…"  # recognisable: the head, then the ellipsis (as `status` does)
    outputs = {
        "timeline": run_cli("sync", "timeline", socket=socket).out,
        "blame": run_cli("sync", "blame", socket=socket).out,
        "critical-chain": run_cli("sync", "critical-chain", socket=socket).out,
    }
    for command, text in outputs.items():
        assert shown in text and LONG not in text, (command, text)
        too_wide = [line for line in text.splitlines() if cells.width(line) > TEXT_WIDTH]
        assert not too_wide, (command, too_wide)
    chart = in_terminal(["sync", "timeline"], socket, 200, {"NO_COLOR": "1"})
    assert shown + "  " in chart and LONG[:41] not in chart  # the name column: 40, not 59
    chain = outputs["critical-chain"].splitlines()[3:]
    assert [line.split()[0].removeprefix("└─") for line in chain] == ["after", shown, "base"]
    units = json.loads(run_cli("sync", "timeline", "-o", "json", socket=socket).out)["units"]
    assert [unit["name"] for unit in units] == ["base", LONG, "after"]
    assert units[2]["dependencies"] == [LONG]


# --- on a terminal -----------------------------------------------------------------------------


def in_terminal(
    args: list[str], socket: Path, columns: int, env: dict[str, str] | None = None
) -> str:
    """What `unitsync ARGS` shows on a terminal `columns` wide."""
    proc, terminal = on_a_terminal(*args, socket=socket, columns=columns, env=env)
    output = read_all(terminal)
    proc.wait(timeout=60)
    return output.decode().replace("\r\n", "\n")


@pytest.mark.parametrize("columns", [80, 200])
def test_on_a_terminal_the_chart_fits_its_width(started_up: StartUp, columns: int) -> None:
    from unitsync.cli import cells

    socket = started_up.socket
    plain = in_terminal(["sync", "timeline"], socket, columns, {"NO_COLOR": "1"})
    lines = plain.rstrip("\n").split("\n")
    assert "\x1b" not in plain
    assert all(cells.width(line) <= columns for line in lines), plain
    assert lines[1].split()[:3] == ["UNIT", "WAITED", "RAN"]
    names = set(started_up.units)
    assert {line.split()[0] for line in lines[3 : 3 + len(names)]} == names
    coloured = in_terminal(["sync", "timeline"], socket, columns)
    assert "\x1b[1;31m" in coloured  # the failed unit, in red
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain


def test_the_live_watch_shows_a_bar_growing(agent_process: AgentProcess) -> None:
    socket = agent_process.config.socket
    watch, terminal = on_a_terminal("sync", "status", "--watch", socket=socket, columns=160)
    screen = bytearray()
    reader = threading.Thread(target=lambda: screen.extend(read_all(terminal)), daemon=True)
    reader.start()
    try:
        run_cli("sync", "want", "slow", "quick", socket=socket)
        run_cli("sync", "run", "quick", "--", "sleep", "0.5", socket=socket)
        run_cli("sync", "run", "slow", "--", "sleep", "2", socket=socket)
        time.sleep(1)  # a few more redraws (two a second) after the end
    finally:
        watch.terminate()
        watch.wait(timeout=30)
        reader.join(timeout=30)
    frames = screen.decode(errors="replace")
    assert "TIMELINE" in frames
    slow = [line for line in frames.split("\n") if "│ slow " in line]
    running = [line.count("█") for line in slow if "▶" in line]
    assert len(running) >= 2 and running[-1] > running[0], slow  # it grew while it ran
    assert any("completed" in line and "█" in line and "▶" not in line for line in slow)


# --- in a real browser -------------------------------------------------------------------------


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, unfiltered pixel rows): enough of PNG for a check."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (2, 6), header
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * bpp
    out, prev, i = bytearray(), bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up, corner = prev[x], prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + left) & 255
            elif kind == 2:
                line[x] = (line[x] + up) & 255
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + predictor) & 255
        out += line
        prev = line
    return width, height, bpp, bytes(out)


def headless(browser: str, tmp: Path, *args: str | Path) -> str:
    """Run Chromium headless on a page (the last argument); what it printed."""
    *options, page = args
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp / 'profile'}",
            *map(str, options),
            Path(page).as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def test_a_real_browser_shows_the_svg(started_up: StartUp) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium here: install Debian's `chromium` package (.ci/run does)")
    svg = run_cli("sync", "timeline", "-o", "svg", socket=started_up.socket).out
    with tempfile.TemporaryDirectory(prefix="us-browser-") as tmp:
        page, shot = Path(tmp) / "timeline.svg", Path(tmp) / "shot.png"
        page.write_text(svg)
        headless(browser, Path(tmp), f"--screenshot={shot}", "--window-size=1300,420", page)
        width, height, bpp, pixels = decode_png(shot.read_bytes())
    assert (width, height) == (1300, 420)
    counts = {"ink": 0, "red": 0, "green": 0, "wait": 0}
    for i in range(0, len(pixels), bpp):
        r, g, b = pixels[i], pixels[i + 1], pixels[i + 2]
        if r + g + b < 600:
            counts["ink"] += 1
        if r > 170 and g < 80 and b < 80:
            counts["red"] += 1  # the failed unit's marks (#cf222e)
        if g > 130 and r < 90 and b < 110:
            counts["green"] += 1  # runs that completed (#2da44e)
        if abs(r - 200) < 8 and abs(g - 209) < 8 and abs(b - 220) < 8:
            counts["wait"] += 1  # waits (#c8d1dc)
    assert counts["ink"] > 5000, counts  # text and bars, not a blank page
    assert counts["green"] > 2000 and counts["red"] > 100 and counts["wait"] > 1000, counts


MEASURE = """<!DOCTYPE html><html><body>{svg}<pre id="measured"></pre><script>
const svg = document.querySelector("svg");
document.getElementById("measured").textContent = JSON.stringify({{
  width: svg.viewBox.baseVal.width,
  texts: [...svg.querySelectorAll("text")].map(t => {{
    const box = t.getBBox(); return [box.x, box.x + box.width];
  }}),
}});
</script></body></html>"""
"""A page around the SVG whose script writes where the browser drew each text (the SVG
itself has no script: this is the test's harness, read back with --dump-dom)."""


def test_a_real_browser_draws_every_label_inside_the_svg(started_up: StartUp) -> None:
    from test_timeline import crowded_svg, text_extents

    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium here: install Debian's `chromium` package (.ci/run does)")
    real = run_cli("sync", "timeline", "-o", "svg", socket=started_up.socket).out
    for svg in (real, crowded_svg()):
        with tempfile.TemporaryDirectory(prefix="us-browser-") as tmp:
            page = Path(tmp) / "measure.html"
            page.write_text(MEASURE.format(svg=svg.split("\n", 1)[1]))  # without <?xml ...?>
            dom = headless(browser, Path(tmp), "--dump-dom", page)
        found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
        assert found, dom[-2000:]
        measured = json.loads(html.unescape(found.group(1)))
        width, estimated = text_extents(svg)
        assert measured["width"] == width
        assert len(measured["texts"]) == len(estimated)
        for (left, right), (text, _, guess) in zip(measured["texts"], estimated, strict=True):
            assert left >= 0 and right <= width, (text[:60], left, right, width)
            assert right <= guess + 0.5, (text[:60], right, guess)  # estimated on the wide side
