"""What `run`'s command starts with (`cli/run/children.spawn`, `posix_spawn`), and its `Child`.

The command gets what `subprocess.Popen` gave it before: SIGPIPE and SIGXFSZ at their
defaults (Python ignores them; a command in a pipeline must die of SIGPIPE, not print
"Broken pipe"), none of the descriptors `run` inherited past stdin, stdout and stderr, and
its own process group. Through the real CLI, with real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from unitsync.cli.run.children import spawn
from unitsync.wire.host import exits

from conftest import AgentProcess, run_cli, sock

SIGNALS_IGNORED = "grep SigIgn /proc/self/status"


def _ignored(status_line: str) -> set[int]:
    """The signals a `SigIgn:` line of /proc/PID/status says are ignored."""
    mask = int(status_line.split()[-1], 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


def test_the_command_meets_sigpipe_and_sigxfsz_at_their_defaults(
    agent_process: AgentProcess,
) -> None:
    result = run_cli(
        "sync", "run", "sigs", "--", "sh", "-c", SIGNALS_IGNORED, socket=sock(agent_process)
    )
    assert result.code == 0, result.err
    ignored = _ignored(result.out.strip())
    assert signal.SIGPIPE not in ignored and signal.SIGXFSZ not in ignored
    # ... so a producer in a pipeline ends quietly when its reader has read enough.
    result = run_cli(
        "sync", "run", "pipe", "--", "sh", "-c", "yes | head -n 1", socket=sock(agent_process)
    )
    assert (result.code, result.out) == (0, "y\n")
    assert "Broken pipe" not in result.err


def test_a_descriptor_run_inherited_is_not_the_commands(agent_process: AgentProcess) -> None:
    environ = dict(os.environ, UNITSYNC_SOCKET=str(sock(agent_process)))
    read_end, write_end = os.pipe()  # passed on as a caller's `3>file` passes a descriptor
    check = [
        "sh",
        "-c",
        f"if [ -e /proc/self/fd/{write_end} ]; then echo open; else echo closed; fi",
    ]
    unitsync = [sys.executable, "-m", "unitsync.cli", "sync", "run", "fds", "--"]
    try:
        found = [
            subprocess.run(
                line, capture_output=True, text=True, env=environ, pass_fds=(write_end,), timeout=60
            )
            for line in (check, unitsync + check)
        ]
    finally:
        os.close(read_end)
        os.close(write_end)
    assert found[0].stdout == "open\n"  # the check sees it without `run`
    assert (found[1].returncode, found[1].stdout) == (0, "closed\n"), found[1].stderr


def test_a_child_waited_for_with_a_timeout_still_runs_then_is_reaped() -> None:
    child = spawn(["sleep", "60"])
    try:
        assert os.getpgid(child.pid) == child.pid  # a group of its own
        with pytest.raises(TimeoutError):
            child.wait(0.01)
        assert child.poll() is None
    finally:
        os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert child.returncode == -signal.SIGKILL


def test_without_pidfds_a_timed_wait_asks_until_the_child_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(exits, "exit_descriptor", lambda _pid: None)
    child = spawn(["sleep", "60"])
    try:
        with pytest.raises(TimeoutError):
            child.wait(0.01)
    finally:
        os.kill(child.pid, signal.SIGTERM)
    assert child.wait(60) == -signal.SIGTERM


def test_a_run_started_with_sigchld_ignored_still_learns_how_its_command_ended(
    agent_process: AgentProcess,
) -> None:
    """A parent may leave SIGCHLD ignored across exec; the kernel would then reap `run`'s
    command unasked, and its status would be lost (`subprocess` called it 0)."""
    environ = dict(os.environ, UNITSYNC_SOCKET=str(sock(agent_process)))
    ended = subprocess.run(
        [sys.executable, "-m", "unitsync.cli", "sync", "run", "chld", "--", "sh", "-c", "exit 3"],
        capture_output=True,
        text=True,
        env=environ,
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN),
        timeout=60,
    )
    assert ended.returncode == 3, ended.stderr
    status = run_cli("sync", "status", "chld", socket=sock(agent_process))
    assert "exit status 3" in status.out
