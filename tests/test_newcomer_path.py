"""The newcomer's path, round three (issue 23): each defect a new user met, through the real
CLI against a real agent (a pseudo-terminal where the terminal matters)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from unitsync.cli.usage import USAGE
from unitsync.client import Client

from conftest import AgentProcess, on_a_terminal, read_all, read_until, run_cli, sock

UNITSYNC = str(Path(sys.executable).with_name("unitsync"))

# --- 6. a negative duration is said to be one ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["start", "foo", "--timeout", "-5s"],
            "start: --timeout -5s: a duration cannot be negative",
        ),
        (
            ["run", "foo", "--ready-cmd", "true", "--ready-interval", "-1s", "--", "true"],
            "run: --ready-interval -1s: a duration cannot be negative",
        ),
        (["start", "foo", "--timeout"], "start: --timeout needs a value"),
    ],
)
def test_a_negative_duration_is_refused_as_negative(
    short_tmp: Path, args: list[str], said: str
) -> None:
    result = run_cli("sync", *args, socket=short_tmp / "none.sock")
    assert result.code == 2
    first, usage = result.err.splitlines()
    assert first.startswith(f"unitsync: {said}"), result.err
    assert usage == f"usage: {USAGE[args[0]]}"


# --- 9. forgotten names, options after `--`, the autostart switch -------------------------------


def test_a_forgotten_unit_is_said_to_be_forgotten_and_when(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    assert run_cli("sync", "want", "clade", "git", socket=s).code == 0
    assert run_cli("sync", "forget", "clade", socket=s).code == 0
    reset = run_cli("sync", "reset", "clade", socket=s)
    assert reset.code == 1
    assert "unknown unit 'clade': it was forgotten at 20" in reset.err
    assert "(`forget`); check the name" in reset.err
    failed = run_cli("sync", "fail", "clade", socket=s)
    assert failed.code == 1 and "it was forgotten at" in failed.err
    assert "(or use --force to declare it failed anyway)" in failed.err
    never = run_cli("sync", "status", "ghost", socket=s)
    assert (
        never.err == "unitsync: unknown unit 'ghost': never named (or forgotten); check the name\n"
    )
    # Named again, it is a unit again, and no longer "forgotten".
    assert run_cli("sync", "want", "clade", "git", socket=s).code == 0
    assert run_cli("sync", "forget", "clade", socket=s).code == 0
    assert run_cli("sync", "start", "clade", socket=s).code == 0
    assert "forgotten" not in run_cli("sync", "reset", "clade", socket=s).err


def test_a_name_after_dashes_that_is_an_option_is_warned_of(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    result = run_cli("sync", "want", "--", "-weird2", "-other", "--once", socket=s)
    assert result.code == 0, result.err
    assert result.out == "-weird2 now wants -other, --once\n"
    assert result.err == (
        "unitsync: warning: '--once' after `--` is taken as a unit name, not as the option "
        "--once; options go before `--`\n"
    )
    plain = run_cli("sync", "want", "--", "-weird3", "-other", socket=s)
    assert plain.code == 0 and plain.err == ""  # names that are no option: nothing to say


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF", " off "])
def test_autostart_off_in_any_usual_spelling(
    short_tmp: Path, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNITSYNC_AUTOSTART", value)
    result = run_cli("sync", "ping", socket=short_tmp / "run" / "a.sock")
    assert result.code == 3 and "no agent is listening" in result.err
    assert not (short_tmp / "run").exists()  # nothing was started, not even its folder


@pytest.mark.parametrize("value", ["maybe", "2", "disabled"])
def test_autostart_set_to_neither_on_nor_off_is_refused_in_one_line(
    short_tmp: Path, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNITSYNC_AUTOSTART", value)
    result = run_cli("sync", "ping", socket=short_tmp / "run" / "a.sock")
    assert result.code == 2
    assert result.err == (
        f"unitsync: UNITSYNC_AUTOSTART={value!r} is neither on nor off: use 1, true, yes, on "
        "(start an agent when none answers) or 0, false, no, off (never)\n"
    )


@pytest.mark.parametrize("words", [["ping"], ["want", "a", "b"], ["status"]])
def test_a_bad_autostart_switch_is_refused_even_with_an_agent_running(
    agent_process: AgentProcess, words: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hot commands (answered before cyclopts) and the others alike: a typo is said at once,
    not only on the day no agent answers."""
    monkeypatch.setenv("UNITSYNC_AUTOSTART", "maybe")
    result = run_cli("sync", *words, socket=sock(agent_process))
    assert (result.code, result.out) == (2, "")
    assert "UNITSYNC_AUTOSTART='maybe' is neither on nor off" in result.err
    monkeypatch.setenv("UNITSYNC_AUTOSTART", "0")
    shown = run_cli("sync", "status", "-o", "json", socket=sock(agent_process))
    assert shown.code == 0 and '"name": "a"' not in shown.out  # nothing was changed


# --- 4. `run` of a unit whose name begins with `-` ----------------------------------------------


def test_run_takes_a_unit_that_begins_with_a_dash_between_two_dashes(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    ran = run_cli("sync", "run", "--", "-x", "--", "echo", "hi", "--", "there", socket=s)
    assert ran.code == 0, ran.err
    assert ran.out == "hi -- there\n"  # the command's own `--` is its own
    assert ran.err == "-x: started\n"
    assert run_cli("sync", "status", "-x", "-o", "json", socket=s).code == 2  # an option, there
    shown = run_cli("sync", "status", "-o", "json", "--", "-x", socket=s)
    assert '"status": "completed"' in shown.out
    with_options = run_cli("sync", "run", "--want=-x", "--", "-y", "--", "true", socket=s)
    assert with_options.code == 0, with_options.err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["run", "--", "-x", "echo"],
            "run: a UNIT given after `--` (-x) needs a second `--` before the command: "
            "unitsync sync run [OPTIONS] -- -x -- COMMAND",
        ),
        (
            ["run", "-x", "--", "echo"],
            "run: unknown option '-x'; if it is a unit name, put it between two `--`, with the "
            "options before (unitsync sync run [OPTIONS] -- -x -- COMMAND)",
        ),
        (["run", "--", "-x", "--"], "run needs a command after `--`"),
    ],
)
def test_a_dashed_unit_given_to_run_the_wrong_way_is_told_the_right_way(
    short_tmp: Path, args: list[str], said: str
) -> None:
    result = run_cli("sync", *args, socket=short_tmp / "none.sock")
    assert result.code == 2
    assert result.err == f"unitsync: {said}\nusage: {USAGE['run']}\n"


# --- 10. 141 only for output longer than the pipe ------------------------------------------------


def test_short_output_into_head_exits_0_and_long_output_exits_141(
    agent_process: AgentProcess,
) -> None:
    """As the exit-code table says: only output longer than the pipe's buffer meets a
    closed pipe (a short one is written whole before `head` has read its line)."""
    s = sock(agent_process)
    assert run_cli("sync", "want", "short", "base", socket=s).code == 0

    def piped() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"{UNITSYNC} sync status -o json | head -1"],
            capture_output=True,
            text=True,
            env=dict(os.environ, UNITSYNC_SOCKET=str(s)),
            timeout=60,
        )

    short = piped()
    assert (short.returncode, short.stdout, short.stderr) == (0, "{\n", "")
    with Client(s) as client:
        for i in range(3000):  # about 1 MB of JSON: far more than a pipe holds
            client.want(f"unit-{i:04}", "base")
    long = piped()
    assert (long.returncode, long.stdout, long.stderr) == (141, "{\n", "")


# --- 3. a `start` in the background of its terminal does not redraw ----------------------------


def _shell_on_a_terminal(script: str, socket: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`bash -c SCRIPT` as the session leader of a new pseudo-terminal (its controlling
    terminal, as a login shell's is), with job control on: `cmd &` runs in a process group
    of its own, in the background, and `fg` brings it to the foreground."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    env = dict(os.environ, UNITSYNC_SOCKET=str(socket), TERM="xterm", PATH=_path())
    proc = subprocess.Popen(
        ["bash", "-c", f"set -m\n{script}"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(follower)
    return proc, leader


def _path() -> str:
    return f"{Path(UNITSYNC).parent}:{os.environ.get('PATH', '')}"


def _drain(terminal: int, seconds: float) -> bytes:
    """What the terminal shows over the next `seconds` (the start ticks once a second)."""
    seen = b""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if select.select([terminal], [], [], left)[0]:
            try:
                seen += os.read(terminal, 65536)
            except OSError:
                break
    return seen


def test_a_start_in_the_background_of_a_terminal_prints_lines_and_redraws_once_in_front(
    agent_process: AgentProcess, short_tmp: Path
) -> None:
    s = sock(agent_process)
    assert run_cli("sync", "want", "app", "db", socket=s).code == 0
    go = short_tmp / "fg"
    shell, terminal = _shell_on_a_terminal(
        f"unitsync sync start app --timeout 0 &\n"
        f"while [ ! -e {go} ]; do sleep 0.05; done\n"
        "fg %1 >/dev/null\n",
        s,
    )
    try:
        seen = read_until(terminal, b"app: waiting for db\r\n")
        seen += _drain(terminal, 2.5)  # two ticks at least: in the background, no redraw
        assert seen.count(b"app: waiting for db") == 1, seen
        assert b"\x1b[K" not in seen and b"\r" not in seen.replace(b"\r\n", b""), seen
        go.touch()  # `fg`: from now on it is in front, and redraws its line
        redrawn = read_until(terminal, b")")
        assert b"\r\x1b[Kapp: waiting for db (" in redrawn, redrawn
        assert run_cli("sync", "start", "db", socket=s).code == 0
        assert run_cli("sync", "complete", "db", socket=s).code == 0
        ended = read_until(terminal, b"app: started after waiting")
        assert b"\r\x1b[Kapp: started after waiting" in ended, ended
        assert shell.wait(timeout=60) == 0
    finally:
        os.close(terminal)
        if shell.poll() is None:
            shell.kill()


# --- 7. help reads like a man page ----------------------------------------------------------------

HELPS = [
    ["--help"],
    ["agent", "--help"],
    ["sync", "--help"],
    *[
        ["sync", command, "--help"]
        for command in ("ping", "want", "start", "complete", "fail", "reset", "forget")
    ],
    *[["sync", command, "--help"] for command in ("status", "run", "timeline", "blame")],
]


def _reads_like_a_man_page(text: str, width: int) -> None:
    lines = text.splitlines()
    assert lines and lines[0].startswith("Usage: unitsync"), text
    for line in lines:
        assert len(line) <= width, line  # wrapped to the width
        assert not re.search(r"\[default: (False|True|\(\)|None)\]", line), line  # no Python
        assert not line.rstrip().endswith(("[default:", "[env var:", "[choices:")), line
    words = " ".join(text.split())
    assert "[default: ()]" not in words and "[default: False]" not in words


@pytest.mark.parametrize("args", HELPS, ids=lambda args: " ".join(args))
def test_help_piped_is_wrapped_at_words_with_no_python_values(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = run_cli(*args)
    assert result.code == 0, result.err
    _reads_like_a_man_page(result.out, 80)


def test_help_on_an_80_column_terminal_keeps_phrases_whole(agent_process: AgentProcess) -> None:
    proc, terminal = on_a_terminal("sync", "run", "--help", socket=sock(agent_process), columns=80)
    shown = read_all(terminal).decode().replace("\r\n", "\n")
    assert proc.wait(timeout=60) == 0
    _reads_like_a_man_page(shown, 80)
    assert "waits forever [default: 5m]." in shown  # not `[default:` at a line's end
    assert "UNIT is completed when it is ready" in " ".join(shown.split())
    assert "\x1b[" not in shown and not re.search("[\u2500-\u257f]", shown)  # no boxes
