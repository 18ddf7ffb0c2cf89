"""Services (SPEC §8): `run` marks a long-running command ready, and failed when it dies.

Real processes throughout: the real CLI against a real agent, services that are small
Python programs, a real sd_notify datagram socket. Nothing here asserts how long
anything took; a few waits are bounded only so that a broken build fails instead of
hanging.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import shlex
import signal
import socket
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from unitsync.agent.core.graph import Refused
from unitsync.agent.core.records import Reason
from unitsync.cli.run import children
from unitsync.cli.run import supervisor as service_module
from unitsync.cli.run.children import Ended
from unitsync.cli.run.readiness.probe import ProbeReady
from unitsync.cli.run.supervisor import Exited, NotReady, Ready, ServiceRun
from unitsync.cli.usage import USAGE
from unitsync.client import Client

from conftest import AgentProcess, on_a_terminal, read_until, run_cli, sock, unit_status
from harness.applied import AppliedGraph

LIMIT = 30.0
"""Bounds every wait, so that a broken build fails instead of hanging; never asserted."""


def status_is(agent: AgentProcess, name: str, expected: tuple[str, str]) -> bool:
    """For polling: does `name` (perhaps not yet known) have this status and reason?"""
    try:
        return unit_status(agent, name) == expected
    except Refused:
        return False


def spawn_run(agent: AgentProcess, *args: str) -> subprocess.Popen[bytes]:
    """`unitsync sync run ARGS` in its own process, its stdout and stderr as bytes."""
    return subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", "sync", "run", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, UNITSYNC_SOCKET=str(sock(agent))),
    )


def python_service(folder: Path, source: str) -> list[str]:
    """The command line of a small Python service with `source` as its program."""
    path = folder / "service.py"
    path.write_text(textwrap.dedent(source))
    return [sys.executable, str(path)]


def read_stderr_until(proc: subprocess.Popen[bytes], needle: bytes) -> bytes:
    """Read `proc`'s stderr until `needle` appears (bounded by LIMIT)."""
    assert proc.stderr is not None
    fd, seen = proc.stderr.fileno(), b""
    deadline = time.monotonic() + LIMIT
    while needle not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    assert needle in seen, seen
    return seen


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def dependent_starts(agent: AgentProcess, dependent: str, service: str) -> int:
    """`start DEPENDENT` (which wants SERVICE) from a fresh process: its exit status."""
    run_cli("sync", "want", dependent, service, socket=sock(agent))
    return run_cli("sync", "start", dependent, socket=sock(agent)).code


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> tuple[bytes, bytes]:
    proc.send_signal(signum)
    return proc.communicate(timeout=LIMIT)


# --- --ready-cmd ---------------------------------------------------------------------------


def test_a_probe_that_succeeds_on_the_third_try_completes_the_unit_and_is_not_run_again(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    tries = tmp_path / "tries"
    probe = f'echo try >> {tries}; test "$(wc -l < {tries})" -ge 3'
    service = python_service(tmp_path, "import time; time.sleep(600)")
    run = spawn_run(
        agent_process, "web", "--ready-cmd", probe, "--ready-interval", "50ms", "--", *service
    )
    assert dependent_starts(agent_process, "web-user", "web") == 0
    assert unit_status(agent_process, "web") == ("completed", "")
    assert tries.read_text() == "try\n" * 3
    time.sleep(1.0)  # twenty intervals: a probe still scheduled would have run by now
    assert tries.read_text() == "try\n" * 3
    _out, err = stop(run)
    assert b"web: ready (`echo try" in err and b"succeeded on try 3)" in err
    assert run.returncode == 128 + signal.SIGTERM


def test_a_probe_is_bounded_by_the_interval_and_named_when_not_ready_in_time() -> None:
    probe = ProbeReady("sleep 30", interval=0.05)
    with ServiceRun([sys.executable, "-c", "import time; time.sleep(600)"], probe, 0.3) as run:
        run.start()
        events = list(run.events())
    assert isinstance(events[0], NotReady)
    assert "`sleep 30` failed" in events[0].waiting_for
    assert "last: did not finish within 0.05s" in events[0].waiting_for
    assert events[-1] == Exited(Ended(-signal.SIGTERM), was_ready=False)


# --- --ready-log -----------------------------------------------------------------------------

LOG_SERVICE = r"""
    import sys, time
    out = sys.stdout.buffer
    out.write(b"compiling\n"); out.flush()
    sys.stderr.write("warning: deprecated option\n"); sys.stderr.flush()
    out.write(b"caf\xc3\xa9 \xff raw bytes\r\n"); out.flush()
    time.sleep(0.1)
    out.write(b"listening on port 8000\n"); out.flush()
    out.write(b"GET / 200\n"); out.write(b"no newline at the end"); out.flush()
    time.sleep(600)
"""
LOG_STDOUT = (
    b"compiling\ncaf\xc3\xa9 \xff raw bytes\r\nlistening on port 8000\nGET / 200\n"
    b"no newline at the end"
)


def test_a_ready_line_after_other_output_completes_the_unit_and_output_passes_unchanged(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    service = python_service(tmp_path, LOG_SERVICE)
    run = spawn_run(agent_process, "api", "--ready-log", r"listening on port \d+", "--", *service)
    assert dependent_starts(agent_process, "api-user", "api") == 0
    assert unit_status(agent_process, "api") == ("completed", "")
    out, err = stop(run)
    assert out == LOG_STDOUT  # byte for byte, though the service was never told to flush less
    assert b"warning: deprecated option\n" in err
    assert b"api: ready (output matched 'listening on port \\\\d+')" in err


def test_on_a_terminal_the_service_keeps_its_colours(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    service = python_service(
        tmp_path,
        r"""
        import os, time
        colour = os.isatty(1) and os.isatty(2)
        print("\x1b[32mServing\x1b[0m HTTP" if colour else "Serving HTTP (no terminal)", flush=True)
        time.sleep(600)
        """,
    )
    proc, terminal = on_a_terminal(
        "sync",
        "run",
        "ui",
        "--ready-log",
        "^Serving HTTP$",
        "--",
        *service,
        socket=sock(agent_process),
    )
    shown = read_until(terminal, b"ui: ready")
    assert b"\x1b[32mServing\x1b[0m HTTP" in shown  # matched with its colour codes set aside
    assert unit_status(agent_process, "ui") == ("completed", "")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=LIMIT) == 128 + signal.SIGTERM
    os.close(terminal)


# --- --notify --------------------------------------------------------------------------------

NOTIFY_SERVICE = """
    import os, socket, sys, time
    from pathlib import Path
    address = os.environ["NOTIFY_SOCKET"]
    Path(sys.argv[1] + ".tmp").write_text(address)
    Path(sys.argv[1] + ".tmp").rename(sys.argv[1])  # whole, or not there: the test reads it
    target = "\\0" + address[1:] if address.startswith("@") else address
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.sendto(b"STATUS=loading 3 datasets", target)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.01)
    notify.sendto(b"READY=1\\nSTATUS=serving", target)
    time.sleep(600)
"""


def test_a_python_service_says_ready_over_the_socket_and_its_status_shows_meanwhile(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    address, go = tmp_path / "address", tmp_path / "go"
    service = python_service(tmp_path, NOTIFY_SERVICE)
    run = spawn_run(agent_process, "db", "--notify", "--", *service, str(address), str(go))
    wait_for(lambda: status_is(agent_process, "db", ("started", "loading 3 datasets")), "STATUS")
    assert address.read_text().startswith("@unitsync/")  # abstract: no file to leave behind
    go.touch()
    assert dependent_starts(agent_process, "db-user", "db") == 0
    assert unit_status(agent_process, "db") == ("completed", "")
    _out, err = stop(run)
    assert b"db: ready (READY=1 from the service)" in err


def test_a_datagram_from_another_process_is_refused(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    address, go = tmp_path / "address", tmp_path / "go"
    service = python_service(tmp_path, NOTIFY_SERVICE)
    run = spawn_run(agent_process, "db", "--notify", "--", *service, str(address), str(go))
    wait_for(address.exists, "the service's NOTIFY_SOCKET")
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stranger.sendto(b"READY=1", "\0" + address.read_text()[1:])
    read_stderr_until(run, f"ignored a notification from pid {os.getpid()}".encode())
    assert unit_status(agent_process, "db")[0] == "started"
    go.touch()  # now the service itself says it
    assert dependent_starts(agent_process, "db-user", "db") == 0
    stop(run)


# --- not ready, gone ---------------------------------------------------------------------------


def test_not_ready_in_time_fails_the_unit_stops_the_service_and_exits_5(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    service = python_service(
        tmp_path,
        f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("starting up", flush=True)
        time.sleep(600)
        """,
    )
    run_cli("sync", "want", "cache-user", "cache", socket=sock(agent_process))
    waiter = subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", "sync", "start", "cache-user"],
        env=dict(os.environ, UNITSYNC_SOCKET=str(sock(agent_process))),
        stderr=subprocess.PIPE,
    )
    run = spawn_run(
        agent_process,
        "cache",
        "--ready-log",
        "accepting",
        "--ready-timeout",
        "500ms",
        "--",
        *service,
    )
    out, err = run.communicate(timeout=LIMIT)
    assert run.returncode == 5
    status, reason = unit_status(agent_process, "cache")
    assert status == "failed"
    assert reason == "not ready within 0.5s: no output line matched 'accepting'"
    assert b"stopping it (SIGTERM, then SIGKILL after 10s)" in err
    assert out == b"starting up\n"
    with pytest.raises(ProcessLookupError):  # stopped, and reaped by `run`
        os.kill(int(pid_file.read_text()), 0)
    assert waiter.wait(timeout=LIMIT) == 4


def server_under_a_shell(folder: Path, pid_file: Path) -> list[str]:
    """`sh -c` running a Python server that writes its pid: the server is `run`'s grandchild
    (the shell has more to do after it, so it does not exec it), as under `make dev`."""
    server = python_service(
        folder,
        f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("up", flush=True)
        time.sleep(600)
        """,
    )
    return ["sh", "-c", f"{shlex.join(server)}; echo the server ended"]


def gone(pid: int) -> bool:
    """`pid` has exited (it is not our child: a zombie is as good as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except FileNotFoundError:
        return True


def grandchild_pid(pid_file: Path) -> int:
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the server's pid")
    return int(pid_file.read_text())


def test_not_ready_in_time_stops_what_the_service_started_too(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    command = server_under_a_shell(tmp_path, pid_file)
    run = spawn_run(
        agent_process, "web", "--ready-cmd", "false", "--ready-timeout", "1s", "--", *command
    )
    server = grandchild_pid(pid_file)
    try:
        run.communicate(timeout=LIMIT)
        assert run.returncode == 5
        wait_for(lambda: gone(server), "the server under the shell to be stopped")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server, signal.SIGKILL)


@pytest.mark.parametrize("readiness", [[], ["--ready-log", "up"]], ids=["plain", "service"])
def test_sigterm_to_run_stops_what_its_command_started_too(
    agent_process: AgentProcess, tmp_path: Path, readiness: list[str]
) -> None:
    pid_file = tmp_path / "pid"
    command = server_under_a_shell(tmp_path, pid_file)
    run = spawn_run(agent_process, "web", *readiness, "--", *command)
    server = grandchild_pid(pid_file)
    try:
        stop(run)
        assert run.returncode == 128 + signal.SIGTERM
        wait_for(lambda: gone(server), "the server under the shell to be stopped")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server, signal.SIGKILL)


def test_a_service_that_exits_takes_what_is_left_of_its_group_with_it(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    command = server_under_a_shell(tmp_path, pid_file)
    command[-1] = command[-1].replace("; echo the server ended", " & sleep 0.2; exit 3")
    run = spawn_run(agent_process, "web", "--ready-log", "up", "--", *command)
    server = grandchild_pid(pid_file)
    try:
        run.communicate(timeout=LIMIT)
        assert run.returncode == 3
        assert gone(server)  # `run` ends only once its service's group is gone
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server, signal.SIGKILL)


def test_a_plain_command_may_leave_a_daemon_running(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    command = server_under_a_shell(tmp_path, pid_file)
    command[-1] = command[-1].replace("; echo the server ended", " >/dev/null 2>&1 &")
    result = run_cli("sync", "run", "setup", "--", *command, socket=sock(agent_process))
    server = grandchild_pid(pid_file)
    try:
        assert result.code == 0
        assert not gone(server)
    finally:
        os.kill(server, signal.SIGKILL)


def test_on_its_controlling_terminal_the_command_reads_it_and_ctrl_c_stops_it() -> None:
    """`run` in the foreground lends the terminal to its command's group (see `group`)."""
    script = textwrap.dedent(
        """
        from unitsync.cli.run.supervisor import ServiceRun
        with ServiceRun(["sh", "-c", "read line; echo got $line; exec sleep 600"]) as run:
            run.start()
            events = list(run.events())
        print("ended by", -events[-1].ended.returncode, flush=True)
        """
    )
    leader, follower = pty.openpty()
    proc = subprocess.Popen(  # a session of its own, the pty its controlling terminal
        [sys.executable, "-c", script],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(follower)
    try:
        os.write(leader, b"hello\n")
        assert b"got hello" in read_until(leader, b"got hello")
        os.write(leader, b"\x03")  # Ctrl-C
        ended = f"ended by {signal.SIGINT:d}\r\n".encode()  # the whole line, not its start
        assert ended in read_until(leader, ended)
        assert proc.wait(timeout=LIMIT) == 0
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()


def test_a_service_that_ignores_sigterm_is_killed_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service_module, "STOP_GRACE", 0.2)
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    with ServiceRun([sys.executable, "-c", stubborn], ProbeReady("false", 0.05), 0.5) as run:
        run.start()
        events = list(run.events())
    assert [type(e) for e in events] == [NotReady, Exited]
    assert events[-1] == Exited(Ended(-signal.SIGKILL), was_ready=False)


def test_a_service_that_dies_after_being_ready_fails_and_later_dependents_exit_4(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    service = python_service(
        tmp_path,
        f"""
        import os, sys, time
        print("ready", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        sys.exit(3)
        """,
    )
    run = spawn_run(agent_process, "web", "--ready-log", "^ready$", "--", *service)
    assert dependent_starts(agent_process, "early", "web") == 0
    go.touch()
    run.communicate(timeout=LIMIT)
    assert run.returncode == 3  # the service's own status, as before
    assert unit_status(agent_process, "web") == ("failed", "exited with status 3 after being ready")
    run_cli("sync", "want", "later", "web", socket=sock(agent_process))
    refused = run_cli("sync", "start", "later", socket=sock(agent_process))
    assert refused.code == 4
    assert "dependency web failed (exited with status 3 after being ready)" in refused.err


def test_a_service_that_exits_before_being_ready_fails(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    result = run_cli(
        "sync", "run", "db", "--notify", "--", "sh", "-c", "exit 0", socket=sock(agent_process)
    )
    assert result.code == 0
    assert unit_status(agent_process, "db") == ("failed", "exited with status 0 before being ready")


def test_a_service_that_cannot_be_started_fails_like_a_command(
    agent_process: AgentProcess,
) -> None:
    result = run_cli(
        "sync", "run", "db", "--notify", "--", "no-such-server", socket=sock(agent_process)
    )
    assert result.code == 127
    assert unit_status(agent_process, "db") == ("failed", "command not found: no-such-server")


# --- signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("readiness", "signum"),
    [
        (["--ready-cmd", "true"], signal.SIGTERM),
        (["--ready-log", "up"], signal.SIGHUP),
        (["--notify"], signal.SIGINT),
        (["--ready-log", "up"], signal.SIGUSR1),
    ],
)
def test_signals_still_reach_the_service(
    agent_process: AgentProcess, tmp_path: Path, readiness: list[str], signum: signal.Signals
) -> None:
    service = python_service(
        tmp_path,
        """
        import os, socket, time
        print("up", flush=True)
        if "NOTIFY_SOCKET" in os.environ:
            target = "\\0" + os.environ["NOTIFY_SOCKET"][1:]
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", target)
        time.sleep(600)
        """,
    )
    run = spawn_run(agent_process, "svc", *readiness, "--", *service)
    assert dependent_starts(agent_process, "svc-user", "svc") == 0
    stop(run, signum)
    assert run.returncode == 128 + signum
    assert unit_status(agent_process, "svc") == (
        "failed",
        f"killed by signal {signum.name} after being ready",
    )


def test_under_nohup_a_hangup_reaches_neither_run_nor_its_service(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    def like_nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    reloads = tmp_path / "reloads"
    service = python_service(  # a server that reloads on SIGHUP, as nginx does
        tmp_path,
        f"""
        import signal, time
        signal.signal(signal.SIGHUP, lambda *_: open({str(reloads)!r}, "a").write("reload\\n"))
        print("up", flush=True)
        time.sleep(600)
        """,
    )
    command = ["sync", "run", "svc", "--ready-log", "up", "--", *service]
    run = subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, UNITSYNC_SOCKET=str(sock(agent_process))),
        preexec_fn=like_nohup,
    )
    try:
        assert dependent_starts(agent_process, "svc-user", "svc") == 0
        run.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # a hangup passed on would have reached the service by now
        assert run.poll() is None and not reloads.exists()
        assert unit_status(agent_process, "svc") == ("completed", "")
    finally:
        stop(run)  # `run` stops its service too
    assert run.returncode == 128 + signal.SIGTERM


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--ready-cmd", "true", "--notify"], "--ready-cmd and --notify cannot be combined"),
        (["--ready-interval", "2s"], "add --ready-cmd"),
        (["--ready-timeout", "5s"], "--ready-timeout needs a way to be ready"),
        (["--ready-cmd", "true", "--ready-interval", "0"], "an interval above 0"),
        (["--ready-log", "("], "not a valid regular expression"),
        (["--notify", "--ready-timeout", "soon"], "--ready-timeout: not a duration"),
        (["--ready-log", "x", "--ready-cmd", "true"], "--ready-cmd and --ready-log cannot be"),
        (["--once", "--ready-log", "x"], "--once is for one-time setup, not services"),
        (["--ready-interval", "-1s"], "--ready-interval -1s: a duration cannot be negative"),
    ],
)
def test_readiness_options_that_make_no_sense_are_usage_errors(
    short_tmp: Path, options: list[str], complaint: str
) -> None:
    # No agent at this socket: the options are refused before anything is asked of one.
    result = run_cli("sync", "run", "x", *options, "--", "true", socket=short_tmp / "none.sock")
    assert result.code == 2
    said, usage = result.err.splitlines()  # as every usage error: what, then the usage line
    assert said.startswith("unitsync: run: ") and complaint in said, result.err
    assert usage == f"usage: {USAGE['run']}"


# --- the agent's side: a started unit's reason --------------------------------------------


def test_set_reason_changes_a_started_units_reason_and_nothing_else() -> None:
    graph = AppliedGraph()
    graph.admit("db", now=1.0)
    graph.start("db", now=2.0)
    assert graph.set_reason("db", "loading") == [Reason("db", "loading")]
    assert graph.set_reason("db", "loading") == []  # already so: nothing to journal
    unit = graph.units["db"]
    assert (unit.status, unit.reason, unit.since, len(unit.history)) == (
        "started",
        "loading",
        2.0,
        1,
    )
    graph.complete("db", now=3.0)
    assert unit.reason == ""  # a reason while starting only
    with pytest.raises(Refused, match="is completed, not started"):
        graph.set_reason("db", "late")
    with pytest.raises(Refused, match="unknown unit"):
        graph.set_reason("ghost", "boo")


def test_a_reason_set_while_starting_is_journaled(agent_process: AgentProcess) -> None:
    with Client(sock(agent_process)) as client:
        client.start("db")
        client.set_reason("db", "replaying the WAL")
    agent_process.kill()  # SIGKILL: only what was fsynced survives
    agent_process.start()
    assert unit_status(agent_process, "db") == ("started", "replaying the WAL")


# --- the lifecycle on its own ------------------------------------------------------------------


def test_without_pidfds_a_child_exit_is_still_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfds(_pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(children.os, "pidfd_open", no_pidfds)
    probe = ProbeReady("exit 0", interval=1.0)
    with ServiceRun(["sh", "-c", "sleep 0.2; exit 7"], probe) as run:
        run.start()
        events = list(run.events())
    assert events == [Ready("`exit 0` succeeded on try 1"), Exited(Ended(7), was_ready=True)]
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL  # put back as it was


def test_a_signal_before_the_command_is_spawned_reaches_it_once_it_is() -> None:
    """`run` catches the forwarded signals before it spawns: a SIGTERM in between must
    neither end `run` with the default action (orphaning its command) nor be lost."""
    with ServiceRun(["sleep", "600"]) as run:
        os.kill(os.getpid(), signal.SIGTERM)  # caught: remembered for the command
        run.start()
        events = list(run.events())
    # Passed on by `run`: the command was told to end (a restart policy leaves it ended).
    assert events == [Exited(Ended(-signal.SIGTERM), was_ready=False, told=True)]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back afterwards
