"""Shared fixtures: real agents on real sockets in private temp folders."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from unitsync.agent.serve.server import AgentConfig, run_agent
from unitsync.agent.service import Service

from harness.etcd_cluster import ETCD, EtcdAgent, EtcdCluster
from harness.hosts import Workspace
from harness.hosts import unavailable as hosts_unavailable

# A shell starts a background job (`pytest &`, `nohup pytest &` in a script) with Ctrl-C
# ignored, and an ignored signal stays ignored across exec: every `unitsync` the tests spawn
# would shrug off the SIGINT that stands for the user's Ctrl-C, and the tests that send it
# would hang. The suite's children get the default a terminal's user has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


SUITE_MARK = ("UNITSYNC_TEST_SUITE", f"{os.getpid()}-{os.urandom(4).hex()}")
"""Every process this session starts inherits it: a suite running beside this one on the
same machine runs the same commands (`sleep 6005`), and a test that looks for its own
leftovers, or kills them, must never see or touch the other suite's."""
os.environ[SUITE_MARK[0]] = SUITE_MARK[1]


def ours(pid: int) -> bool:
    """Was process `pid` started by this session (it carries SUITE_MARK, orphaned or not)?"""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return "=".join(SUITE_MARK).encode() in environ


def kill_ours(command_part: str, signum: int = signal.SIGTERM) -> None:
    """`pkill -f`, for this session's processes only."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if command_part.encode() in cmdline and ours(int(entry.name)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signum)


REASONLESS_SKIP = "Skipped"
"""What pytest reports for a skip that gives no reason (a `pytest.skip` inside a trio test
loses its reason on the way out: skip from a fixture or a `skipif` mark instead)."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Every skip says why: one that does not is reported as a failure naming its test."""
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and longrepr[2] == REASONLESS_SKIP:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} was skipped without a reason: every skip says why"
    return report


@pytest.fixture(autouse=True)
def no_autostart(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that finds no agent fails (exit 3) instead of starting one in the user's
    state dir; tests of autostart (test_autostart.py) turn it back on with their own paths."""
    monkeypatch.setenv("UNITSYNC_AUTOSTART", "0")


@pytest.fixture(autouse=True)
def private_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The default state dir and socket folder are the test's own: an agent the developer
    runs (or one a failed test left behind) never meets a test that leaves them out."""
    home = Path(tempfile.mkdtemp(prefix="us-home-"))
    (home / "run").mkdir(mode=0o700)
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.delenv("UNITSYNC_STATE_DIR", raising=False)
    monkeypatch.delenv("UNITSYNC_SOCKET", raising=False)
    yield
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short private folder: Unix socket paths are limited to ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="us-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(short_tmp: Path) -> AgentConfig:
    return AgentConfig(socket=short_tmp / "run" / "agent.sock", state_dir=short_tmp / "state")


@pytest.fixture
async def agent(nursery: trio.Nursery, config: AgentConfig) -> AsyncIterator[Service]:
    """An in-process agent, cancelled (in order) when the test ends."""
    service = await nursery.start(run_agent, config)
    yield service


@dataclass
class AgentProcess:
    """A real `unitsync agent` process, for CLI, signal and crash tests."""

    config: AgentConfig
    proc: subprocess.Popen[str] | None = None
    extra: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    """Extra environment variables for the agent process."""
    startup_log: str = ""
    """What it logged since its latest start, up to the last line `await_line` waited for."""

    def start(self) -> AgentProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "unitsync.cli",
                "agent",
                "--socket",
                str(self.config.socket),
                "--state-dir",
                str(self.config.state_dir),
                *self.extra,
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(self.env or {})},
        )
        self.startup_log = ""
        self.await_line("listening on")
        return self

    def await_line(self, needle: str) -> None:
        """Read its log until a line holds `needle` (AssertionError if it exits first)."""
        assert self.proc is not None and self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:
            seen.append(line)
            if needle in line:
                self.startup_log += "".join(seen)
                return
        raise AssertionError(f"agent exited before {needle!r}:\n{''.join(seen)}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
        """Signal the agent and return its exit status and the rest of its log."""
        assert self.proc is not None
        self.proc.send_signal(signum)
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.communicate(timeout=30)


def sock(agent: AgentProcess) -> Path:
    return agent.config.socket


def unit_status(agent: AgentProcess, name: str) -> tuple[str, str]:
    """(status, reason) of one unit, asked of the agent directly."""
    from unitsync.client import Client

    with Client(sock(agent)) as client:
        [view] = client.status(name)
    return view.status, view.reason


@pytest.fixture
def agent_process(config: AgentConfig) -> Iterator[AgentProcess]:
    agent = AgentProcess(config).start()
    yield agent
    if agent.proc and agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.communicate(timeout=30)


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str, socket: Path | None = None, timeout: float = 60, **kw: object) -> Result:
    """Run `unitsync ARGS...` in a fresh process, as a script would."""
    env = dict(os.environ)
    if socket is not None:
        env["UNITSYNC_SOCKET"] = str(socket)
    proc = subprocess.run(
        [sys.executable, "-m", "unitsync.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        **kw,  # type: ignore[arg-type]
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


async def in_thread(
    call: Callable[..., subprocess.CompletedProcess[str]], *args: str
) -> subprocess.CompletedProcess[str]:
    """A blocking CLI call, without blocking the test's own trio tasks."""
    return await trio.to_thread.run_sync(functools.partial(call, *args))


def spawn_cli(*args: str, socket: Path, stdout: object = subprocess.PIPE) -> subprocess.Popen[str]:
    env = dict(os.environ, UNITSYNC_SOCKET=str(socket))
    return subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", *args],
        stdout=stdout,  # type: ignore[arg-type]
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def on_a_terminal(
    *args: str, socket: Path, columns: int = 100, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Run `unitsync ARGS` with stdin, stdout and stderr on a pseudo-terminal `columns`
    wide (told by the terminal, as a real one does, not by $COLUMNS); (process, pty)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environment = dict(os.environ, UNITSYNC_SOCKET=str(socket), TERM="xterm", **(env or {}))
    environment.pop("COLUMNS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=environment,
    )
    os.close(follower)
    return proc, leader


def read_all(terminal: int) -> bytes:
    """Everything a pseudo-terminal shows until its last writer is gone; closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(terminal)
    return b"".join(chunks)


def agents_running(mentioning: str) -> list[int]:
    """Live `unitsync agent` processes whose command line mentions `mentioning` (a path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        words = [arg.decode(errors="replace") for arg in argv]
        if "unitsync.cli" in words and "agent" in words and any(mentioning in w for w in words):
            found.append(int(entry.name))
    return sorted(found)


def stop_agents(pids: list[int], limit: float = 30) -> None:
    """SIGTERM each agent and wait until it is gone (a zombie counts as gone)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + limit
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # our own child (the Python client started it): reap it
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def read_until(fd: int, needle: bytes, limit: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + limit
    while needle not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the other side closed
                break
    return seen


# --- etcd (SPEC §10) ---------------------------------------------------------------------------


def _etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server; .ci/run does)")
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A real 3-member etcd cluster shared by a test module (each test uses its own prefix)."""
    yield from _etcd_cluster(tmp_path_factory)


@pytest.fixture
def fresh_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A real 3-member etcd cluster of the test's own, for tests that kill its members."""
    yield from _etcd_cluster(tmp_path_factory)


@pytest.fixture
def hosts() -> Iterator[Callable[..., Workspace]]:
    """Make a workspace on hosts of their own (network namespaces: 3 etcd members, 3 agents,
    `harness/hosts.py`): `hosts(agent_options=[...])`. Everything it made is removed when
    the test ends, passed or not. Skipped, saying why, without root, iproute2, nftables or
    etcd."""
    why = hosts_unavailable()
    if why is not None:
        pytest.skip(why)
    made: list[Workspace] = []

    def make(**options: object) -> Workspace:
        made.append(Workspace.make(**options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for workspace in made:
        workspace.close()


@pytest.fixture
def etcd_agents(short_tmp: Path) -> Iterator[Callable[..., EtcdAgent]]:
    """Start `unitsync agent --store URL OPTIONS...` processes: `etcd_agents(url, *options)`;
    all are killed when the test ends."""
    started: list[EtcdAgent] = []

    def start(url: str, *options: str) -> EtcdAgent:
        agent = EtcdAgent(short_tmp, f"a{len(started)}", url, *options).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.close()
