"""What clients were told, checked against what etcd itself holds (a Jepsen-style checker).

A workload records every client operation (`Op`): what it asked, when it was invoked and
answered (the machine's clock, which the agents' records use too) and what it was told:

- `ok`: acknowledged; `changed` says whether the reply said it changed something
  ("db completed", not "db was already completed"); a start ended by a failed
  dependency is acknowledged too (its unit was failed, committed, before the answer);
- `maybe`: the answer says it may or may not have been made (etcd stopped answering), or
  no answer came (the connection broke, the client gave up waiting);
- `unchanged`: refused, or not made and the answer says so ("nothing was changed", no
  agent listening).

etcd's own history is the list of change keys the agents wrote under the prefix, read from
revision 1 (`read_changes`): each txn's changes in etcd's order, each change its records.
`check` replays it through a model of the state machine and matches its effects (moves and
edges) to the operations, and returns every anomaly:

- `early start`: a unit started while one of its dependencies was not completed, in
  etcd's order (or a move the state machine does not allow: `invalid move`);
- `lost`: an acknowledged change with no effect in etcd;
- `twice`: an effect no operation can account for (one applied twice, or invented);
- `maybe twice`: an operation told "may have been made" with more than one effect;
- `unchanged changed`: an operation told nothing was changed, whose effect is in etcd;
- `real time`: an operation acknowledged before another was invoked whose effect etcd
  ordered first (an acknowledgement sent before the change was committed);
- `diverged`: the final state an agent (or etcd's unit keys) shows is not the replay's.

Effects are tied to operations exactly where the records allow (a start's token, a
fail's reason, unique per operation), otherwise by unit and time: a record's `at` (when
the agent decided it) falls between the operation's invocation and its answer (for a
`maybe`, any time after its invocation: as in Jepsen, an operation with no definite
answer may take effect later). Matching is a maximum bipartite matching, so an anomaly is
reported only if no assignment of effects to operations explains the history.

A start that ended because a dependency failed may share its effect with another start
of the same unit that failed the same way at the same time (the agent records it once):
it needs such an effect within its own time, not one of its own.

`check` is pure; `read_changes` and `read_units` read etcd (through the agents' own
etcd client) and raise what it raises (`EtcdCompacted` if the history is gone: the
agents compact it after ten minutes of life).
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from unitsync.agent.core.machine import MOVES, Go, Refuse
from unitsync.agent.core.records import Edge, Move, Record
from unitsync.agent.store.etcd.batches import decode_changes
from unitsync.agent.store.etcd.client import EtcdClient
from unitsync.agent.store.etcd.messages import (
    RangeRequest,
    WatchCreateRequest,
    WatchResponse,
    prefix_end,
)
from unitsync.agent.store.etcd.store import unit_image

OK, MAYBE, UNCHANGED = "ok", "maybe", "unchanged"
KINDS = ("want", "start", "complete", "fail", "reset")


@dataclass
class Op:
    """One client operation, as the client saw it."""

    writer: int
    agent: int
    kind: str
    unit: str
    invoked: float
    answered: float = math.inf
    outcome: str = ""
    changed: bool = False
    """For `ok`: the reply says it changed something."""
    dep: str = ""
    """`want`'s dependency."""
    reason: str = ""
    """`fail`'s reason: unique to the operation."""
    token: str = ""
    """`start`'s token (every retry of it sends the same)."""
    dependency_failed: bool = False
    """A `start` that ended because a dependency failed (and failed its unit)."""
    detail: str = ""
    """What the client was told, for reports."""

    def __str__(self) -> str:
        what = {"want": self.dep, "fail": self.reason, "start": self.token}.get(self.kind, "")
        return (
            f"writer {self.writer} on agent {self.agent}: {self.kind} {self.unit} {what}"
            f" [{self.invoked:.3f}, {self.answered:.3f}] -> {self.outcome}"
            f"{' (changed)' if self.changed else ''} {self.detail}".rstrip()
        )


@dataclass(frozen=True, order=True)
class Position:
    """Where a record is in etcd's order."""

    revision: int
    change: int
    """The change's place among its txn's changes."""
    record: int


@dataclass(frozen=True)
class Effect:
    position: Position
    record: Move | Edge

    def __str__(self) -> str:
        r = self.record
        if isinstance(r, Edge):
            return f"edge {r.unit} -> {r.dep} at revision {self.position.revision}"
        said = r.reason or r.token
        return f"{r.unit} -> {r.to} ({said}) at {r.at:.3f}, revision {self.position.revision}"


@dataclass(frozen=True)
class Anomaly:
    kind: str
    message: str


@dataclass
class _Slot:
    """An operation that may (or must) account for effects of one kind."""

    op: Op
    required: bool
    effects: list[Effect] = field(default_factory=list)


def effects_of(changes: Iterable[tuple[int, list[list[Record]]]]) -> list[Effect]:
    """The moves and edges of etcd's history (revision, each change's records), in order."""
    found = []
    for revision, txn in changes:
        for c, records in enumerate(txn):
            for i, record in enumerate(records):
                if isinstance(record, Move | Edge):
                    found.append(Effect(Position(revision, c, i), record))
    return sorted(found, key=lambda effect: effect.position)


def check(
    ops: Sequence[Op],
    changes: Iterable[tuple[int, list[list[Record]]]],
    finals: dict[str, dict[str, str]] | None = None,
) -> list[Anomaly]:
    """Every anomaly of `ops` against etcd's history `changes`; `finals`: the final status
    of each unit as each observer (an agent, etcd's unit keys) shows it, by observer."""
    history = effects_of(changes)
    anomalies = _replay(history, finals or {})
    matched = _match(ops, history, anomalies)
    anomalies += _real_time(matched)
    return anomalies


# --- the replay: etcd's order through the state machine ----------------------------------------


def _replay(history: list[Effect], finals: dict[str, dict[str, str]]) -> list[Anomaly]:
    anomalies = []
    status: dict[str, str] = defaultdict(lambda: "pending")
    deps: dict[str, set[str]] = defaultdict(set)
    for effect in history:
        record = effect.record
        if isinstance(record, Edge):
            deps[record.unit].add(record.dep)
            continue
        if not _allowed(status[record.unit], record.to):
            anomalies.append(
                Anomaly("invalid move", f"{record.unit} {status[record.unit]} -> {effect}")
            )
        if record.to == "started":
            waiting = sorted(d for d in deps[record.unit] if status[d] != "completed")
            if waiting:
                states = ", ".join(f"{d} {status[d]}" for d in waiting)
                anomalies.append(Anomaly("early start", f"{effect} while {states}"))
        status[record.unit] = record.to
    for observer, shown in finals.items():
        expected = {unit: status[unit] for unit in shown}
        if shown != expected or set(status) - set(shown):
            wrong = {u: (shown.get(u), status[u]) for u in set(shown) | set(status)}
            wrong = {u: pair for u, pair in wrong.items() if pair[0] != pair[1]}
            anomalies.append(
                Anomaly("diverged", f"{observer} shows (shown, replayed): {sorted(wrong.items())}")
            )
    return anomalies


def _allowed(source: str, target: str) -> bool:
    for (state, _command), outcome in MOVES.items():
        then = outcome.then if isinstance(outcome, Refuse) else outcome
        if state == source and isinstance(then, Go) and then.to == target:
            return True
    return False


# --- matching effects to operations ------------------------------------------------------------


def _match(
    ops: Sequence[Op], history: list[Effect], anomalies: list[Anomaly]
) -> list[tuple[Op, Effect]]:
    """Tie each effect to an operation; report what cannot be; the (acknowledged op, its
    effect) pairs, for the real-time check."""
    by_token = {op.token: op for op in ops if op.kind == "start" and op.token}
    by_reason = {op.reason: op for op in ops if op.kind == "fail" and op.reason}
    exact: dict[int, _Slot] = {}
    groups: dict[tuple[str, str, str], list[Effect]] = defaultdict(list)
    for effect in history:
        record = effect.record
        owner = None
        if isinstance(record, Edge):
            groups[("want", record.unit, record.dep)].append(effect)
            continue
        if record.to == "started":
            owner = by_token.get(record.token)
        elif record.to == "failed" and record.reason in by_reason:
            owner = by_reason[record.reason]
        elif record.to == "failed" and _dependency_failed(record.reason):
            groups[("dependency failed", record.unit, "")].append(effect)
            continue
        elif record.to == "completed":
            groups[("complete", record.unit, "")].append(effect)
            continue
        elif record.to == "pending" and record.reason == "reset":
            groups[("reset", record.unit, "")].append(effect)
            continue
        if owner is None:
            anomalies.append(Anomaly("twice", f"{effect}: made by no operation"))
            continue
        slot = exact.setdefault(id(owner), _Slot(owner, _required(owner)))
        slot.effects.append(effect)
    matched = []
    for op in ops:
        if op.kind == "fail" or (op.kind == "start" and not op.dependency_failed):
            slot = exact.get(id(op), _Slot(op, _required(op)))
            matched += _judge(slot, anomalies)
    for op in ops:  # acknowledged changes without an identity, whether or not etcd has them
        if _required(op) and op.kind in ("want", "complete", "reset"):
            groups.setdefault((op.kind, op.unit, op.dep if op.kind == "want" else ""), [])
        elif op.outcome == OK and op.dependency_failed:
            groups.setdefault(("dependency failed", op.unit, ""), [])
    for (kind, unit, dep), effects in groups.items():
        candidates = [op for op in ops if _may_make(op, kind, unit, dep)]
        _by_time(kind, candidates, effects, anomalies, timed=kind != "want")
    return matched


def _dependency_failed(reason: str) -> bool:
    return reason.startswith("dependency ") and reason.endswith(" failed")


def _required(op: Op) -> bool:
    """The operation must have exactly one effect (it was acknowledged as a change)."""
    if op.outcome != OK or op.dependency_failed:
        return False
    if op.kind in ("fail", "start"):
        return True
    return op.changed


def _until(op: Op) -> float:
    """The latest an operation's effect may be decided: its answer, if it had one."""
    return op.answered if op.outcome != MAYBE else math.inf


def _may_make(op: Op, kind: str, unit: str, dep: str) -> bool:
    """Could `op` have made an effect of this group?"""
    if op.unit != unit or op.outcome not in (OK, MAYBE, UNCHANGED):
        return False
    if kind == "want":
        return op.kind == "want" and op.dep == dep
    if kind == "dependency failed":
        return op.kind == "start" and (op.dependency_failed or op.outcome != OK)
    return op.kind == kind


def _told_unchanged(op: Op) -> bool:
    return op.outcome == UNCHANGED or (
        op.outcome == OK and not _required(op) and not op.dependency_failed
    )


def _judge(slot: _Slot, anomalies: list[Anomaly]) -> list[tuple[Op, Effect]]:
    """Judge an operation whose effects are known exactly (by token, by reason); the
    (operation, effect) pair if it was acknowledged, for the real-time check."""
    op, count = slot.op, len(slot.effects)
    made = ", ".join(map(str, slot.effects))
    if op.outcome == UNCHANGED and count:
        anomalies.append(Anomaly("unchanged changed", f"{op}: told unchanged, made {made}"))
    elif op.outcome == MAYBE and count > 1:
        anomalies.append(Anomaly("maybe twice", f"{op}: made {count} times: {made}"))
    elif slot.required and count == 0:
        anomalies.append(Anomaly("lost", f"{op}: acknowledged, not in etcd"))
    elif op.outcome == OK and count > 1:
        anomalies.append(Anomaly("twice", f"{op}: made {count} times: {made}"))
    elif op.outcome == OK and not slot.required and count:
        anomalies.append(Anomaly("twice", f"{op}: told nothing changed, made {made}"))
    return [(op, effect) for effect in slot.effects[:1] if op.outcome == OK]


def _by_time(
    kind: str, ops: list[Op], effects: list[Effect], anomalies: list[Anomaly], *, timed: bool
) -> None:
    """Match effects without an identity to operations: each op at most one effect (an
    acknowledged change exactly one; one told unchanged none), an effect's time within its
    op's (edges have no time: an edge is added once, by whichever `want` said so)."""
    able = [op for op in ops if not _told_unchanged(op)]

    def fits(op: Op, effect: Effect) -> bool:
        if not timed:
            return True
        at = effect.record.at  # type: ignore[union-attr]
        return op.invoked <= at <= _until(op)

    edges = {i: [j for j, op in enumerate(able) if fits(op, e)] for i, e in enumerate(effects)}
    # Every effect needs an op, and every acknowledged change an effect: by Mendelsohn-
    # Dulmage, both hold at once if each holds alone, so two maximum matchings tell.
    effect_of = _maximum_matching(edges)
    unexplained = [effects[i] for i in edges if i not in effect_of.values()]
    required = [j for j, op in enumerate(able) if _required(op)]
    ops_side = _maximum_matching({j: [i for i in edges if j in edges[i]] for j in required})
    for effect in unexplained:
        others = [op for op in ops if _told_unchanged(op) and fits(op, effect)]
        if others:
            anomalies.append(
                Anomaly("unchanged changed", f"{effect}: only {others[0]} could have made it")
            )
        else:
            maybes = [op for op in ops if op.outcome == MAYBE and fits(op, effect)]
            kind_found = "maybe twice" if maybes else "twice"
            anomalies.append(Anomaly(kind_found, f"{effect}: made by no operation left ({kind})"))
    covered = set(ops_side.values())
    for j in required:
        if j not in covered:
            anomalies.append(Anomaly("lost", f"{able[j]}: acknowledged, not in etcd"))
    for op in ops:  # a failed dependency: its unit failed so within its time, by it or not
        if op.dependency_failed and op.outcome == OK and not any(fits(op, e) for e in effects):
            anomalies.append(Anomaly("lost", f"{op}: acknowledged, not in etcd"))


def _maximum_matching(edges: dict[int, list[int]]) -> dict[int, int]:
    """A maximum matching (Kuhn's augmenting paths) of `edges`, left -> the rights it may
    take: {right: its left}."""
    owner: dict[int, int] = {}

    def augment(left: int, seen: set[int]) -> bool:
        for r in edges[left]:
            if r in seen:
                continue
            seen.add(r)
            if r not in owner or augment(owner[r], seen):
                owner[r] = left
                return True
        return False

    for left in edges:
        augment(left, set())
    return owner


# --- real time ---------------------------------------------------------------------------------


def _real_time(matched: list[tuple[Op, Effect]]) -> list[Anomaly]:
    """An operation acknowledged before another was invoked must come first in etcd (the
    operations whose effects are known exactly: starts by token, fails by reason)."""
    anomalies = []
    answered = sorted(matched, key=lambda pair: pair[0].answered)
    times = [op.answered for op, _ in answered]
    latest: list[tuple[Position, Op]] = []
    """By answer time: the furthest position in etcd of any op answered so far."""
    for op, effect in answered:
        if not latest or effect.position > latest[-1][0]:
            latest.append((effect.position, op))
        else:
            latest.append(latest[-1])
    for op, effect in matched:
        before = bisect.bisect_left(times, op.invoked)  # answered strictly before op began
        if before and latest[before - 1][0] > effect.position:
            earlier = latest[before - 1][1]
            anomalies.append(
                Anomaly(
                    "real time",
                    f"{op} ({effect}) was ordered before {earlier}, which was acknowledged "
                    "before it was invoked",
                )
            )
    return anomalies


# --- etcd's own history ------------------------------------------------------------------------


class _Read(Exception):
    """The watch brought everything up to the last change."""


async def read_changes(client: EtcdClient, prefix: str) -> list[tuple[int, list[list[Record]]]]:
    """Every txn of changes ever written under PREFIX/changes/ (revision, its changes), in
    etcd's order: watched from revision 1 up to PREFIX/latest's, which every txn rewrites
    (change keys themselves expire with their lease, and a deleted key is no news)."""
    root = f"{prefix}/changes/".encode()
    latest = await client.range(RangeRequest(f"{prefix}/latest".encode()))
    if not latest.kvs:
        return []
    last = latest.kvs[0].mod_revision
    found: list[tuple[int, list[list[Record]]]] = []

    def take(response: WatchResponse) -> None:
        for event in response.events:
            found.append((event.kv.mod_revision, decode_changes(event.kv.value)))
        if found and found[-1][0] >= last:
            raise _Read

    request = WatchCreateRequest(root, prefix_end(root), 1, filters=["NODELETE"])
    with contextlib.suppress(_Read):
        await client.watch(request, take, silence=60)
    return found


async def read_units(client: EtcdClient, prefix: str) -> dict[str, str]:
    """Each unit's status as its key under PREFIX/units/ holds it."""
    root = f"{prefix}/units/".encode()
    reply = await client.range(RangeRequest(root, prefix_end(root)))
    return {(image := unit_image(kv.value)).name: image.status for kv in reply.kvs}
