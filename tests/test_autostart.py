"""A client that finds no agent starts exactly one (SPEC §7), with real processes and sockets.

Every test turns autostart back on (conftest turns it off for the rest of the suite) with
its own socket and state dir, and stops whatever agent it caused when it ends. The agents
a client starts are counted by the line each starter writes to `agent.log` before it
spawns one, so an agent that was started and died at once is counted too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from unitsync.agent.serve.server import AgentConfig
from unitsync.client import Client, NoAgent
from unitsync.client.autostart import Autostarted
from unitsync.client.retry import RESTART_GRACE

from conftest import (
    AgentProcess,
    agents_running,
    on_a_terminal,
    read_until,
    run_cli,
    stop_agents,
)

LIMIT = 60
"""A safety net against a hung child, never a measure of speed."""


@dataclass
class Place:
    """Where the agent should be: a socket that nothing listens on yet, and a state dir."""

    socket: Path
    state_dir: Path

    @property
    def log(self) -> Path:
        return self.state_dir / "agent.log"

    def starts(self) -> list[str]:
        """The notes a starting client writes to the log, one per agent it spawned."""
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines() if "starting one" in line]

    def agent_pid(self) -> int:
        """The running agent's pid, from the socket's lock file."""
        return int(self.socket.with_name("agent.sock.lock").read_text())


@pytest.fixture
def place(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Place]:
    """Autostart on (as for a user), socket and state dir private to the test."""
    here = Place(short_tmp / "run" / "agent.sock", short_tmp / "state")
    monkeypatch.delenv("UNITSYNC_AUTOSTART")
    monkeypatch.setenv("UNITSYNC_SOCKET", str(here.socket))
    monkeypatch.setenv("UNITSYNC_STATE_DIR", str(here.state_dir))
    yield here
    stop_agents(agents_running(str(short_tmp)))


def cli(*args: str) -> subprocess.Popen[str]:
    """`unitsync ARGS` with the environment the fixture set up."""
    return subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pid_in(pong: str) -> int:
    match = re.search(r"\(pid (\d+)\)", pong)
    assert match, pong
    return int(match.group(1))


def test_ten_concurrent_first_calls_start_exactly_one_agent(place: Place) -> None:
    calls = [cli("sync", "ping") for _ in range(10)]
    results = [(call.pid, *call.communicate(timeout=LIMIT), call.returncode) for call in calls]

    assert [code for *_, code in results] == [0] * 10, results
    answered_by = {pid_in(out) for _, out, _, _ in results}
    assert len(answered_by) == 1, results  # all ten talked to the same agent
    agent = answered_by.pop()
    assert agent == place.agent_pid()
    assert agents_running(str(place.socket)) == [agent]
    assert len(place.starts()) == 1, place.log.read_text()  # and no other was ever spawned
    starters = [pid for pid, _, err, _ in results if "started an agent" in err]
    assert len(starters) == 1
    assert f"pid {starters[0]} found no agent at {place.socket}" in place.starts()[0]


def test_the_first_call_says_it_started_the_agent_and_where_its_log_is(place: Place) -> None:
    first = run_cli("sync", "want", "web", "db")
    assert first.code == 0, first.err
    assert first.out == "web now wants db\n"
    agent = place.agent_pid()
    assert first.err == (
        f"unitsync: started an agent (pid {agent}) at {place.socket}; its log: {place.log}\n"
    )
    assert "listening on" in place.log.read_text()
    assert run_cli("sync", "status", "web").code == 0  # the change went to that agent


def test_later_calls_start_nothing_and_load_nothing_for_it(place: Place) -> None:
    assert run_cli("sync", "want", "web", "db").code == 0
    agent = place.agent_pid()
    for args in (("sync", "ping"), ("sync", "complete", "db", "--force"), ("sync", "status")):
        later = run_cli(*args)
        assert later.code == 0, later.err
        assert "started an agent" not in later.err
    assert len(place.starts()) == 1
    assert agents_running(str(place.socket)) == [agent]
    timed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "unitsync.cli", "sync", "ping"],
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert timed.returncode == 0
    assert "unitsync.client.autostart" not in timed.stderr  # the usual path never loads it


def test_autostart_off_exits_3_and_starts_nothing(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNITSYNC_AUTOSTART", "0")
    result = run_cli("sync", "want", "web", "db")
    assert result.code == 3
    assert result.err == (
        f"unitsync: no agent is listening at {place.socket}; start one with `unitsync agent` "
        "(or point --socket / UNITSYNC_SOCKET at the right socket)\n"
    )
    assert not place.socket.parent.exists()  # not even its folder
    assert not place.state_dir.exists()
    assert agents_running(str(place.socket)) == []


def test_an_agent_that_cannot_start_fails_the_call_with_its_own_words(place: Place) -> None:
    place.state_dir.mkdir()
    place.state_dir.chmod(0o777)  # the agent refuses a state dir others can write
    result = run_cli("sync", "ping")
    assert result.code == 3
    assert "exited with status 1 before it was ready" in result.err
    assert f"refusing to use {place.state_dir}: it is writable by others" in result.err
    assert "not ready after" not in result.err  # its exit was seen, not waited out
    assert agents_running(str(place.socket)) == []


def test_waiters_of_a_start_that_failed_say_so_instead_of_trying_again(place: Place) -> None:
    place.state_dir.mkdir()
    place.state_dir.chmod(0o777)
    lock = place.socket.with_name("agent.sock.autostart.lock")
    first = cli("sync", "ping")
    while not holds(lock, first.pid):
        assert first.poll() is None, first.communicate()
    os.kill(first.pid, signal.SIGSTOP)  # holding the lock, its agent failing meanwhile
    try:
        others = [cli("sync", "ping") for _ in range(3)]
        for other in others:  # each finds no agent and waits for the lock
            while not has_open(other.pid, lock) and other.poll() is None:
                time.sleep(0.01)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    results = [(call.communicate(timeout=LIMIT)[1], call.returncode) for call in [first, *others]]
    assert results[0][1] == 3
    assert "exited with status 1 before it was ready" in results[0][0]
    for err, code in results[1:]:
        assert code == 3
        assert f"another client started an agent for {place.socket}, and it did not" in err
        assert f"refusing to use {place.state_dir}: it is writable by others" in err
    assert len(place.starts()) == 1  # none of them started another to fail the same way


def holds(lock: Path, pid: int) -> bool:
    """Whether `lock` names `pid` as its holder (written once the flock is taken)."""
    try:
        return lock.read_text().strip() == str(pid)
    except FileNotFoundError:
        return False


def has_open(pid: int, path: Path) -> bool:
    folder = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in folder.iterdir())
    except OSError:  # it exited, or closed a descriptor while we looked
        return False


@pytest.mark.parametrize("given_by", ["--socket", "UNITSYNC_SOCKET", "default state dir"])
def test_autostart_uses_the_socket_and_state_dir_it_is_given(
    place: Place, short_tmp: Path, monkeypatch: pytest.MonkeyPatch, given_by: str
) -> None:
    args = ["sync", "want", "web", "db"]
    if given_by == "--socket":
        monkeypatch.delenv("UNITSYNC_SOCKET")
        args += ["--socket", str(place.socket)]
    if given_by == "default state dir":
        monkeypatch.delenv("UNITSYNC_STATE_DIR")
        monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "xdg"))
        place.state_dir = short_tmp / "xdg" / "unitsync"  # platformdirs' user state dir
    result = run_cli(*args)
    assert result.code == 0, result.err
    assert f"at {place.socket}; its log: {place.log}" in result.err
    assert (place.state_dir / "journal.log").exists()
    assert place.socket.parent.stat().st_mode & 0o777 == 0o700  # created private
    pong = run_cli("sync", "ping", "--socket", str(place.socket))
    assert f"at {place.socket}," in pong.out


def test_a_wait_that_loses_its_agent_brings_one_back_after_a_grace(place: Place) -> None:
    """A stopped agent (SIGTERM: an upgrade, a restart by hand) is given RESTART_GRACE to be
    restarted by whoever stopped it; then the waiting `start` starts one itself, as a new
    command would, says so once, and goes on waiting (issue 19, sequence 7)."""
    assert run_cli("sync", "want", "app", "db").code == 0
    waiter, terminal = on_a_terminal("sync", "start", "app", "--timeout", "0", socket=place.socket)
    try:
        assert b"waiting for db" in read_until(terminal, b"waiting for db")
        stopped = place.agent_pid()
        stop_agents([stopped])
        seen = read_until(terminal, b"reconnecting (no agent is listening at")
        assert b"reconnecting (no agent is listening at" in seen  # first, the grace
        said = read_until(terminal, b"its log:")
        assert b"the agent stopped and none came back within 2s; started an agent (pid" in said
        assert said.count(b"started an agent") == 1
        completer = cli("sync", "complete", "db", "--force")
        _out, err = completer.communicate(timeout=LIMIT)
        assert completer.returncode == 0, err
        assert "started an agent" not in err  # the waiter's agent serves it
        assert b"app: started" in read_until(terminal, b"app: started")
        assert waiter.wait(timeout=LIMIT) == 0
    finally:
        os.close(terminal)
        if waiter.poll() is None:
            waiter.kill()
    [_first, second] = place.starts()
    assert f"pid {waiter.pid} found no agent" in second
    assert place.agent_pid() != stopped


def test_within_the_grace_a_client_that_lost_its_agent_starts_nothing(place: Place) -> None:
    """The grace is what lets a supervisor's restart win: a client that finds its agent
    stopped cleanly starts none until RESTART_GRACE has passed since it first found it gone."""
    with Client() as client:
        client.ping()
        stop_agents([place.agent_pid()])
        with pytest.raises(NoAgent):
            client._connect(lost=True)  # just now: wait
        assert len(place.starts()) == 1
        assert client._missing_since is not None
        client._missing_since -= RESTART_GRACE  # as if the grace had passed
        client._connect(lost=True).close()
        assert len(place.starts()) == 2
        assert client._missing_since is None


def test_the_python_client_autostarts_unless_told_not_to(place: Place) -> None:
    told: list[Autostarted] = []
    with Client(on_autostart=told.append) as client:
        pong = client.ping()
    assert told == [Autostarted(pong.pid, place.socket, place.log)]
    with Client() as client:
        client.ping()
    assert len(told) == 1  # an agent answered: nothing started, nothing told
    with pytest.raises(NoAgent):
        Client(place.socket.with_name("other.sock"), autostart=False).ping()
    assert not place.socket.with_name("other.sock.autostart.lock").exists()


def test_a_client_finds_an_activated_socket_and_never_autostarts(place: Place) -> None:
    """systemd's own tool holds the socket; the first connection starts the agent through it."""
    tool = "/usr/bin/systemd-socket-activate"
    if not os.access(tool, os.X_OK):
        pytest.skip("systemd-socket-activate is not installed")
    place.socket.parent.mkdir(mode=0o700)
    agent = [sys.executable, "-m", "unitsync.cli", "agent", "--state-dir", str(place.state_dir)]
    activator = subprocess.Popen(  # it passes on none of our environment: say it all here
        [tool, "--listen", str(place.socket), *agent],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert activator.stderr is not None
        assert "Listening on" in activator.stderr.readline()
        pong = run_cli("sync", "ping")
        assert pong.code == 0, pong.err
        assert pid_in(pong.out) == activator.pid  # it execs the agent in place
        assert "started an agent" not in pong.err
        assert not place.log.exists()  # no client started anything
    finally:
        activator.send_signal(signal.SIGTERM)
        activator.communicate(timeout=LIMIT)
    assert activator.returncode == 0
    assert place.socket.exists()  # the socket is systemd's: the agent left it in place


# --- an agent lost while scripts wait and run ----------------------------------------------


@dataclass
class Script:
    """A `unitsync` process of a workspace script; its stderr read as it comes."""

    proc: subprocess.Popen[str]
    said: bytes = b""

    def says(self, text: str) -> None:
        """Until it has written `text` on stderr; fails if it never does."""
        assert self.proc.stderr is not None
        needle = text.encode()
        if needle not in self.said:
            self.said += read_until(self.proc.stderr.fileno(), needle, LIMIT)
            assert needle in self.said, f"it never said {text!r}; it said:\n{self.said.decode()}"

    def ends(self) -> tuple[int, str]:
        """Its exit status, and all it wrote on stderr."""
        _out, rest = self.proc.communicate(timeout=LIMIT)
        return self.proc.returncode, self.said.decode() + rest


@dataclass
class Scripts:
    """The scripts a test starts: `run db` runs until `go` exists; none outlives the test."""

    go: Path
    started: list[subprocess.Popen[str]]

    def waiting(self, *args: str) -> Script:
        """`unitsync sync start app ARGS`, once it says it waits for db."""
        script = self._script("sync", "start", "app", *args)
        script.says("app: waiting for db")
        return script

    def running(self) -> Script:
        """`unitsync sync run db`, once its command runs."""
        wait = f"until [ -e {self.go} ]; do sleep 0.05; done"
        script = self._script("sync", "run", "db", "--", "sh", "-c", wait)
        script.says("db: started")
        return script

    def _script(self, *args: str) -> Script:
        self.started.append(cli(*args))
        return Script(self.started[-1])


@pytest.fixture
def scripts(place: Place, short_tmp: Path) -> Iterator[Scripts]:
    """`app` wants `db`, on an agent the first call started."""
    assert run_cli("sync", "want", "app", "db").code == 0
    them = Scripts(short_tmp / "go", [])
    yield them
    them.go.touch()
    for proc in them.started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=LIMIT)


def test_an_agent_that_crashes_under_its_scripts_is_started_again_by_them(
    place: Place, scripts: Scripts
) -> None:
    """SIGKILL leaves the socket file: the first script to find it refusing starts an agent
    (exactly one), the run takes its run back and the waiter goes on."""
    waiter, runner = scripts.waiting("--timeout", "0"), scripts.running()
    crashed = place.agent_pid()
    os.kill(crashed, signal.SIGKILL)

    runner.says("took the run back")
    again = place.agent_pid()
    assert again != crashed
    assert agents_running(str(place.socket)) == [again]
    scripts.go.touch()
    ran, ran_said = runner.ends()
    assert ran == 0, ran_said
    waited, waiter_said = waiter.ends()
    assert waited == 0, waiter_said
    assert "app: started after waiting" in waiter_said
    [_first, second] = place.starts()  # one agent started again, by one of the two,
    said_by = {waiter.proc.pid: waiter_said, runner.proc.pid: ran_said}
    starter = next(pid for pid in said_by if f"pid {pid} found no agent" in second)
    assert f"started an agent (pid {again})" in said_by[starter]  # which said so
    with Client(autostart=False) as client:
        assert {u.name: u.status for u in client.status()} == {"app": "started", "db": "completed"}


def test_with_autostart_off_a_crashed_agent_is_waited_for(
    place: Place, scripts: Scripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNITSYNC_AUTOSTART", "0")
    waiter = scripts.waiting("--timeout", "5s")
    os.kill(place.agent_pid(), signal.SIGKILL)

    code, said = waiter.ends()
    assert code == 5, said
    assert "timed out after 5s waiting to start 'app' (the agent was unreachable)" in said
    assert place.socket.exists()  # what a crash leaves: the waiter saw it, and started nothing
    assert len(place.starts()) == 1
    assert agents_running(str(place.socket)) == []


def test_a_stopped_agent_is_brought_back_by_the_scripts_that_wait_on_it(
    place: Place, scripts: Scripts
) -> None:
    """Issue 19, sequence 7: a clean stop no longer stalls a start-up until someone types a
    command. After the grace, exactly one of the scripts starts an agent and says so; the
    run takes its run back, the waiter goes on, and both end as they would have."""
    waiter, runner = scripts.waiting("--timeout", "0"), scripts.running()
    stopped = place.agent_pid()
    stop_agents([stopped])

    runner.says("took the run back")
    again = place.agent_pid()
    assert again != stopped
    assert agents_running(str(place.socket)) == [again]
    scripts.go.touch()
    ran, ran_said = runner.ends()
    assert ran == 0, ran_said
    waited, waiter_said = waiter.ends()
    assert waited == 0, waiter_said
    [_first, second] = place.starts()
    said_by = {waiter.proc.pid: waiter_said, runner.proc.pid: ran_said}
    starter = next(pid for pid in said_by if f"pid {pid} found no agent" in second)
    told = "the agent stopped and none came back within 2s; started an agent"
    assert said_by[starter].count(told) == 1
    assert all(told not in said for pid, said in said_by.items() if pid != starter)


def test_with_autostart_off_a_stopped_agent_is_waited_for_until_someone_starts_it(
    place: Place, scripts: Scripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With UNITSYNC_AUTOSTART=0 the scripts start nothing, as before: the agent started by
    hand serves them."""
    monkeypatch.setenv("UNITSYNC_AUTOSTART", "0")
    waiter, terminal = on_a_terminal("sync", "start", "app", "--timeout", "0", socket=place.socket)
    try:
        assert b"waiting for db" in read_until(terminal, b"waiting for db")
        runner = scripts.running()
        stop_agents([place.agent_pid()])
        assert not place.socket.exists()
        runner.says("the agent went away; taking the run back")
        # Drawn twice: two reconnections (the run's take-back retries alongside) found no
        # agent and started none.
        no_agent = b"reconnecting (no agent is listening at"
        seen = read_until(terminal, no_agent) + read_until(terminal, no_agent)
        assert seen.count(no_agent) >= 2, seen
        time.sleep(RESTART_GRACE)  # past the grace too: still nothing started
        assert agents_running(str(place.socket)) == []
        assert len(place.starts()) == 1

        by_hand = AgentProcess(AgentConfig(place.socket, place.state_dir)).start()
        runner.says("took the run back")
        scripts.go.touch()
        ran, ran_said = runner.ends()
        assert ran == 0, ran_said
        assert b"app: started" in read_until(terminal, b"app: started")
        assert waiter.wait(timeout=LIMIT) == 0
        assert agents_running(str(place.socket)) == [by_hand.proc.pid]
        assert by_hand.stop()[0] == 0
    finally:
        os.close(terminal)
        if waiter.poll() is None:
            waiter.kill()
    assert len(place.starts()) == 1  # the scripts never started one


def test_an_agent_started_for_a_command_is_not_counted_as_its_wait(place: Place) -> None:
    """A unit with no dependencies waited 0, though its first command had to start the
    agent (issue 23, 2): only time blocked on dependencies is a wait."""
    ran = run_cli("sync", "run", "solo", "--", "true")
    assert ran.code == 0 and "started an agent" in ran.err, ran.err
    assert "waited:     0ms\n" in run_cli("sync", "status", "solo").out
    history = json.loads(run_cli("sync", "status", "solo", "-o", "json").out)["history"]
    assert [entry["waited"] for entry in history if entry["to"] == "started"] == [0.0]
    rows = json.loads(run_cli("sync", "timeline", "-o", "json").out)["units"]
    (solo,) = [row for row in rows if row["name"] == "solo"]
    assert solo["wait_began"] == solo["started"], solo  # no wait drawn before its run


def test_without_a_runtime_dir_the_agent_starts_at_a_private_folder_of_the_temp_dir(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root shell or a container often has no XDG_RUNTIME_DIR (issue 23, 5): the default
    socket is then `$TMPDIR/unitsync-$UID/agent.sock`, as docs/agent.md says."""
    monkeypatch.delenv("UNITSYNC_AUTOSTART")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    monkeypatch.setenv("TMPDIR", str(short_tmp))
    monkeypatch.setenv("UNITSYNC_STATE_DIR", str(short_tmp / "state"))
    socket = short_tmp / f"unitsync-{os.getuid()}" / "agent.sock"
    try:
        first = run_cli("sync", "want", "app", "db")
        assert first.code == 0, first.err
        assert f"started an agent (pid {agents_running(str(socket))[0]}) at {socket};" in first.err
        assert os.stat(socket.parent).st_mode & 0o777 == 0o700
    finally:
        stop_agents(agents_running(str(short_tmp)))


def _seconds(shown: bytes) -> float:
    """A duration as `wire.timefmt.duration` writes it (850ms, 4.2s, 3m05s), in seconds."""
    text = shown.decode()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if "m" in text:
        minutes, secs = text[:-1].split("m")
        return int(minutes) * 60 + int(secs)
    return float(text[:-1])


def test_on_a_terminal_the_wait_counter_never_runs_ahead_of_the_final_figure(
    place: Place,
) -> None:
    """One clock (issue 23, 12): the counter counts from when the agent found the start
    blocked, as the final figure does; not from the call, which here had to start the agent
    first. The dependency completes the moment a tick is drawn, so a counter that had
    counted the agent's start-up would show more than the final figure."""
    runner, terminal = on_a_terminal(
        "sync", "run", "app", "--want", "db", "--", "true", socket=place.socket
    )
    try:
        seen = read_until(terminal, b"waiting for db (1.")  # the second tick
        seen += read_until(terminal, b")")
        with Client(place.socket) as client:
            client.start("db")
            client.complete("db")
        seen += read_until(terminal, b"app: started after waiting")
        seen += read_until(terminal, b"\n")
        assert runner.wait(timeout=LIMIT) == 0
    finally:
        os.close(terminal)
        if runner.poll() is None:
            runner.kill()
    counters = [
        _seconds(m) for m in re.findall(rb"waiting for db \(([0-9.]+m?s|\d+m\d\ds)\)", seen)
    ]
    final = re.search(rb"started after waiting ([0-9.]+m?s|\d+m\d\ds)", seen)
    assert counters and final, seen
    assert counters[0] <= counters[-1] <= _seconds(final.group(1)), seen


def _zombie_of(parent: int, pid: int) -> bool:
    """Is `pid` a zombie (`<defunct>`) child of `parent`, still waiting to be reaped?"""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return False  # reaped: gone
    return fields[0] == b"Z" and int(fields[1]) == parent


def test_an_agent_autostarted_by_a_long_run_is_reaped_when_it_stops(place: Place) -> None:
    """Issue 23, 8: the `run` that started the agent lives on; the agent is stopped and
    another is started by hand, so the `run` starts none (which used to reap the old one in
    passing): the stopped agent must not stay a zombie child of that `run`."""
    runner = cli("sync", "run", "db", "--", "sleep", "600")
    try:
        assert runner.stderr is not None
        assert "started an agent" in runner.stderr.readline()
        assert runner.stderr.readline() == "db: started\n"
        stopped = place.agent_pid()
        stop_agents([stopped])
        by_hand = AgentProcess(AgentConfig(place.socket, place.state_dir)).start()
        deadline = time.monotonic() + LIMIT
        while _zombie_of(runner.pid, stopped) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _zombie_of(runner.pid, stopped)
        assert runner.poll() is None  # the run goes on, with the agent started by hand
        by_hand.stop()
    finally:
        runner.terminate()
        runner.communicate(timeout=LIMIT)


def test_the_log_names_the_command_that_started_the_agent(place: Place) -> None:
    """Issue 23, 12: the notice goes to the starting command's stderr only (a script's
    redirect, maybe); the agent's log says which command that was."""
    first = run_cli("sync", "want", "web", "db")
    assert first.code == 0 and "started an agent" in first.err
    (started,) = place.starts()
    assert started.endswith("; starting one (for `python -m unitsync.cli sync want web db`)")
    later = run_cli("sync", "want", "api", "db")
    assert later.code == 0 and later.err == ""  # it found the agent: nothing to say
