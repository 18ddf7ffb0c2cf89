"""Every run's output kept (SPEC §15): `run` records, `sync logs` shows, through the real CLI.

Real agents, real `run`s of real commands, real files in the state dir; the faults are
real too (bytes damaged in a log file, a 1 MiB tmpfs that fills up). Nothing asserts how
long anything took: waits are bounded only so that a broken build fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from unitsync.agent.serve.server import AgentConfig
from unitsync.agent.service import Service
from unitsync.client import AsyncClient, Client
from unitsync.wire.runlog.layout import LOGS_DIR, log_files, unit_folder
from unitsync.wire.runlog.reader import LogLine

from conftest import AgentProcess, on_a_terminal, read_until, run_cli, sock, unit_status
from harness.etcd_cluster import EtcdAgent, EtcdCluster

LIMIT = 60.0
"""Bounds every wait, so that a broken build fails instead of hanging; never asserted."""


def py(source: str) -> list[str]:
    """A command line running a small Python program."""
    return [sys.executable, "-c", textwrap.dedent(source)]


def logs(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`unitsync sync logs ARGS`, its output as bytes (logs pass bytes through as written)."""
    return subprocess.run(
        [sys.executable, "-m", "unitsync.cli", "sync", "logs", *args],
        capture_output=True,
        env=dict(os.environ, UNITSYNC_SOCKET=str(sock(agent))),
        timeout=LIMIT,
    )


def json_lines(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def folder(agent: AgentProcess, unit: str) -> Path:
    return Path(unit_folder(agent.config.state_dir / LOGS_DIR, unit))


def files(agent: AgentProcess, unit: str) -> list[tuple[int, int, Path]]:
    return [(run, part, Path(path)) for run, part, path in log_files(folder(agent, unit))]


def spawn(agent: AgentProcess, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", "sync", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, UNITSYNC_SOCKET=str(sock(agent))),
    )


@contextlib.contextmanager
def following(agent: AgentProcess, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn(agent, "logs", "-f", *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=LIMIT)


# --- what is kept ------------------------------------------------------------------------------


def test_both_streams_are_kept_and_still_reach_runs_own(agent_process: AgentProcess) -> None:
    command = py(
        """
        import sys
        print("one", flush=True)
        print("oops", file=sys.stderr, flush=True)
        print("two", flush=True)
        """
    )
    result = run_cli("sync", "run", "build", "--", *command, socket=sock(agent_process))
    assert result.code == 0
    assert result.out == "one\ntwo\n" and "oops\n" in result.err  # passed through, as before
    shown = logs(agent_process, "build")
    assert shown.returncode == 0 and sorted(shown.stdout.splitlines()) == [b"one", b"oops", b"two"]
    records = json_lines(logs(agent_process, "build", "-o", "json").stdout)
    by_stream = [(r["stream"], r["text"], r["run"], r["boot"]) for r in records]
    assert [r for r in by_stream if r[0] == "stdout"] == [
        ("stdout", "one", 1, 1),
        ("stdout", "two", 1, 1),
    ]
    assert [r for r in by_stream if r[0] == "stderr"] == [("stderr", "oops", 1, 1)]
    assert all(isinstance(r["time"], float) for r in records)
    assert logs(agent_process, "build", "--stream", "stderr").stdout == b"oops\n"
    assert b"stderr| oops\n" in logs(agent_process, "build", "--prefix").stdout
    stamped = logs(agent_process, "build", "--timestamps").stdout.decode().splitlines()
    assert sorted(line.split(" ", 2)[2] for line in stamped) == ["one", "oops", "two"]


def test_one_file_for_both_streams_keeps_their_order(agent_process: AgentProcess) -> None:
    """`run ... >log 2>&1`: one pipe carries both streams, in the order they were written."""
    command = py(
        """
        import sys
        for i in range(50):
            print(f"out {i}", flush=True)
            print(f"err {i}", file=sys.stderr, flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-m", "unitsync.cli", "sync", "run", "both", "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, UNITSYNC_SOCKET=str(sock(agent_process))),
        timeout=LIMIT,
    )
    written = b"".join(b"out %d\nerr %d\n" % (i, i) for i in range(50))
    assert result.returncode == 0 and result.stdout.endswith(written)  # `run` keeps it too
    assert logs(agent_process, "both").stdout == written
    records = json_lines(logs(agent_process, "both", "-o", "json").stdout)
    assert {r["stream"] for r in records} == {"both"}


def test_each_run_is_its_own_section(agent_process: AgentProcess) -> None:
    for word in ("first", "second", "third"):
        run_cli("sync", "run", "job", "--", "echo", word, socket=sock(agent_process))
    assert logs(agent_process, "job").stdout == b"third\n"  # the latest run
    assert logs(agent_process, "job", "--run", "1").stdout == b"first\n"
    every = logs(agent_process, "job", "--all").stdout.decode()
    assert [line for line in every.splitlines() if not line.startswith("--")] == [
        "first",
        "second",
        "third",
    ]
    assert every.count("-- run ") == 6  # where each run begins and ends
    assert "-- run 2 (boot 1), pid " in every and "-- run 2 ended: completed" in every
    assert logs(agent_process, "job", "--boot", "1").stdout == every.encode()
    tail = logs(agent_process, "job", "--tail", "1", "--all").stdout.decode().splitlines()
    assert [line for line in tail if not line.startswith("-- run 3")] == ["third"]
    assert logs(agent_process, "job", "--since", "10m").stdout == b"third\n"
    assert logs(agent_process, "job", "--since", "2999-01-01T00:00").stdout == b""
    bad = logs(agent_process, "job", "--since", "yesterday-ish")
    assert bad.returncode == 2 and b"--since: not a time" in bad.stderr
    assert logs(agent_process, "job", "--run", "1", "--all").returncode == 2
    missing = logs(agent_process, "job", "--run", "9")
    assert missing.returncode == 1 and b"run 9 of job is not in its log" in missing.stderr


def test_a_service_output_is_kept_and_followed(agent_process: AgentProcess) -> None:
    service = py(
        """
        import sys, time
        print("listening", flush=True)
        for i in range(3):
            print(f"request {i}", flush=True)
        time.sleep(600)
        """
    )
    run = spawn(agent_process, "run", "web", "--ready-log", "listening", "--", *service)
    try:
        assert read_until(run.stderr.fileno(), b"web: ready").count(b"ready")  # type: ignore[union-attr]
        with following(agent_process, "web") as follower:
            seen = read_until(follower.stdout.fileno(), b"request 2")  # type: ignore[union-attr]
            assert seen.startswith(b"listening\nrequest 0\n")
            follower.send_signal(signal.SIGINT)
            assert follower.wait(LIMIT) == 0  # Ctrl-C ends a follow, and that is success
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=LIMIT)
    assert logs(agent_process, "web").stdout.startswith(b"listening\nrequest 0\nrequest 1\n")


def test_bytes_that_are_not_utf8_are_kept_as_written(agent_process: AgentProcess) -> None:
    command = py(
        r"""
        import sys
        sys.stdout.buffer.write(b"caf\xe9 \x1b[31mred\x1b[0m \x00 end\n")
        """
    )
    run_cli("sync", "run", "bin", "--", *command, socket=sock(agent_process), errors="replace")
    assert logs(agent_process, "bin").stdout == b"caf\xe9 \x1b[31mred\x1b[0m \x00 end\n"
    [record] = json_lines(logs(agent_process, "bin", "-o", "json").stdout)
    assert record["text"] == "caf\\xe9 \x1b[31mred\x1b[0m \x00 end"


def test_a_very_long_line_is_one_line(agent_process: AgentProcess) -> None:
    command = py(
        """
        import sys
        for _ in range(300):
            sys.stdout.write("x" * 10000)
        print("!", flush=True)
        print("next")
        """
    )
    run_cli("sync", "run", "long", "--", *command, socket=sock(agent_process))
    lines = logs(agent_process, "long").stdout.split(b"\n")
    assert lines == [b"x" * 3_000_000 + b"!", b"next", b""]


def test_the_limit_drops_the_oldest_runs_then_the_oldest_lines(
    agent_process: AgentProcess,
) -> None:
    chatty = py(
        """
        import sys
        for i in range(20000):
            print(f"line {i:05d} " + "." * 40)
        """
    )
    for _ in range(2):
        result = run_cli(
            "sync",
            "run",
            "chatty",
            "--log-limit",
            "256K",
            "--",
            *chatty,
            socket=sock(agent_process),
        )
        assert result.code == 0 and result.out.count("\n") == 20000  # all passed through
    kept = sum(path.stat().st_size for _r, _s, path in files(agent_process, "chatty"))
    assert kept <= 256 * 1024
    assert {run for run, _s, _p in files(agent_process, "chatty")} == {2}
    shown = logs(agent_process, "chatty")
    lines = shown.stdout.decode().splitlines()
    numbers = [int(line.split()[1]) for line in lines]
    assert lines == [f"line {i:05d} " + "." * 40 for i in numbers]  # whole lines only
    assert numbers == sorted(set(numbers)) and numbers[-1] == 19999 and numbers[0] > 0
    assert b"of run 2 were dropped to keep the log within its limit (256.0 KiB)" in shown.stderr
    if numbers != list(range(numbers[0], 20000)):  # output that came too fast: a gap, said
        assert b"of run 2's output dropped here" in shown.stderr
    gone = logs(agent_process, "chatty", "--run", "1")
    assert gone.returncode == 1


def test_log_limit_0_records_nothing(agent_process: AgentProcess) -> None:
    result = run_cli(
        "sync", "run", "quiet", "--log-limit", "0", "--", "echo", "hi", socket=sock(agent_process)
    )
    assert result.code == 0 and result.out == "hi\n"
    shown = logs(agent_process, "quiet")
    assert shown.returncode == 0 and shown.stdout == b""
    assert b"quiet has no recorded output" in shown.stderr


def test_a_bad_log_limit_is_a_usage_error(agent_process: AgentProcess) -> None:
    for value in ("1K", "lots"):
        result = run_cli(
            "sync", "run", "u", "--log-limit", value, "--", "true", socket=sock(agent_process)
        )
        assert result.code == 2 and "--log-limit" in result.err


# --- units and their logs -----------------------------------------------------------------------


def test_unknown_unit_is_refused_and_forget_removes_the_log(agent_process: AgentProcess) -> None:
    unknown = logs(agent_process, "nope")
    assert unknown.returncode == 1 and b"unknown unit" in unknown.stderr
    run_cli("sync", "want", "other", "dep", socket=sock(agent_process))
    silent = logs(agent_process, "dep")  # known, never run
    assert silent.returncode == 0 and b"dep has no recorded output" in silent.stderr
    run_cli("sync", "run", "gone", "--", "echo", "bye", socket=sock(agent_process))
    assert folder(agent_process, "gone").is_dir()
    assert run_cli("sync", "forget", "gone", socket=sock(agent_process)).code == 0
    assert not folder(agent_process, "gone").exists()
    forgotten = logs(agent_process, "gone")
    assert forgotten.returncode == 1 and b"unknown unit" in forgotten.stderr


def test_a_failure_keeps_the_last_stderr_line_and_status_shows_the_last_lines(
    agent_process: AgentProcess,
) -> None:
    command = py(
        """
        import sys
        for i in range(8):
            print(f"step {i}", flush=True)
        print("\\x1b[31mError: port 5432 in use\\x1b[0m", file=sys.stderr)
        sys.exit(1)
        """
    )
    result = run_cli("sync", "run", "db", "--", *command, socket=sock(agent_process))
    assert result.code == 1
    assert unit_status(agent_process, "db") == ("failed", "exit status 1: Error: port 5432 in use")
    shown = run_cli("sync", "status", "db", socket=sock(agent_process)).out
    last = shown.split("last output:\n", 1)[1].splitlines()
    assert last == [f"  step {i}" for i in range(4, 8)] + ["  Error: port 5432 in use"]
    fine = run_cli("sync", "run", "ok", "--", "echo", "fine", socket=sock(agent_process))
    assert fine.code == 0 and "last output" not in run_cli("sync", "status", "ok").out


def test_the_python_client_yields_records(agent_process: AgentProcess) -> None:
    run_cli(
        "sync", "run", "lib", "--", "sh", "-c", "echo a; echo b >&2", socket=sock(agent_process)
    )
    with Client(sock(agent_process)) as client:
        lines = [e for e in client.logs("lib") if isinstance(e, LogLine)]
    assert [(line.stream, line.text, line.run) for line in lines] == [
        ("stdout", "a", 1),
        ("stderr", "b", 1),
    ]


# --- following -----------------------------------------------------------------------------------


def test_follow_goes_on_across_runs_and_an_agent_restart(agent_process: AgentProcess) -> None:
    gate = agent_process.config.state_dir.parent / "gate"
    command = py(
        f"""
        import os, time
        print("before", flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.02)
        print("after", flush=True)
        """
    )
    run_cli("sync", "run", "svc", "--", "echo", "run one", socket=sock(agent_process))
    with following(agent_process, "svc") as follower:
        out = follower.stdout.fileno()  # type: ignore[union-attr]
        assert b"run one" in read_until(out, b"run one\n")
        run = spawn(agent_process, "run", "svc", "--", *command)
        seen = read_until(out, b"before\n")
        assert b"-- run 2 (boot 1)" in seen  # a new run, marked
        agent_process.stop()
        agent_process.start()
        gate.touch()
        assert b"after\n" in read_until(out, b"after\n")
        assert run.wait(LIMIT) == 0
        follower.send_signal(signal.SIGINT)
        assert follower.wait(LIMIT) == 0
    assert unit_status(agent_process, "svc")[0] == "completed"


# --- faults --------------------------------------------------------------------------------------


def test_a_damaged_log_shows_what_can_be_read_and_says_what_was_skipped(
    agent_process: AgentProcess,
) -> None:
    command = py(
        """
        import time
        for i in range(6):
            print(f"line {i}", flush=True)
            time.sleep(0.01)
        """
    )
    run_cli("sync", "run", "hurt", "--", *command, socket=sock(agent_process))
    [(_run, _segment, path)] = files(agent_process, "hurt")
    data = bytearray(path.read_bytes())
    at = data.index(b"line 2")
    data[at - 3 : at + 3] = b"garbage!"  # a record in the middle spoilt
    path.write_bytes(bytes(data) + b"\xffUL\x01\x99")  # and one cut short at the end
    shown = logs(agent_process, "hurt")
    assert shown.returncode == 0
    assert shown.stdout == b"line 0\nline 1\nline 3\nline 4\nline 5\n"
    assert shown.stderr.count(b"that hold no readable record") == 2
    assert str(path).encode() in shown.stderr


def test_a_log_folder_not_ours_is_refused(agent_process: AgentProcess) -> None:
    run_cli("sync", "run", "mine", "--", "echo", "hi", socket=sock(agent_process))
    logs_dir = agent_process.config.state_dir / LOGS_DIR
    logs_dir.chmod(0o777)
    try:
        shown = logs(agent_process, "mine")
        assert shown.returncode == 1 and b"writable by others" in shown.stderr
        result = run_cli("sync", "run", "mine", "--", "echo", "again", socket=sock(agent_process))
        assert result.code == 0 and result.out == "again\n"  # the command runs all the same
        assert result.err.count("not recording mine's output") == 1
        assert "writable by others" in result.err
    finally:
        logs_dir.chmod(0o700)
    assert logs(agent_process, "mine").stdout == b"hi\n"
    if os.geteuid() == 0:
        os.chown(folder(agent_process, "mine"), 65534, 65534)
        shown = logs(agent_process, "mine")
        assert shown.returncode == 1 and b"belongs to uid 65534" in shown.stderr


@pytest.fixture
def tiny_logs(agent_process: AgentProcess) -> Iterator[Path]:
    """The agent's log folder on a real 1 MiB tmpfs (its journal stays on the usual disk)."""
    mount = agent_process.config.state_dir / LOGS_DIR
    mount.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (CI runs as root); this is uid {os.geteuid()}")
    command = ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)]
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_full_disk_stops_the_recording_not_the_command(
    agent_process: AgentProcess, tiny_logs: Path
) -> None:
    command = py(
        """
        import sys, time
        for i in range(40000):
            print(f"line {i:05d} " + "." * 50)
            if i % 1000 == 0:
                sys.stdout.flush()
                time.sleep(0.02)
        print("done", file=sys.stderr)
        """
    )
    result = run_cli("sync", "run", "big", "--", *command, socket=sock(agent_process))
    assert result.code == 0
    assert result.out.count("\n") == 40000  # every line still reached run's stdout
    assert result.err.count("output is no longer recorded") == 1
    assert "No space left on device" in result.err and "done\n" in result.err
    assert unit_status(agent_process, "big") == ("completed", "")
    shown = logs(agent_process, "big")
    assert shown.returncode == 0 and b"no readable record" not in shown.stderr
    lines = shown.stdout.decode().splitlines()
    assert lines and lines == [f"line {i:05d} " + "." * 50 for i in range(len(lines))]


# --- several hosts ---------------------------------------------------------------------------


def test_on_etcd_the_output_stays_on_the_host_that_ran_it(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    url = etcd.url("logs")
    host_a = etcd_agents(url, "--host-id", "host-a")
    host_b = etcd_agents(url, "--host-id", "host-b")
    assert host_a.cli("run", "seed", "--", "echo", "seeded on a").returncode == 0
    shown = host_a.cli("logs", "seed")
    assert shown.returncode == 0 and shown.stdout == "seeded on a\n"
    deadline = time.monotonic() + LIMIT
    while (elsewhere := host_b.cli("logs", "seed")).returncode != 0:  # until B's replica has it
        assert time.monotonic() < deadline, elsewhere.stderr
        time.sleep(0.05)
    assert elsewhere.stdout == ""
    assert "its latest run ran on host host-a, which keeps that run's output" in elsewhere.stderr
    assert not (host_b.state_dir / LOGS_DIR).exists()


async def test_the_trio_client_yields_records_and_follows(
    agent: Service, config: AgentConfig
) -> None:
    """The same `logs` in the trio client (generated into the blocking one): what is there,
    then, following, a new run's lines as they come."""
    env = dict(os.environ, UNITSYNC_SOCKET=str(config.socket))
    command = [sys.executable, "-m", "unitsync.cli", "sync", "run", "tick", "--"]
    await trio.run_process([*command, "echo", "first"], env=env, capture_stdout=True)
    async with AsyncClient(config.socket) as client:
        seen = [e.text async for e in client.logs("tick") if isinstance(e, LogLine)]
        assert seen == ["first"]
        with trio.fail_after(LIMIT):
            follow = client.logs("tick", follow=True)
            async with (
                contextlib.aclosing(follow) as lines,  # type: ignore[type-var]
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(
                    functools.partial(
                        trio.run_process,
                        [*command, "sh", "-c", "echo second; echo third"],
                        env=env,
                        capture_stdout=True,
                    )
                )
                texts = []
                async for event in lines:
                    if isinstance(event, LogLine):
                        texts.append(event.text)
                    if texts[-1:] == ["third"]:
                        break
    assert texts == ["first", "second", "third"]


def test_on_etcd_a_forget_removes_the_log_on_every_host(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    url = etcd.url("forget-logs")
    host_a = etcd_agents(url, "--host-id", "host-a")
    host_b = etcd_agents(url, "--host-id", "host-b")
    assert host_a.cli("run", "tmp", "--", "echo", "on a").returncode == 0
    kept = Path(unit_folder(host_a.state_dir / LOGS_DIR, "tmp"))
    assert kept.is_dir()
    deadline = time.monotonic() + LIMIT
    while (forgot := host_b.cli("forget", "tmp")).returncode != 0:  # once B's replica has it
        assert time.monotonic() < deadline, forgot.stderr
        time.sleep(0.05)
    while kept.exists():  # host A's agent removes it when the forget reaches it
        assert time.monotonic() < deadline, "host A kept the log of a forgotten unit"
        time.sleep(0.05)


def test_on_a_terminal_the_command_still_has_one(agent_process: AgentProcess) -> None:
    """Passed through a pseudo-terminal: the command sees a terminal (colours, line buffering)
    and reads its stdin from the real one; the log keeps its lines, colours included."""
    command = py(
        """
        import sys
        tty = sys.stdout.isatty() and sys.stderr.isatty()
        print("\\x1b[32mtty\\x1b[0m" if tty else "no tty", flush=True)
        print("typed:", input(), flush=True)
        """
    )
    proc, terminal = on_a_terminal(
        "sync", "run", "colour", "--", *command, socket=sock(agent_process)
    )
    try:
        assert b"\x1b[32mtty\x1b[0m" in read_until(terminal, b"tty\x1b[0m")
        os.write(terminal, b"hello\n")
        assert b"typed: hello" in read_until(terminal, b"typed: hello")
        assert proc.wait(LIMIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(terminal)
    shown = logs(agent_process, "colour")
    assert shown.stdout.replace(b"\r", b"") == b"\x1b[32mtty\x1b[0m\ntyped: hello\n"
    records = json_lines(logs(agent_process, "colour", "-o", "json").stdout)
    assert {r["stream"] for r in records} == {"both"}


def test_each_restart_of_a_runs_command_is_a_section_of_its_own(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    """`run --restart` (issue 24) starts its command again in the same `run`: each start is
    a section of the log, and each end says what came of it."""
    policy = ["--restart", "on-failure", "--restart-delay", "10ms"]
    script = (
        'n=$(($(cat n 2>/dev/null || echo 0) + 1)); echo $n > n; echo "attempt $n"; [ $n -ge 3 ]'
    )
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "unitsync.cli",
            "sync",
            "run",
            "job",
            *policy,
            "--",
            "sh",
            "-c",
            script,
        ],
        cwd=tmp_path,
        capture_output=True,
        env=dict(os.environ, UNITSYNC_SOCKET=str(sock(agent_process))),
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    every = logs(agent_process, "job", "--all").stdout.decode()
    lines = [line for line in every.splitlines() if not line.startswith("--")]
    assert lines == ["attempt 1", "attempt 2", "attempt 3"]
    ends = [line for line in every.splitlines() if " ended: " in line]
    assert len(ends) == 3, every
    assert all("restarting in" in end for end in ends[:2]), every
    assert "completed" in ends[2], every
    assert logs(agent_process, "job").stdout == b"attempt 3\n"  # the latest section
