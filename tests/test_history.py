"""A randomized workload under random partitions, heals and kills, checked against etcd's own
history (SPEC §10; `harness/history.py` says what is checked, `harness/nemesis.py` what
is done to the hosts).

Six writers on three agents (two each) send want / start / complete / fail / reset to
random units, each operation recorded with its invocation and answer times and what it
was told, while the nemesis takes `EVENTS` steps. Then everything is healed, the agents
must agree, and the history must check out.

CI runs a short seeded run; the long one (200 steps, a few minutes):

    UNITSYNC_PARTITION_EVENTS=200 python -m pytest -q -s tests/test_history.py

and `UNITSYNC_PARTITION_SEED=N` repeats one seed (a failure names its seed).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgspec
import trio

from unitsync.client import AsyncClient
from unitsync.wire.errors import (
    AgentGone,
    AgentUnavailable,
    DependencyFailed,
    NotDurable,
    Refused,
)
from unitsync.wire.protocol import Start, Started

from harness.etcd_cluster import agreed
from harness.history import MAYBE, OK, UNCHANGED, Op, check, read_changes, read_units
from harness.hosts import PREFIX, Workspace
from harness.nemesis import Nemesis

EVENTS = int(os.environ.get("UNITSYNC_PARTITION_EVENTS", "24"))
SEED = int(os.environ.get("UNITSYNC_PARTITION_SEED", "27"))
WRITERS = 6
UNITS = [f"u{i}" for i in range(8)]
"""A unit wants only units before it: no cycle, so `want` is refused only by a fault."""
WEIGHTS = {"want": 1, "start": 3, "complete": 3, "fail": 1.5, "reset": 2}
ETCD_TIMEOUT = 2.0
"""--etcd-timeout of the agents: changes fail soon, so the writers keep moving."""
START_WAIT = 3.0
"""A writer gives up waiting in a `start` after this long (the op is then "maybe")."""
OP_LIMIT = 20.0
"""A writer gives up on any other operation after this long (its agent may be stopped)."""
PAUSE = (0.2, 1.5)
"""Seconds between two nemesis steps, at random."""
QUIET = 2.0
"""After the last heal, the writers go on this long with no fault at all."""


class RecordingClient(AsyncClient):
    """The trio client, remembering the token of the last `start` it sent (a start asked
    on a connection is sent by `_wait_started`, first thing)."""

    token = ""

    async def _wait_started(self, conn: object, request: Start, *rest: object) -> Started:
        self.token = request.token
        return await super()._wait_started(conn, request, *rest)  # type: ignore[arg-type]


@dataclass
class Writer:
    """One script after another on one host: a connection of its own for each operation,
    as each `unitsync sync ...` command has. (A connection reused across operations hides
    an agent killed after it made a change: the client's reconnect-once rule takes the
    closed connection for an idle one and reports "no agent is listening", nothing done.
    This checker found that; it is reported, and left to the client's owners.)"""

    me: int
    agent: int
    socket: Path
    rng: random.Random
    ops: list[Op]

    async def run(self, stop: trio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            kind = self.rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
            unit = self.rng.choice(UNITS)
            op = Op(self.me, self.agent, kind, unit, time.time())
            self.ops.append(op)
            await self._do(op, n)
            op.answered = time.time()
            await trio.sleep(self.rng.uniform(0, 0.05))

    async def _do(self, op: Op, n: int) -> None:
        client, rng = RecordingClient(self.socket), self.rng
        try:
            with trio.move_on_after(START_WAIT if op.kind == "start" else OP_LIMIT) as waited:
                match op.kind:
                    case "want":
                        op.dep = rng.choice(UNITS[: UNITS.index(op.unit)] or ["u-base"])
                        reply = await client.want(op.unit, op.dep)
                        op.changed = "now wants" in reply.message
                    case "start":
                        await client.start(op.unit, rerun=rng.random() < 0.5)
                    case "complete":
                        reply = await client.complete(op.unit, force=rng.random() < 0.3)
                        op.changed = reply.message == f"{op.unit} completed"
                    case "fail":
                        op.reason = f"w{self.me}-{n}"
                        await client.fail(op.unit, op.reason, force=rng.random() < 0.5)
                    case "reset":
                        reply = await client.reset(op.unit)
                        op.changed = reply.message.endswith("(1 changed)")
            op.outcome, op.detail = (
                (MAYBE, "no answer in time")
                if waited.cancelled_caught
                else (
                    OK,
                    "",
                )
            )
        except DependencyFailed as exc:
            op.outcome, op.dependency_failed, op.detail = OK, True, str(exc)
        except NotDurable as exc:
            maybe = "may or may not have been made" in str(exc)
            op.outcome, op.detail = (MAYBE if maybe else UNCHANGED), str(exc)
        except AgentGone as exc:  # sent, and the connection broke
            op.outcome, op.detail = MAYBE, str(exc)
        except (AgentUnavailable, Refused) as exc:  # nothing sent, or refused
            op.outcome, op.detail = UNCHANGED, str(exc)
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
        op.token = client.token
        if op.kind == "start" and not op.token:  # never sent
            op.outcome = UNCHANGED


def test_random_partitions_heals_and_kills_lose_nothing_and_apply_nothing_twice(
    hosts: object, tmp_path: Path
) -> None:
    ws: Workspace = hosts(agent_options=["--etcd-timeout", f"{ETCD_TIMEOUT:g}s"])  # type: ignore[operator]
    rng = random.Random(SEED)
    nemesis = Nemesis(ws, random.Random(rng.random()))
    ops: list[Op] = []
    began = time.monotonic()

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for me in range(WRITERS):
                agent = me % len(ws.agents)
                socket = ws.agents[agent].socket
                writer = Writer(me, agent, socket, random.Random(rng.random()), ops)
                nursery.start_soon(writer.run, stop)
            for _ in range(EVENTS):
                await trio.sleep(nemesis.rng.uniform(*PAUSE))
                await trio.to_thread.run_sync(nemesis.step)
            await trio.to_thread.run_sync(nemesis.heal)
            await trio.to_thread.run_sync(ws.wait_healthy)
            await trio.sleep(QUIET)
            stop.set()

    trio.run(main)
    for agent in ws.agents:  # every agent back and serving (a killed one listed again)
        agent.start() if agent.proc is None or agent.proc.poll() is not None else None
    shown = agreed(*ws.agents)
    changes = ws.observe(lambda client: read_changes(client, PREFIX))
    stored = ws.observe(lambda client: read_units(client, PREFIX))
    finals = {"etcd's unit keys": stored, "the agents": {u: s[0] for u, s in shown.items()}}
    anomalies = check(ops, changes, finals)
    outcomes = Counter(op.outcome for op in ops)
    summary = (
        f"seed {SEED}: {EVENTS} nemesis steps ({Counter(nemesis.done).most_common(3)}...), "
        f"{len(ops)} operations ({dict(outcomes)}), {len(changes)} txns in etcd, "
        f"{sum(len(txn) for _rev, txn in changes)} changes, {time.monotonic() - began:.0f} s"
    )
    print(summary)
    if anomalies:  # keep everything, for a look (and the checker's own tests)
        kept = tmp_path / f"history-seed-{SEED}.json"
        kept.write_bytes(msgspec.json.encode({"ops": ops, "changes": changes, "finals": finals}))
        summary += f"; the history is in {kept}"
    assert anomalies == [], f"{summary}\n" + "\n".join(
        f"{a.kind}: {a.message}" for a in anomalies[:20]
    )
    assert outcomes[OK] > len(ops) / 4  # the workload did get through
    assert outcomes[MAYBE] + outcomes[UNCHANGED] > 0  # and the faults did bite
