"""Kill a real agent with SIGKILL under load, many times: nothing acknowledged is lost.

Each client owns its own units, so its acknowledged operations, in the order it
got the acknowledgements, are the whole truth about those units. A reference
model is fed exactly those operations. The one operation in flight when the
agent died may or may not have landed; the recovered state must be one of those
two, and nothing else.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from unitsync.agent.core.graph import Graph, Refused
from unitsync.agent.serve.server import AgentConfig
from unitsync.client import AgentUnavailable, Client, UnitsyncError, WaitTimeout

from conftest import AgentProcess, spawn_cli
from harness.applied import AppliedGraph

ROUNDS = 12
CLIENTS = 4
UNITS_PER_CLIENT = 6

Op = tuple[str, ...]


def apply_op(model: Graph, op: Op) -> None:
    """Feed one acknowledged operation to the model (times do not matter here)."""
    kind, unit, *rest = op
    try:
        match kind:
            case "want":
                model.want(unit, rest, now=0.0)
            case "start":
                model.admit(unit, rerun=True, now=0.0)
                model.start(unit, rerun=True, now=0.0)
            case "complete":
                model.complete(unit, force=True, now=0.0)
            case "fail":
                model.fail(unit, rest[0], now=0.0)
            case "reset":
                model.reset(unit, now=0.0)
    except Refused:
        pass  # refused by the agent too: no change


def observable(graph_or_views: Graph | list, units: list[str]) -> dict[str, tuple]:
    """What a user can see of each unit, minus wall-clock times."""
    if isinstance(graph_or_views, Graph):
        rows = {
            n: (
                u.status,
                u.reason,
                tuple(u.deps),
                tuple((t.from_, t.to, t.reason) for t in u.history),
            )
            for n, u in graph_or_views.units.items()
        }
    else:
        rows = {
            v.name: (
                v.status,
                v.reason,
                tuple(d.unit for d in v.dependencies),
                tuple((t.from_, t.to, t.reason) for t in v.history),
            )
            for v in graph_or_views
        }
    return {n: rows[n] for n in units if n in rows}


@dataclass
class Worker:
    index: int
    socket: Path
    rng: random.Random
    acknowledged: list[Op] = field(default_factory=list)
    in_flight: Op | None = None

    @property
    def units(self) -> list[str]:
        return [f"c{self.index}-u{k}" for k in range(UNITS_PER_CLIENT)]

    def next_op(self) -> Op:
        k = self.rng.randrange(UNITS_PER_CLIENT)
        unit = self.units[k]
        choice = self.rng.random()
        if choice < 0.25 and k > 0:  # only lower-numbered deps: never a cycle
            return ("want", unit, self.units[self.rng.randrange(k)])
        if choice < 0.45 and k == 0:  # unit 0 has no deps, so start never blocks
            return ("start", unit)
        if choice < 0.65:
            return ("complete", unit)
        if choice < 0.8:
            return ("fail", unit, f"reason {len(self.acknowledged)}")
        return ("reset", unit)

    def run(self, stop: threading.Event) -> None:
        """Send operations until the agent dies (or we are told to stop)."""
        with Client(self.socket, name=f"worker-{self.index}") as client:
            while not stop.is_set():
                op = self.next_op()
                self.in_flight = op
                try:
                    self._send(client, op)
                except (AgentUnavailable, WaitTimeout):
                    return  # the agent died with `op` in flight
                except UnitsyncError:
                    pass  # refused: acknowledged as "no change"
                self.acknowledged.append(op)
                self.in_flight = None

    @staticmethod
    def _send(client: Client, op: Op) -> None:
        kind, unit, *rest = op
        match kind:
            case "want":
                client.want(unit, *rest)
            case "start":
                client.start(unit, rerun=True, timeout=1)
            case "complete":
                client.complete(unit, force=True)
            case "fail":
                client.fail(unit, rest[0])
            case "reset":
                client.reset(unit)


def check_recovered(worker: Worker, socket: Path) -> None:
    """The recovered state is the acknowledged one, with or without the in-flight op."""
    with Client(socket) as client:
        views = client.status()
    seen = observable(views, worker.units)
    without = AppliedGraph()
    for op in worker.acknowledged:
        apply_op(without, op)
    candidates = [observable(without, worker.units)]
    if worker.in_flight is not None:
        apply_op(without, worker.in_flight)
        candidates.append(observable(without, worker.units))
    assert seen in candidates, (
        f"worker {worker.index}: recovered state matches neither the acknowledged operations "
        f"nor those plus the one in flight ({worker.in_flight})"
    )
    if worker.in_flight is not None:
        if seen == candidates[1]:
            worker.acknowledged.append(worker.in_flight)
        worker.in_flight = None


def test_sigkill_under_load_loses_nothing_acknowledged(config: AgentConfig) -> None:
    rng = random.Random(20261124)
    workers = [Worker(i, config.socket, random.Random(rng.random())) for i in range(CLIENTS)]
    agent = AgentProcess(config)
    total_acknowledged = 0
    for _round in range(ROUNDS):
        agent.start()
        stop = threading.Event()
        threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
        for thread in threads:
            thread.start()
        threading.Event().wait(rng.uniform(0.05, 0.4))  # let the load run for a while
        agent.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        agent.start()
        for worker in workers:
            check_recovered(worker, config.socket)
        agent.kill()
        total_acknowledged = sum(len(w.acknowledged) for w in workers)
    assert total_acknowledged > ROUNDS * CLIENTS, "the load never got going"


def test_a_waiting_start_survives_an_agent_restart(agent_process: AgentProcess) -> None:
    socket = agent_process.config.socket
    with Client(socket) as client:
        client.want("app", "db")
    waiter = spawn_cli("sync", "start", "app", "--timeout", "60s", socket=socket)
    assert waiter.stderr is not None
    assert waiter.stderr.readline().strip() == "app: waiting for db"
    agent_process.kill()  # SIGKILL: no goodbye
    assert "agent unreachable, reconnecting" in waiter.stderr.readline()
    agent_process.start()
    with Client(socket) as client:
        client.start("db")
        client.complete("db")
    _out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert "app: started" in err
    with Client(socket) as client:
        [app] = client.status("app")
    assert app.status == "started"


def test_a_graceful_restart_tells_the_waiter_and_it_carries_on(
    agent_process: AgentProcess,
) -> None:
    socket = agent_process.config.socket
    with Client(socket) as client:
        client.want("app", "db")
    waiter = spawn_cli("sync", "start", "app", "--timeout", "60s", socket=socket)
    assert waiter.stderr is not None
    waiter.stderr.readline()
    code, log = agent_process.stop(signal.SIGTERM)
    assert code == 0, log
    assert "shutting down" in waiter.stderr.readline()
    agent_process.start()
    with Client(socket) as client:
        client.start("db")
        client.complete("db")
    assert waiter.wait(timeout=30) == 0


def test_a_waiter_gives_up_at_its_timeout_while_no_agent_answers(
    agent_process: AgentProcess,
) -> None:
    socket = agent_process.config.socket
    with Client(socket) as client:
        client.want("app", "db")
    waiter = spawn_cli("sync", "start", "app", "--timeout", "2s", socket=socket)
    assert waiter.stderr is not None
    waiter.stderr.readline()
    agent_process.kill()
    try:
        _out, err = waiter.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        waiter.kill()
        raise
    assert waiter.returncode == 5
    assert "timed out after 2s" in err


def test_a_kill_between_the_boot_changes_write_and_its_fsync_begins_the_boot_once(
    config: AgentConfig,
) -> None:
    """A workspace restart is one journal entry: a crash around it never resets twice (or
    half), and the next start in the same boot finds it done or does it, exactly once."""
    agent = AgentProcess(config, extra=("--boot-id", "boot-A")).start()
    s = config.socket
    with Client(s) as client:
        client.want("app", "db")
        client.start("db")
        client.complete("db")
        client.start("app")
    agent.stop()
    agent.extra = ("--boot-id", "boot-B")
    agent.env = {"UNITSYNC_TEST_KILL_AT": "entry-written"}
    agent.start()  # killed by itself, before any client is served
    assert agent.proc is not None and agent.proc.wait(timeout=30) == -signal.SIGKILL
    agent.env = None
    for _ in range(2):  # the next start in boot B, then an agent restart within it
        agent.start()
        with Client(s) as client:
            state = client.state()
        assert state.boot == 2
        restarted = {
            view.name: [t.reason for t in view.history].count("workspace restarted")
            for view in state.units
        }
        assert restarted == {"app": 1, "db": 1}
        assert {view.status for view in state.units} == {"pending"}
        agent.stop()
