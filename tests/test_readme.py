"""The README's console blocks, run top to bottom in one shell against a real agent.

Every console block in the README is real output and runs in order (issue 10): this
pastes them into bash as a reader would, in a private runtime and state dir, and
compares each command's exit status and the stable parts of what it printed.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import agents_running, stop_agents
from harness.readme_session import Shell, blocks, normalise

README = Path(__file__).resolve().parent.parent / "README.md"
COMMAND_TIMEOUT = 60.0
"""Generous: a command that hangs fails the test instead of hanging CI."""


def test_the_readme_has_a_tour_to_run() -> None:
    runnable = [b for b in blocks(README.read_text()) if b.skip is None]
    assert len(runnable) >= 3
    assert runnable[0].commands[0].line.startswith("unitsync agent")


def test_the_readme_runs_top_to_bottom(short_tmp: Path) -> None:
    home = short_tmp / "home"
    runtime = short_tmp / "runtime"
    for folder in (home, runtime):
        folder.mkdir(mode=0o700)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("PYTHON")})
    shell = Shell(home, env)
    try:
        for block in blocks(README.read_text()):
            if block.skip is not None:
                continue
            printed: list[str] = []
            for command in block.commands:
                code, output = shell.run(command, COMMAND_TIMEOUT)
                printed += output.splitlines()
                if not command.background:
                    assert code == command.exit_code, (
                        f"block {block.number}: `{command.line}` exited {code}, "
                        f"the README says {command.exit_code}:\n{output}"
                    )
            codes, output = shell.finish_jobs(COMMAND_TIMEOUT)
            printed += output.splitlines()
            background = [c for c in block.commands if c.background and not c.long_lived]
            assert codes == [c.exit_code for c in background], f"block {block.number}: {output}"
            expected = Counter(normalise(line) for c in block.commands for line in c.expected)
            actual = Counter(normalise(line) for line in printed if line.strip())
            assert actual == expected, (
                f"block {block.number} printed other lines than the README shows:\n"
                f"  only in the README: {sorted((expected - actual).elements())}\n"
                f"  only printed: {sorted((actual - expected).elements())}"
            )
    finally:
        shell.close()
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
