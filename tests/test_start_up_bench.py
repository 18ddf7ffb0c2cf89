"""The 50-unit start-up benchmark checks the order each run produced (issue 22), and the check
has teeth: scripts launched with no ordering at all fail it; the same DAG ordered by
`unitsync sync run` passes it (a small DAG, real scripts, a real agent, the real CLI)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import start_up  # bench/start_up.py

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the work's stamps need bash")

SMALL = start_up.dag(seed=3, layers=3, width=2)
BIN = Path(sys.executable).parent


def test_the_order_check_reads_what_the_work_recorded() -> None:
    units = {"a": [], "b": ["a"]}
    right = "begin a 1.0\nend a 1.05\nbegin b 1.06\nend b 1.11\n"
    early = "begin a 1.0\nbegin b 1.01\nend a 1.05\nend b 1.06\n"
    twice = right + "begin a 2.0\nend a 2.05\n"
    assert start_up.check_order(units, right) == []
    assert start_up.check_order(units, early) == ["b began 0.040s before a ended"]
    assert start_up.check_order(units, twice) == ["a's work ran 2 times"]
    assert start_up.check_order(units, "") == ["a's work ran 0 times", "b's work ran 0 times"]


def test_scripts_launched_in_no_order_fail_the_check() -> None:
    outcome = start_up.launch("unordered", SMALL, BIN)
    assert any("before" in problem for problem in outcome.problems), outcome


def test_scripts_ordered_by_run_pass_the_check() -> None:
    outcome = start_up.launch("run", SMALL, BIN)
    assert outcome.problems == []
