"""A workspace on several hosts: etcd members and agents, each on a host of its own.

`Workspace.make(base)` builds a `netns.Network` of hosts `m0..m2` (the etcd members),
`a0..a2` (the agents) and `ctl`, the observer, which is never cut off: the harness's own
calls to etcd (health checks, reading etcd's history) are made from it. It starts a real
3-member etcd cluster (`etcd_cluster.EtcdCluster`) on the m hosts and a real `unitsync
agent --store etcd://...` process (`etcd_cluster.EtcdAgent`) on each a host, with its
own state dir, socket, host id and boot id.

Tests then cut hosts apart by name (`cut`, `unplug`, `heal`), kill and restart members
and agents, and talk to the agents through their socket files from the root namespace,
as scripts on those hosts would (`EtcdAgent.cli`).

Errors: set-up that fails (a member that never becomes healthy, an agent that does not
start) raises AssertionError with the process's log; `close()` never raises and removes
every process, namespace and file the workspace made.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from unitsync.agent.store.etcd.client import EtcdClient

from . import netns
from .etcd_cluster import EtcdAgent, EtcdCluster

T = TypeVar("T")

MEMBERS = ("m0", "m1", "m2")
AGENTS = ("a0", "a1", "a2")
OBSERVER = "ctl"
PREFIX = "ws"
"""The etcd prefix the agents share."""

_swept = False


def unavailable() -> str | None:
    """Why a workspace of hosts cannot be made here (a test's skip reason), or None."""
    from .etcd_cluster import ETCD

    if ETCD is None:
        return "etcd is not installed (Debian: apt-get install etcd-server; .ci/run does)"
    return netns.unavailable()


@dataclass(eq=False)
class Workspace:
    network: netns.Network
    etcd: EtcdCluster
    agents: list[EtcdAgent]
    base: Path

    @classmethod
    def make(
        cls, agents: int = len(AGENTS), agent_options: Sequence[str] = (), members: int = 3
    ) -> Workspace:
        """Hosts, a healthy cluster on them, and `agents` agents listening."""
        global _swept
        if not _swept:  # what runs killed before their clean-up left behind
            netns.sweep()
            _swept = True
        base = Path(tempfile.mkdtemp(prefix="us-hosts-"))  # short: socket paths
        names = [*MEMBERS[:members], *AGENTS[:agents], OBSERVER]
        network = netns.Network(names)
        workspace = None
        try:
            observer = network[OBSERVER]
            etcd = EtcdCluster(
                base,
                size=members,
                hosts=[(network[m].address, network[m].command([])) for m in MEMBERS[:members]],
                reach=lambda fn: observer.run_inside(fn),
            )
            workspace = cls(network, etcd, [], base)
            etcd.start()
            for name in AGENTS[:agents]:
                workspace.agents.append(
                    EtcdAgent(
                        base,
                        name,
                        etcd.url(PREFIX),
                        "--host-id", name,
                        "--boot-id", f"{name}-boot",
                        *agent_options,
                        wrap=network[name].command([]),
                    ).start()
                )  # fmt: skip
        except BaseException:
            if workspace is not None:
                workspace.close()
            else:
                network.close()
                shutil.rmtree(base, ignore_errors=True)
            raise
        return workspace

    # --- faults --------------------------------------------------------------------------------

    def cut(self, a: str | Iterable[str], b: str | Iterable[str], *, one_way: bool = False) -> None:
        """Drop packets between hosts `a` and hosts `b` (from `a` to `b` only if `one_way`)."""
        self.network.cut(_names(a), _names(b), one_way=one_way)

    def unplug(self, *names: str) -> None:
        self.network.unplug(*names)

    def heal(self) -> None:
        self.network.heal()

    def kill_agent(self, i: int, signum: int = signal.SIGKILL) -> None:
        agent = self.agents[i]
        assert agent.proc is not None
        agent.proc.send_signal(signum)
        if signum != signal.SIGSTOP:
            agent.proc.wait(timeout=60)

    def restart_agent(self, i: int) -> EtcdAgent:
        """Start agent `i` again (same state dir, socket and boot: an agent restart)."""
        agent = self.agents[i]
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGCONT)
            agent.proc.kill()
            agent.proc.wait(timeout=60)
        return agent.start()

    def restart_member(self, i: int) -> None:
        """Start member `i` again if it is not running (its data dir kept)."""
        if not self.etcd.members[i].running:
            self.etcd.start_member(i, wait=False)

    def wait_healthy(self) -> None:
        self.etcd.wait_healthy(timeout=120)

    # --- etcd, seen from the observer ----------------------------------------------------------

    def observe(self, fn: Callable[[EtcdClient], Awaitable[T]]) -> T:
        """`await fn(client)` with an etcd client of its own, made on the observer host."""

        async def main() -> T:
            client = EtcdClient(tuple(self.etcd.endpoints))
            try:
                return await fn(client)
            finally:
                await client.aclose()

        return self.network[OBSERVER].run_inside(trio.run, main)

    def close(self) -> None:
        """Every agent and member killed, every namespace and file removed. Never raises."""
        for agent in self.agents:
            with contextlib.suppress(Exception):
                if agent.proc is not None and agent.proc.poll() is None:
                    agent.proc.send_signal(signal.SIGCONT)
                agent.close()
        with contextlib.suppress(Exception):
            self.etcd.close()
        self.network.close()  # (and whatever the steps above left running in it)
        shutil.rmtree(self.base, ignore_errors=True)


def _names(hosts: str | Iterable[str]) -> list[str]:
    return [hosts] if isinstance(hosts, str) else list(hosts)
