"""The README's console blocks, run top to bottom in one shell against a real agent.

Every console block in the README is real output and runs in order (issue 10): this
pastes them into bash as a reader would, in a private runtime and state dir, and
compares each command's exit status and the stable parts of what it printed. The pages of
docs/ run the same way, each in a session of its own (`test_docs_pages.py`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import agents_running, stop_agents
from harness.console_session import normalise, play, runnable

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_has_a_tour_to_run() -> None:
    tour = runnable(README)
    assert len(tour) >= 3
    assert tour[0].commands[0].line.startswith("unitsync agent")


def test_the_readme_runs_top_to_bottom(short_tmp: Path) -> None:
    try:
        assert play(README, short_tmp) == len(runnable(README))
    finally:
        stop_agents(agents_running(str(short_tmp)))  # any a command started by itself


@pytest.mark.parametrize(
    ("line", "same_as"),
    [
        ("claude: started after waiting 2.2s", "claude: started after waiting 850ms"),
        ("12:21:16  744ms  -", "07:01:59  1m05s  -"),
        (
            "(pid 9177) at /tmp/unitsync-1000/agent.sock",
            "(pid 12) at /run/user/0/unitsync/agent.sock",
        ),
    ],
)
def test_what_varies_between_runs_is_normalised(line: str, same_as: str) -> None:
    assert normalise(line) == normalise(same_as)
