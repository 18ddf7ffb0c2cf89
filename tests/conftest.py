"""Shared fixtures: real agents on real sockets in private temp folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from unitsync.agent.server import AgentConfig, run_agent
from unitsync.agent.service import Service

from etcd_cluster import ETCD, EtcdAgent, EtcdCluster


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
        )
        self._await_line("listening on")
        return self

    def _await_line(self, needle: str) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:
            seen.append(line)
            if needle in line:
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


def spawn_cli(*args: str, socket: Path, stdout: object = subprocess.PIPE) -> subprocess.Popen[str]:
    env = dict(os.environ, UNITSYNC_SOCKET=str(socket))
    return subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", *args],
        stdout=stdout,  # type: ignore[arg-type]
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


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
