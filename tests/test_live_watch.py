"""`status --watch` on a real terminal: it fits the terminal's width and height, whatever the
owners' pids and however many units (README, `status --watch`)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from unitsync.cli.cells import width
from unitsync.cli.live_columns import TIMELINE_FROM_CELLS
from unitsync.client import Client

from conftest import AgentProcess, on_a_terminal, read_all, read_until, run_cli, spawn_cli

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HANG_GUARD = 120
"""Seconds after which a watch that has not shown or stopped counts as hung (not a speed
bound: the machine is shared and slow at times)."""


def screen_lines(output: bytes) -> list[str]:
    """Every line the terminal was sent, escape codes stripped (a carriage return starts a
    line too: rich moves back to column 0 to redraw a frame)."""
    lines = re.split(r"[\r\n]", ESCAPES.sub("", output.decode(errors="replace")))
    return [line for line in lines if line]


def last_frame(lines: list[str]) -> list[str]:
    start = max(i for i, line in enumerate(lines) if line.startswith("unitsync: every unit"))
    return lines[start:]


def first_frame_with(terminal: int, needle: bytes) -> bytes:
    """What the terminal showed up to the end of the first frame that shows `needle`."""
    shown = read_until(terminal, needle, limit=HANG_GUARD)
    assert needle in shown, shown[-3000:]
    return shown + read_until(terminal, b"Ctrl-C to stop", limit=HANG_GUARD)


def interrupt(proc: subprocess.Popen[bytes], terminal: int, shown: bytes) -> list[str]:
    """Ctrl-C, as a terminal sends it; what the terminal showed, once the watch is gone."""
    proc.send_signal(signal.SIGINT)
    shown += read_all(terminal)
    assert proc.wait(timeout=HANG_GUARD) == 0  # README: Ctrl-C exits 0
    return screen_lines(shown)


@pytest.fixture
def owned_units(agent_process: AgentProcess) -> Iterator[Path]:
    """Units whose OWNER cells are as wide as they get: a script gone, a `run` still running."""
    socket = agent_process.config.socket
    run_cli("sync", "want", "claude", "git", socket=socket)
    run_cli("sync", "want", "lint-the-whole-frontend-workspace", "git", socket=socket)
    script = f"{shlex.quote(sys.executable)} -m unitsync.cli sync start git"
    environment = dict(os.environ, UNITSYNC_SOCKET=str(socket))
    subprocess.run(["sh", "-c", script], check=True, env=environment)  # its owner: gone
    server = spawn_cli("sync", "run", "server", "--", "sleep", "300", socket=socket)
    assert server.stderr is not None
    assert "server: started" in server.stderr.readline()
    reason = "exit status 2: eslint found 14 problems in src/components/Settings.tsx"
    failed = run_cli(
        "sync", "fail", "lint-the-whole-frontend-workspace", "--reason", reason, socket=socket
    )
    assert failed.code == 0, failed.err
    yield socket
    server.terminate()
    server.communicate(timeout=60)


@pytest.mark.parametrize("columns", [80, 100, 160])
def test_the_live_table_never_overflows_the_terminal(owned_units: Path, columns: int) -> None:
    proc, terminal = on_a_terminal("sync", "status", "--watch", socket=owned_units, columns=columns)
    lines = interrupt(proc, terminal, first_frame_with(terminal, b"server"))
    too_wide = [line for line in lines if width(line) > columns]
    assert not too_wide, "\n".join(too_wide)
    frame = last_frame(lines)
    header = next(line for line in frame if "UNIT" in line)
    assert ("TIMELINE" in header) == (columns >= TIMELINE_FROM_CELLS), "\n".join(frame)
    owners = [cell.strip() for line in frame for cell in line.split("│")[1:]]
    assert any(re.fullmatch(r"pid \d+ gone", cell) for cell in owners), "\n".join(frame)
    assert any(re.fullmatch(r"run \d+", cell) for cell in owners), "\n".join(frame)
    table = [line for line in frame if line[:1] in "┏┃┡│└"]
    assert all(line[-1] in "┓┃┩│┘" for line in table), "\n".join(frame)  # the right border
    if columns >= TIMELINE_FROM_CELLS:
        server = next(line for line in frame if "│ server" in line)
        assert "▶" in server  # its bar, still running


def test_with_thousands_of_units_the_watch_shows_what_fits_and_says_what_not(
    agent_process: AgentProcess,
) -> None:
    socket = agent_process.config.socket
    units = 3000
    with Client(socket, autostart=False) as client:
        for i in range(1, units):
            client.want(f"unit-{i:04d}", f"unit-{(i - 1) // 2:04d}")
        client.start("unit-0000")
        client.fail("unit-0005", "exit status 1", force=True)
    proc, terminal = on_a_terminal("sync", "status", "--watch", socket=socket)  # 40 rows
    frame = last_frame(interrupt(proc, terminal, first_frame_with(terminal, b"more units")))
    rows = [line.split("│")[1].strip() for line in frame if line.startswith("│")]
    assert 10 <= len(rows) <= 40
    assert rows[:2] == ["unit-0005", "unit-0000"]  # failed, then running, then the rest
    assert rows[2:] == sorted(rows[2:])
    more = next(line for line in frame if "more units" in line)
    assert f"… and {units - len(rows):,} more units" in more
    assert "`unitsync sync status` lists them all" in more
