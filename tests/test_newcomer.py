"""The command line as a newcomer meets it (issue 10): each defect found by following the README
and making the usual mistakes, through the real CLI against a real agent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from unitsync.agent.serve.server import AgentConfig
from unitsync.client import Client

from conftest import AgentProcess, on_a_terminal, read_until, run_cli, sock, spawn_cli

UNITSYNC = str(Path(sys.executable).with_name("unitsync"))
BOX_DRAWING = re.compile("[\u2500-\u257f]")


def units(socket: Path) -> dict[str, dict]:
    """Every unit, by name, as `status -o json` prints it."""
    printed = json.loads(run_cli("sync", "status", "-o", "json", socket=socket).out)
    return {unit["name"]: unit for unit in printed["units"]}


def row(socket: Path, name: str) -> list[str]:
    """The cells of `name`'s row in the plain `status` table."""
    table = run_cli("sync", "status", socket=socket).out.splitlines()
    return next(line for line in table if line.startswith(name)).split()


# --- 1. no advice that would break the machine ----------------------------------------------


def test_a_socket_in_a_shared_folder_gets_a_private_folder_suggested(short_tmp: Path) -> None:
    shared = Path(tempfile.gettempdir())  # sticky and writable by everyone
    socket = shared / f"us-{os.getpid()}-x.sock"
    result = run_cli("agent", "--socket", str(socket), "--state-dir", str(short_tmp / "state"))
    assert result.code == 1
    assert f"refusing to use {shared}: it is writable by others (mode 1777)" in result.err
    assert "chmod" not in result.err
    assert "put the socket in a private folder, e.g. --socket /tmp/" in result.err
    assert "-unitsync/agent.sock" in result.err
    assert not socket.exists()


def test_a_private_folder_left_open_gets_the_chmod_advice(short_tmp: Path) -> None:
    folder = short_tmp / "open"
    folder.mkdir()
    folder.chmod(0o777)  # ours, not sticky: closing it is the fix
    result = run_cli(
        "agent", "--socket", str(folder / "a.sock"), "--state-dir", str(short_tmp / "state")
    )
    assert result.code == 1
    assert f"run `chmod 700 {folder}`" in result.err


# --- 4. a closed pipe is not an error worth a traceback ---------------------------------------


def test_status_piped_into_head_exits_quietly(agent_process: AgentProcess) -> None:
    with Client(sock(agent_process)) as client:
        for i in range(3000):  # far more than a pipe holds
            client.want(f"unit-{i:04}", "base")
    for output in ("table", "json"):
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"{UNITSYNC} sync status -o {output} | head -1"],
            capture_output=True,
            text=True,
            env=dict(os.environ, UNITSYNC_SOCKET=str(sock(agent_process))),
            timeout=60,
        )
        assert proc.returncode in (0, 141), proc.stderr  # 141: killed by SIGPIPE, as `yes` is
        assert proc.stderr == ""
        assert proc.stdout.count("\n") == 1


def test_help_into_a_closed_pipe_exits_quietly() -> None:
    """`true` reads nothing and is gone before the help is written: the writer gets EPIPE."""
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{UNITSYNC} sync want --help | true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stderr) == (141, "")


def test_words_before_the_dashes_of_run_are_a_usage_error(agent_process: AgentProcess) -> None:
    """`--timeout 5 minutes -- true` must not run `minutes true` as the unit's command."""
    result = run_cli(
        "sync", "run", "q2", "--timeout", "5", "minutes", "--", "true", socket=sock(agent_process)
    )
    assert result.code == 2
    assert "minutes before `--` is neither UNIT nor an option's value" in result.err
    assert "--timeout 5m" in result.err
    assert "q2" not in {u.name for u in Client(sock(agent_process)).status()}
    s = sock(agent_process)
    inner = run_cli("sync", "run", "q3", "--", "sh", "-c", "echo a -- b", socket=s)
    assert inner.code == 0 and inner.out == "a -- b\n"  # a `--` inside the command is its own


def test_watch_piped_into_head_exits_quietly_at_the_next_event(
    agent_process: AgentProcess,
) -> None:
    env = dict(os.environ, UNITSYNC_SOCKET=str(sock(agent_process)))
    proc = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", f"{UNITSYNC} sync status --watch -o json | head -1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert json.loads(first)["event"] == "snapshot"
    for i in range(5):  # the watcher writes once more, finds no reader, and goes
        run_cli("sync", "want", f"u{i}", "base", socket=sock(agent_process))
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 141
    assert err == ""


# --- 5. the second agent, and lock files -------------------------------------------------------


def test_a_second_agent_on_the_same_state_dir_names_the_flag_and_leaves_nothing(
    agent_process: AgentProcess, short_tmp: Path
) -> None:
    other = short_tmp / "other-run"
    other.mkdir(mode=0o700)
    for attempt in range(3):
        result = run_cli(
            "agent",
            "--socket",
            str(other / f"b{attempt}.sock"),
            "--state-dir",
            str(agent_process.config.state_dir),
        )
        assert result.code == 1
        assert "give this one another --state-dir" in result.err
        assert f"pid {agent_process.proc.pid}" in result.err
    assert sorted(other.iterdir()) == []  # no socket, no lock file left behind


def test_a_clean_stop_removes_the_lock_files(config: AgentConfig) -> None:
    agent = AgentProcess(config).start()
    assert (config.state_dir / "lock").exists()
    assert config.socket.with_name("agent.sock.lock").exists()
    code, _log = agent.stop()
    assert code == 0
    assert sorted(p.name for p in config.socket.parent.iterdir()) == []
    assert "lock" not in {p.name for p in config.state_dir.iterdir()}
    AgentProcess(config).start().stop()  # and the next agent starts as usual


def test_a_second_agent_on_the_same_socket_names_the_flag(agent_process: AgentProcess) -> None:
    result = run_cli(
        "agent",
        "--socket",
        str(sock(agent_process)),
        "--state-dir",
        str(agent_process.config.state_dir.parent / "elsewhere"),
    )
    assert result.code == 1
    assert "give this one another --socket" in result.err


# --- 6. long names ---------------------------------------------------------------------------


def test_a_long_name_is_shortened_in_the_table_but_never_in_json(
    agent_process: AgentProcess,
) -> None:
    long = "é" * 127 + "a"  # 255 bytes
    s = sock(agent_process)
    run_cli("sync", "want", long, "git", socket=s)
    table = run_cli("sync", "status", socket=s).out.splitlines()
    assert max(len(line) for line in table) < 120  # not 255 and more
    [shortened] = [line for line in table if "…" in line]
    assert shortened.split()[1:3] == ["pending", "no"]  # STATUS and READY stay readable
    assert long in units(s)


# --- 7. typos do not become units ------------------------------------------------------------


def test_reset_and_fail_of_a_typo_are_refused_and_forget_removes_a_unit(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    for command in (["reset", "ghost"], ["fail", "ghost"], ["forget", "ghost"]):
        result = run_cli("sync", *command, socket=s)
        assert result.code == 1
        assert "unknown unit 'ghost'" in result.err
    assert run_cli("sync", "status", "ghost", socket=s).code == 1  # still unknown
    assert run_cli("sync", "fail", "ghost", "--force", socket=s).code == 0
    run_cli("sync", "want", "app", "db", socket=s)
    refused = run_cli("sync", "forget", "db", socket=s)
    assert refused.code == 1 and "still wanted by app" in refused.err
    assert run_cli("sync", "forget", "app", socket=s).out == "forgot app and its history\n"
    assert run_cli("sync", "forget", "db", socket=s).code == 0
    assert run_cli("sync", "forget", "ghost", socket=s).code == 0
    assert json.loads(run_cli("sync", "status", "-o", "json", socket=s).out)["units"] == []


def test_forget_survives_a_restart(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "app", "db", socket=s)
    run_cli("sync", "forget", "app", socket=s)
    agent_process.kill()
    agent_process.start()
    assert set(units(s)) == {"db"}


def test_forget_is_refused_while_a_start_of_the_unit_waits(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "app", "db", socket=s)
    waiter = spawn_cli("sync", "start", "app", socket=s)
    assert waiter.stderr is not None and "waiting for db" in waiter.stderr.readline()
    result = run_cli("sync", "forget", "app", socket=s)
    assert result.code == 1 and "has a start waiting" in result.err
    waiter.kill()
    waiter.communicate()


def test_forget_is_refused_while_a_run_still_runs_its_service(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    service = spawn_cli("sync", "run", "web", "--ready-cmd", "true", "--", "sleep", "600", socket=s)
    try:
        assert service.stderr is not None and "web: started" in service.stderr.readline()
        assert "web: ready" in service.stderr.readline()
        result = run_cli("sync", "forget", "web", socket=s)
        assert result.code == 1 and "whose `unitsync sync run` still runs it" in result.err
    finally:
        service.terminate()
        service.communicate(timeout=60)
    assert run_cli("sync", "forget", "web", socket=s).code == 0  # its end recorded, it may go


# --- 8. WAITING ON means one thing -------------------------------------------------------------


def test_waiting_on_shows_only_what_a_waiting_start_waits_for(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "app", "git", socket=s)
    run_cli("sync", "start", "git", socket=s)
    run_cli("sync", "complete", "git", socket=s)
    run_cli("sync", "start", "app", socket=s)
    run_cli("sync", "complete", "app", socket=s)
    run_cli("sync", "reset", "git", socket=s)  # app is completed; nobody waits
    assert row(s, "app")[1:4] == ["completed", "no", "-"]
    assert units(s)["app"]["waiting_on"] == []


# --- 9, 10, 14. help, usage errors, one style ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message", "usage"),
    [
        (["sync", "want", "claude"], "want: missing DEP", "unitsync sync want UNIT DEP [DEP...]"),
        (["sync", "want"], "want: missing UNIT", "unitsync sync want UNIT DEP [DEP...]"),
        (
            ["sync", "start", "a", "--timeout", "5", "minutes"],
            "unexpected 'minutes' after --timeout: a duration is one word: 30s, 5m",
            "unitsync sync start UNIT [--timeout 5m] [--rerun]",
        ),
        (
            ["sync", "start", "a", "--timeout", "soon"],
            "invalid value 'soon' for --timeout: not a duration: 'soon' (e.g. 30s, 5m",
            "unitsync sync start UNIT",
        ),
        (
            ["sync", "start", "-weird"],
            "unknown option '-weird'; if it is a unit name, put it after `--`, with the options "
            "before (unitsync sync start [OPTIONS] -- -weird)",
            "unitsync sync start UNIT",
        ),
        (
            ["sync", "start", "--", "-weird", "--timeout", "1s"],
            "unknown option '--timeout'; options go before `--`, not after it",
            "unitsync sync start UNIT",
        ),
        (
            ["sync", "run", "lsx", "ls", "-l", "/"],
            "unknown option '-l'; put `--` before the command, so that its options are its own",
            "-- COMMAND [ARGS...]",
        ),
        (
            ["agent", "--reclaim-grace", "5", "minutes"],
            "unexpected 'minutes' after --reclaim-grace: a duration is one word",
            "unitsync agent [--socket P]",
        ),
        (
            ["sync", "start", "a", "--timeout", "nan"],
            "invalid value 'nan' for --timeout: not a duration: 'nan'",
            "unitsync sync start UNIT",
        ),
        (
            ["sync", "run", "a", "--timeout", "1e9", "--", "true"],
            "invalid value '1e9' for --timeout: '1e9' is longer than a year: give 0 to wait "
            "forever",
            "unitsync sync run UNIT",
        ),
        (
            ["sync", "timeline", "--boot", "x"],
            "invalid value 'x' for --boot: a whole number is needed",
            "unitsync sync timeline [--boot N]",
        ),
        (
            ["sync", "blame", "extra"],
            "unexpected 'extra': `blame` takes no such argument",
            "unitsync sync blame [--boot N]",
        ),
        (
            ["sync", "status", "-o", "xml"],
            "invalid value 'xml' for --output: choose one of table, json, dot, mermaid",
            "unitsync sync status [UNIT]",
        ),
        (
            ["sync", "reset"],
            "reset needs one of UNIT, --all or --failed",
            "unitsync sync reset UNIT | --all | --failed [--force]",
        ),
        (
            ["sync", "reset", "db", "--all"],
            "reset needs one of UNIT, --all or --failed",
            "unitsync sync reset UNIT | --all | --failed [--force]",
        ),
        (["sync", "bogus"], "unknown command 'bogus'; see `unitsync sync --help`", None),
    ],
)
def test_usage_errors_are_one_plain_line_naming_what_was_typed(
    args: list[str], message: str, usage: str | None
) -> None:
    result = run_cli(*args, socket=Path("/nowhere/agent.sock"))
    assert result.code == 2
    lines = result.err.splitlines()
    assert lines[0].startswith("unitsync: ") and message in lines[0], result.err
    if usage:
        assert lines[1].startswith("usage: ") and usage in lines[1]
    assert not BOX_DRAWING.search(result.err)


def test_a_unit_name_starting_with_a_dash_works_after_double_dash(
    agent_process: AgentProcess,
) -> None:
    s = sock(agent_process)
    assert run_cli("sync", "start", "--", "-weird", socket=s).code == 0
    assert run_cli("sync", "complete", "--", "-weird", socket=s).out == "-weird completed\n"


def test_no_command_is_a_usage_error() -> None:
    for args in ([], ["sync"]):
        result = run_cli(*args)
        assert result.code == 2
        assert "Usage: unitsync" in result.err and result.out == ""


def test_help_describes_every_argument_with_the_readmes_usage_lines() -> None:
    readme = (Path(__file__).parent.parent / "docs" / "commands.md").read_text()  # its table
    for command in ("want", "start", "complete", "fail", "reset", "forget", "status", "run"):
        result = run_cli("sync", command, "--help")
        assert result.code == 0
        head = result.out.split("\n\n", 1)[0]  # a long usage line wraps
        usage = " ".join(head.split()).removeprefix("Usage: ")
        assert f"`{usage.replace('|', chr(92) + '|')}`" in readme or usage in readme, usage
        assert "[ARGS]" not in result.out  # what cyclopts wrote for an optional UNIT
        assert "--unit" not in result.out and "--dep" not in result.out
        assert not BOX_DRAWING.search(result.out)  # piped: plain text
        for line in result.out.splitlines():
            if line.startswith("  ") and ":" in line:  # every argument and option has words
                assert line.split(":", 1)[1].strip(), line


# --- 11. the whole wait, across an agent restart -----------------------------------------------


def test_the_wait_is_counted_across_an_agent_restart(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "app", "db", socket=s)
    waiter = spawn_cli("sync", "start", "app", socket=s)
    assert waiter.stderr is not None and "waiting for db" in waiter.stderr.readline()
    began = time.monotonic()
    time.sleep(1.0)
    agent_process.kill()
    time.sleep(1.0)
    agent_process.start()
    run_cli("sync", "start", "db", socket=s)
    run_cli("sync", "complete", "db", socket=s)
    least = time.monotonic() - began  # the waiter waited at least this long
    _out, err = waiter.communicate(timeout=30)
    match = re.search(r"app: started after waiting (\d+\.\d)s", err)
    assert match, err
    assert float(match.group(1)) >= least - 0.1
    assert units(s)["app"]["history"][-1]["waited"] >= least - 0.1


# --- 12. Ctrl-C on a terminal -------------------------------------------------------------------


@pytest.mark.parametrize("command", [["start", "app"], ["run", "app", "--", "true"]])
def test_ctrl_c_on_a_waiting_start_ends_the_line_says_so_and_exits_130(
    agent_process: AgentProcess, command: list[str]
) -> None:
    s = sock(agent_process)
    run_cli("sync", "want", "app", "db", socket=s)
    proc, terminal = on_a_terminal("sync", *command, socket=s)
    read_until(terminal, b"waiting for db (")
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the foreground process
    shown = read_until(terminal, b"interrupted")
    shown += read_until(terminal, b"\n", limit=5)
    assert proc.wait(timeout=30) == 130
    assert b"\r\x1b[Kunitsync: app: interrupted while waiting for db (" in shown
    assert shown.rstrip(b"\r").endswith(b")\r\n") or shown.endswith(b")\n")
    os.close(terminal)


# --- 13. completion says what it changed ----------------------------------------------------


def test_install_completion_says_which_files_it_wrote_and_changed(short_tmp: Path) -> None:
    env = dict(os.environ, HOME=str(short_tmp), SHELL="/bin/bash")
    env.pop("XDG_DATA_HOME", None)
    first = subprocess.run(
        [UNITSYNC, "--install-completion", "bash"], capture_output=True, text=True, env=env
    )
    assert first.returncode == 0, first.stderr
    assert "wrote the bash completion script to " in first.stdout
    assert "added a line to ~/.bashrc that loads it (delete that line to undo)" in first.stdout
    script = first.stdout.split("script to ", 1)[1].split("\n", 1)[0]
    assert script in (short_tmp / ".bashrc").read_text()
    again = subprocess.run(
        [UNITSYNC, "--install-completion", "bash"], capture_output=True, text=True, env=env
    )
    assert "~/.bashrc already loads it; nothing else changed" in again.stdout
    assert (short_tmp / ".bashrc").read_text().count("# Load unitsync completion") == 1


def test_sigterm_stops_the_cli_like_any_program(agent_process: AgentProcess) -> None:
    """Not swallowed: a script's `kill` of a waiting start ends it (128 + 15)."""
    s = sock(agent_process)
    run_cli("sync", "want", "app", "db", socket=s)
    waiter = spawn_cli("sync", "start", "app", socket=s)
    assert waiter.stderr is not None and "waiting for db" in waiter.stderr.readline()
    waiter.send_signal(signal.SIGTERM)
    assert waiter.wait(timeout=30) == -signal.SIGTERM


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_an_agent_that_would_refuse_everyone_is_a_usage_error(short_tmp: Path, limit: str) -> None:
    result = run_cli(
        "agent",
        "--max-connections",
        limit,
        "--state-dir",
        str(short_tmp / "state"),
        socket=short_tmp / "run" / "agent.sock",
    )
    assert result.code == 2 and f"--max-connections {limit} would refuse every client" in result.err


def test_an_etcd_duration_that_is_no_duration_is_a_usage_error(short_tmp: Path) -> None:
    result = run_cli(
        "agent",
        "--store",
        "etcd://127.0.0.1:1/ws",
        "--etcd-timeout",
        "soon",
        "--state-dir",
        str(short_tmp / "state"),
        socket=short_tmp / "run" / "agent.sock",
    )
    assert result.code == 2
    assert "invalid value 'soon' for --etcd-timeout: not a duration: 'soon'" in result.err
