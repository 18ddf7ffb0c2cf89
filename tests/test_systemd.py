"""docs/systemd.md under a real systemd user manager, with the page's own units: its console
block typed as its reader would (issue 23), and never two listeners on one path, socket
activation included (SPEC §11; issue 19, sequence 6).

systemd cannot run as this machine's init, but its user manager runs fine as root in a
private mount namespace with a tmpfs over /run/systemd holding an empty `system/` (how
docs/systemd.md was recorded). `harness/systemd_user.py` does that and plays the page or the
sequence; this checks what it saw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import agents_running, stop_agents

HERE = Path(__file__).resolve().parent
LIMIT = 600
"""A safety net for the whole sequence (a dozen agent starts), never a measure of speed."""


def _why_not() -> str | None:
    if os.getuid() != 0:
        return "needs root (a private mount namespace and a tmpfs over /run/systemd)"
    for tool in ("systemd", "systemctl", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def under_a_user_manager(short_tmp: Path, play: str) -> dict:
    """What `harness/systemd_user.py` saw playing `play` (`page`, `sequence-6`)."""
    work = short_tmp / "sd"
    work.mkdir()
    driver = HERE / "harness" / "systemd_user.py"
    units = HERE.parent / "docs" / "systemd.md"
    namespace = ["unshare", "-m", "--propagation", "private"]
    try:
        done = subprocess.run(
            [*namespace, sys.executable, driver, work, units, play],
            capture_output=True,
            text=True,
            timeout=LIMIT,
        )
    finally:
        stop_agents(agents_running(str(work)))  # nothing may outlive the namespace's manager
    assert done.returncode == 0, done.stderr[-6000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    print(json.dumps(seen, indent=1))
    return seen


@pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
def test_the_pages_console_block_runs_as_written_under_a_user_manager(short_tmp: Path) -> None:
    """Every step of docs/systemd.md's session, typed in order with the page's units: exit
    codes and lines as the page shows them (normalised as every page's are)."""
    seen = under_a_user_manager(short_tmp, "page")
    assert seen["difference"] is None, seen["difference"]
    assert seen["played"] == 1


@pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
def test_sequence_6_a_socket_unit_back_from_its_start_limit_listens_alone(
    short_tmp: Path,
) -> None:
    seen = under_a_user_manager(short_tmp, "sequence-6")
    # The crash loop ends as measured: systemd gives up and removes its socket file.
    assert (seen["socket_state"], seen["socket_result"]) == ("failed", "service-start-limit-hit")
    assert not seen["socket_file_after_failure"]
    assert not seen["first_ping_autostarted"]  # with the socket up, no client starts one
    # With no socket at all, a command starts an agent, as it would without systemd.
    assert seen["autostarted"]
    assert seen["listeners_with_autostarted_agent"] == 1
    # Back the documented way: systemd's socket serves, its own agent answers, the
    # autostarted one stepped aside (saying so) and never bound over systemd's path.
    assert seen["socket_state_restarted"] == "active"
    assert seen["ping_after_restart_pid"] == seen["service_pid"]
    assert seen["autostarted_agent_said"], "the autostarted agent never said it stepped aside"
    assert seen["listeners_after"] == 1
    assert seen["later_ping_pid"] == seen["service_pid"]
    assert seen["service_state"] == "active"
    assert seen["listeners_at_the_end"] == 1
    assert not seen["socket_file_after_stop"]  # RemoveOnStop=yes
