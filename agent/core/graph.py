"""The unit graph: plain Python, no I/O, no trio.

Commands (`want`, `admit`, `start`, `complete`, `fail`, `reset`, ...) look up what they
may do in the state machine's table (`machine.MOVES`) and decide: they raise `Refused`
when they must, and otherwise return the records the change is made of. They never change
the graph. `apply` is the only place that does, and only the store that owns the graph
calls it (`agent/store/base.py`): the journal as it appends a decision's records, etcd as
its watch brings them, a replay as it reads them. So replaying a journal, serving a live
request and following another agent's change go through exactly the same code.

A command's arguments past the unit (and its deps or reason) are keyword-only, so a call
reads as what it does: `graph.complete(name, now=t, force=True)`.
"""

from __future__ import annotations

import shlex
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from unitsync.wire.bounds import (
    HISTORY_LIMIT,
    MAX_DEPS,
    NAMES_IN_A_MESSAGE,
    check_name,
    check_reason,
    listed,
    too_many_deps,
)
from unitsync.wire.errors import Refused
from unitsync.wire.timefmt import timestamp

from .machine import (
    COMPLETE,
    DEFAULT_CONDITION,
    FAIL,
    FORCED_RESET_REASON,
    FORGET,
    NEEDS,
    OWNER_GONE,
    RESET,
    RESTARTING,
    START,
    START_ONCE,
    STOPPED,
    Command,
    Condition,
    DepState,
    Drop,
    Go,
    Refuse,
    State,
    Stay,
    Verdict,
    dep_state,
    ever_started,
    outcome,
    owner_facts,
)
from .records import (
    Asked,
    Boot,
    BootImage,
    Edge,
    Forget,
    HistoryEntry,
    Known,
    Move,
    Once,
    OwnerRecord,
    Reason,
    Record,
    UnitImage,
)

WORKSPACE_RESTARTED = "workspace restarted"
"""The reason every unit gets when a new boot puts it back to pending (SPEC §7)."""
FORGOTTEN_KEPT = 1_000
"""Forgotten names remembered (with when): enough for the typos of a session, bounded so
that a script forgetting names in a loop costs nothing lasting."""

WENT_AHEAD = "went ahead although"
"""Begins the reason of a start that went ahead on failed dependencies (`went_ahead`)."""

OwnerAlive = Callable[[str], "bool | None"]
"""Does the owner recorded for a unit's current run still run (None: this agent cannot
tell)? Only the agent's shell can look (at /proc, at `run` connections); asked only of
units that have an owner."""


def _owners_run(_name: str) -> bool | None:
    """Without a shell to ask: every recorded owner counts as running (nothing is taken)."""
    return True


@dataclass(eq=False)
class Unit:
    name: str
    since: float
    status: State = "pending"
    reason: str = ""
    token: str = ""
    """The token of the current run: that of the `start` that began it. A report carrying
    another token is a superseded run's; so is every report once the unit is pending (it
    has no run then: the token left is its last run's)."""
    deps: dict[str, Condition] = field(default_factory=dict)
    """Units this one wants, in declaration order, each with what it needs of it."""
    dependents: set[str] = field(default_factory=set)
    history: deque[HistoryEntry] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))
    once: bool = False
    """A one-time unit: once completed, a workspace restart leaves it completed."""
    owner: OwnerRecord | None = None
    """The process that owns the current run (see records.Move.owner)."""
    host: str = ""
    """The host whose agent started its latest run."""
    restarts: int = 0
    """How many times the current run started its command again (restart policy, `sync
    restart`): a move to started with the current run's token; a new run counts from 0."""


@dataclass(frozen=True)
class Readiness:
    pending: tuple[str, ...] = ()
    """Dependencies whose condition is not met yet (the start waits for them)."""
    failed: str | None = None
    """A dependency whose failure fails the start (`machine.NEEDS`: the cascade)."""
    failed_anyway: tuple[str, ...] = ()
    """Failed dependencies the start goes ahead without (soft `finished` edges, `started`
    edges whose dependency had started): a ready unit's start says so."""

    @property
    def ready(self) -> bool:
        return not self.pending and self.failed is None


class Graph:
    def __init__(self) -> None:
        self.units: dict[str, Unit] = {}
        self.boot = 0
        """The current boot (1, 2, ...); 0 until the first `Boot` record."""
        self.boot_identity = ""
        self.boot_since = 0.0
        self.forgotten: dict[str, float] = {}
        """When each of the latest FORGOTTEN_KEPT forgotten names was forgotten, so that a
        refusal can say so; memory only (a compaction or a restart may lose it)."""

    # --- the one mutation path ------------------------------------------------------------

    def apply(self, record: Record) -> None:
        # Dispatch on the exact type: replay runs this a million times at start-up.
        kind = type(record)
        if kind is Move:
            unit = self.units[record.unit]
            boot = record.boot or self.boot or 1
            restarted = record.to == "started" and _restarted(unit, record)
            unit.history.append(
                HistoryEntry(
                    record.at, unit.status, record.to, record.reason, record.waited, boot, restarted
                )
            )
            unit.status, unit.since, unit.reason = record.to, record.at, record.reason
            unit.owner = record.owner
            if record.to == "started":
                unit.token, unit.host = record.token, record.host
                unit.restarts = unit.restarts + 1 if restarted else 0
        elif kind is Edge:
            self.units[record.unit].deps[record.dep] = record.on
            self.units[record.dep].dependents.add(record.unit)
        elif kind is Forget:
            for dep in self.units.pop(record.unit).deps:
                self.units[dep].dependents.discard(record.unit)
            self._remember_forgotten(record.unit, record.at)
        elif kind is Reason:
            self.units[record.unit].reason = record.text
        elif kind is Once:
            self.units[record.unit].once = True
        elif kind is Boot:
            self._begin(record)
        elif kind is Asked:
            pass  # an order for the run's `run`, relayed by the store: no state of the graph
        elif record.unit not in self.units:  # Known
            self.units[record.unit] = Unit(record.unit, since=record.at)
            if self.forgotten:
                self.forgotten.pop(record.unit, None)

    def _remember_forgotten(self, name: str, at: float) -> None:
        self.forgotten.pop(name, None)
        self.forgotten[name] = at
        if len(self.forgotten) > FORGOTTEN_KEPT:
            del self.forgotten[next(iter(self.forgotten))]

    def unknown(self, name: str) -> str:
        """Why `name` is not known, as a refusal says it: forgotten (when), if remembered."""
        return unknown_because(name, self.forgotten.get(name))

    def _begin(self, boot: Boot) -> None:
        """A new boot; after a workspace restart every unit starts over but completed
        one-time units (edges and history are kept)."""
        self.boot, self.boot_identity, self.boot_since = boot.number, boot.identity, boot.at
        if not boot.restart:
            return
        for unit in self.units.values():
            if unit.status == "pending" or (unit.once and unit.status == "completed"):
                continue
            unit.history.append(
                HistoryEntry(
                    boot.at, unit.status, "pending", WORKSPACE_RESTARTED, None, boot.number
                )
            )
            unit.status, unit.since, unit.reason, unit.owner = (
                "pending",
                boot.at,
                WORKSPACE_RESTARTED,
                None,
            )

    # --- commands ------------------------------------------------------------------------

    def begin_boot(self, identity: str, *, now: float) -> list[Record]:
        """At agent start-up: the records that begin boot `identity`, if it is a new one.

        The first boot of a state dir (or of one written before boots were recorded)
        resets nothing: it may as well be an agent restart, and forgetting acknowledged
        completions is worse than keeping one too many.
        """
        if self.boot and identity == self.boot_identity:
            return []
        return [Boot(self.boot + 1, identity, now, restart=self.boot > 0)]

    def restart_host(self, host: str, *, now: float) -> list[Record]:
        """A workspace restart of one host of a shared graph: its units start over.

        A host's units are those whose latest run its agent started; completed one-time
        units stay completed, and the units of other hosts are not touched (SPEC §10).
        """
        return [
            Move(name, "pending", now, WORKSPACE_RESTARTED, boot=self.boot)
            for name, unit in self.units.items()
            if unit.host == host
            and unit.status != "pending"
            and not (unit.once and unit.status == "completed")
        ]

    def want(
        self,
        name: str,
        deps: Iterable[str],
        *,
        now: float,
        once: bool = False,
        on: Condition | None = None,
    ) -> tuple[list[Record], list[str]]:
        """Declare that `name` depends on each of `deps`, on `on` (and is one-time); all or
        nothing. A new edge is on `on` (`completed` if None). An edge that exists with
        another condition changes to `on` (a note says so); with `on` None, or `on` already,
        it is left as it is: a script that declares its edges at every start, without
        `--on`, never undoes a condition another one set."""
        deps = list(dict.fromkeys(deps))
        if not deps:
            raise Refused("want needs at least one dependency", unit=name)
        for each in (name, *deps):
            self._check_new(each)
        if name in deps:
            raise Refused(f"unit {name!r} cannot depend on itself", unit=name)
        have = self.units[name].deps if name in self.units else {}
        new_edges = [dep for dep in deps if dep not in have]
        changed = [dep for dep in deps if dep in have and on is not None and have[dep] != on]
        total = len(new_edges) + len(have)
        if new_edges and total > MAX_DEPS:
            raise Refused(too_many_deps(name, total), unit=name)
        for dep in new_edges:  # a changed edge orders as it did: it cannot close a cycle
            cycle = self._path(dep, name)
            if cycle:
                path = _path_text([name, *cycle])
                raise Refused(f"dependency would close a cycle: {path}", code="cycle", unit=name)
        records: list[Record] = [Known(n, now) for n in (name, *new_edges) if n not in self.units]
        records += [Edge(name, dep, on or DEFAULT_CONDITION) for dep in new_edges + changed]
        if once and not (name in self.units and self.units[name].once):
            records.append(Once(name))
        notes = [f"{name} now wants {dep} on {on} (was {have[dep]})" for dep in changed]
        unit = self.units.get(name)
        if (new_edges or changed) and unit is not None and unit.status != "pending":
            what = "the new dependencies apply" if new_edges else "the change applies"
            notes.append(f"{name} is already {unit.status}; {what} to its next start")
        return records, notes

    def declare_once(self, name: str) -> list[Record]:
        """`--once` given for a unit already known: it is one-time from now on, whatever the
        start then decides. So a unit completed before it was called one-time is refused as
        done (exit 7) and stays completed across workspace restarts, as the refusal says."""
        return self._marked_once(name, True) if name in self.units else []

    def admit(
        self,
        name: str,
        *,
        now: float,
        rerun: bool = False,
        once: bool = False,
        owner_alive: bool | None = True,
    ) -> list[Record]:
        """First step of `start`: register the unit (one-time, if `once`), and refuse a second
        concurrent run early. `owner_alive`: does the current run's owner, if one is
        recorded, still run (None: the agent cannot tell)?"""
        command = START_ONCE if once else START
        overrides = self._start_overrides(name, rerun, owner_alive)
        self._decide(name, command, overrides, owner_alive)
        return self._known(name, now) + self._marked_once(name, once)

    def start(
        self,
        name: str,
        *,
        now: float,
        token: str = "",
        waited: float | None = None,
        rerun: bool = False,
        once: bool = False,
        owner: OwnerRecord | None = None,
        owner_alive: bool | None = True,
        host: str = "",
    ) -> list[Record]:
        """Last step of `start`, once the unit is ready; decided afresh, as another start
        may have begun a run while this one waited. `token` names the new run, `waited`
        says how long its start waited; `host`: the deciding agent's host."""
        readiness = self.readiness(name)
        if not readiness.ready:
            raise AssertionError(f"start of {name!r} before it is ready: {readiness}")
        command = START_ONCE if once else START
        overrides = self._start_overrides(name, rerun, owner_alive)
        result = self._decide(name, command, overrides, owner_alive)
        unit = self.units.get(name)
        reason = None
        if unit and unit.owner and OWNER_GONE in overrides and not rerun:
            reason = f"new run: its previous owner, {_describe(unit.owner)}, is gone"
        elif readiness.failed_anyway:  # the history keeps what it went ahead without
            reason = went_ahead(readiness.failed_anyway)
        move = self._moved(
            name, result, now, token=token, waited=waited, reason=reason, owner=owner, host=host
        )
        return self._known(name, now) + self._marked_once(name, once) + move

    def complete(
        self,
        name: str,
        *,
        now: float,
        force: bool = False,
        once: bool = False,
        keep_owner: bool = False,
        token: str = "",
    ) -> list[Record]:
        """`keep_owner`: a service's `run` reports it ready and goes on owning the run.
        `token`: the reporting run's (a superseded run's report changes nothing)."""
        if self.superseded(name, token):
            return []
        unit = self.units.get(name)
        owner = unit.owner if keep_owner and unit is not None else None
        records = self._move(name, COMPLETE, {"force"} if force else set(), now=now, owner=owner)
        return records + self._marked_once(name, once)

    def fail(
        self,
        name: str,
        reason: str,
        *,
        now: float,
        force: bool = False,
        waited: float | None = None,
        token: str = "",
    ) -> list[Record]:
        """`waited`: a start that failed because a dependency did says how long it waited.
        `token`: the reporting run's (a superseded run's report changes nothing)."""
        _check_reason(name, reason)
        if self.superseded(name, token):
            return []
        overrides = {"force"} if force else set()
        return self._move(name, FAIL, overrides, now=now, waited=waited, reason=reason)

    def set_reason(self, name: str, reason: str, *, token: str = "") -> list[Record]:
        """Say what a started unit is doing (a service while it starts); not a transition.
        `token`: the reporting run's (a superseded run's reason changes nothing)."""
        _check_reason(name, reason)
        if self.superseded(name, token):
            return []
        unit = self.get(name)
        if unit.status != "started":
            raise Refused(
                f"unit {name!r} is {unit.status}, not started: only a started unit's reason "
                "can be set; start it first",
                code="not_started",
                unit=name,
            )
        return [] if unit.reason == reason else [Reason(name, reason)]

    def restarting(self, name: str, reason: str, *, now: float, token: str) -> list[Record]:
        """The run `token` starts its command again (its restart policy, `sync restart`):
        the same run goes on, `started` until it is ready again (its owner stays). A
        superseded run's report changes nothing."""
        _check_reason(name, reason)
        if self.superseded(name, token):
            return []
        unit = self.units.get(name)
        result = self._decide(name, RESTARTING, set())
        owner = unit.owner if unit is not None else None
        return self._moved(
            name,
            result,
            now,
            token=token,
            reason=reason,
            owner=owner,
            host=unit.host if unit is not None else "",
        )

    def stopped(self, name: str, reason: str, *, now: float, token: str) -> list[Record]:
        """The run `token` stopped its command on `sync stop`'s order: pending, so the
        starts of dependents wait for its next run."""
        _check_reason(name, reason)
        if self.superseded(name, token):
            return []
        result = self._decide(name, STOPPED, set())
        # With the run's token: this ends the run, it does not supersede it.
        return self._moved(name, result, now, token=token, reason=reason)

    def ask(self, name: str, what: str, by: str, *, now: float) -> list[Record]:
        """An order for the `run` holding `name`'s current run (`sync stop`, `sync
        restart`), which the store relays to the agent of whichever host holds it."""
        unit = self.get(name)
        return [Asked(name, what, unit.token, by, now)]

    def reset(
        self,
        name: str,
        *,
        now: float,
        force: bool = False,
        owner_alive: OwnerAlive = _owners_run,
    ) -> list[Record]:
        """Back to pending, edges kept (every unit at once: `reset_all`).

        A unit whose run's owner still runs (`owner_alive`) is refused, unless `force`.
        """
        unit = self.units.get(name)
        alive = owner_alive(name) if unit is not None and unit.owner is not None else True
        overrides = self._owner_overrides(unit, alive, "force" if force else None)
        result = self._decide(name, RESET, overrides, alive)
        return self._move(name, RESET, overrides, now=now, reason=_reset_reason(result, overrides))

    def reset_all(
        self,
        *,
        now: float,
        force: bool = False,
        owner_alive: OwnerAlive = _owners_run,
        only_failed: bool = False,
    ) -> tuple[list[Record], list[str]]:
        """`reset --all` (`--failed`: of the failed units only), in one change: every unit
        moves as `reset UNIT` would, and those it would refuse (a run whose owner still
        runs) are left alone; also their names."""
        moves: list[Record] = []
        left_alone = []
        for each, unit in self.units.items():
            if only_failed and unit.status != "failed":
                continue
            alive = owner_alive(each) if unit.owner is not None else True
            overrides = self._owner_overrides(unit, alive, "force" if force else None)
            result = outcome(unit.status, RESET, frozenset(overrides))
            if isinstance(result, Go):
                why = _reset_reason(result, overrides)
                moves.append(Move(each, result.to, now, why, boot=self.boot))
            elif isinstance(result, Refuse):
                left_alone.append(each)
        return moves, left_alone

    def live_run(self, name: str, *, owner_alive: bool | None) -> str:
        """Why `reset` leaves `name` alone (it is refused or skipped): its run's owner, as a
        message names it, and the way out."""
        unit = self.units[name]
        return _refusal_message(name, unit, Refuse("in_use"), owner_alive, RESET)

    def superseded(self, name: str, token: str) -> bool:
        """Is `token` (a report's) another run's than `name`'s current one (a pending unit has
        none)? Reports with no token (a script's `complete`, an operator's `fail`) are the
        unit's own."""
        self._check_new(name)
        if not token:
            return False
        unit = self.units.get(name)
        return unit is None or unit.token != token or unit.status == "pending"

    def forget(self, name: str, *, now: float) -> list[Record]:
        """Remove a unit nobody wants, with its history (typos must not live forever)."""
        self._decide(name, FORGET, set())
        dependents = self.units[name].dependents
        if dependents:
            names = listed(sorted(dependents))
            raise Refused(
                f"unit {name!r} is still wanted by {names}: forget {names} first, or keep {name!r}",
                code="in_use",
                unit=name,
            )
        return [Forget(name, now)]

    # --- the table, applied ----------------------------------------------------------------

    def _start_overrides(self, name: str, rerun: bool, owner_alive: bool | None) -> set[str]:
        """What may let a start go ahead over a run in progress."""
        return self._owner_overrides(self.units.get(name), owner_alive, "rerun" if rerun else None)

    @staticmethod
    def _owner_overrides(unit: Unit | None, alive: bool | None, flag: str | None) -> set[str]:
        """The command's override flag, if given, and the facts about the run's owner."""
        facts = owner_facts(unit is not None and unit.owner is not None, alive)
        return {*facts, flag} if flag else set(facts)

    def _decide(
        self, name: str, command: Command, overrides: set[str], owner_alive: bool | None = True
    ) -> Go | Stay | Drop:
        """The table's outcome for `command` on `name`, or the refusal it calls for."""
        self._check_new(name)
        unit = self.units.get(name)
        result = outcome(unit.status if unit else None, command, frozenset(overrides))
        if isinstance(result, Refuse):
            message = _refusal_message(
                name, unit, result, owner_alive, command, self.forgotten.get(name)
            )
            raise Refused(message, code=result.code, unit=name)
        return result

    def _move(
        self,
        name: str,
        command: Command,
        overrides: set[str],
        *,
        now: float,
        waited: float | None = None,
        reason: str | None = None,
        owner: OwnerRecord | None = None,
    ) -> list[Record]:
        """`command`'s records for `name`, as the table decides it (or its refusal)."""
        result = self._decide(name, command, overrides)
        moved = self._moved(name, result, now, waited=waited, reason=reason, owner=owner)
        return self._known(name, now) + moved

    def _moved(
        self,
        name: str,
        result: Go | Stay | Drop,
        now: float,
        *,
        token: str = "",
        waited: float | None = None,
        reason: str | None = None,
        owner: OwnerRecord | None = None,
        host: str = "",
    ) -> list[Record]:
        """The move the table's `result` makes (none if it is not a `Go`); `reason`
        instead of the table's, if given."""
        if not isinstance(result, Go):
            return []
        why = result.reason if reason is None else reason
        return [Move(name, result.to, now, why, token, waited, owner, host, self.boot)]

    def _marked_once(self, name: str, once: bool) -> list[Record]:
        unit = self.units.get(name)  # (a unit not yet known is marked after its Known)
        return [Once(name)] if once and not (unit is not None and unit.once) else []

    def _known(self, name: str, now: float) -> list[Record]:
        """A unit no command had named becomes known (before any other record of it)."""
        return [] if name in self.units else [Known(name, now)]

    # --- queries -------------------------------------------------------------------------

    def readiness(self, name: str) -> Readiness:
        """Where `name`'s start stands: each edge's condition against its dependency's
        state, as `machine.NEEDS` says (the first failure that cascades decides)."""
        pending, failed_anyway = [], []
        unit = self.units.get(name)
        units = self.units
        for dep, on in unit.deps.items() if unit else ():
            # `dep_state`, inlined for the states that need no history: every view asks.
            state: DepState = units[dep].status  # type: ignore[assignment]
            if state == "failed":
                state = self.dep_state(dep)
            verdict = NEEDS[on, state]
            if verdict is Verdict.FAIL:
                return Readiness(failed=dep)
            if verdict is Verdict.WAIT:
                pending.append(dep)
            elif state != "completed" and state != "started":
                failed_anyway.append(dep)
        return Readiness(pending=tuple(pending), failed_anyway=tuple(failed_anyway))

    def dep_state(self, name: str) -> DepState:
        """`name`'s state as the conditions of the edges to it see it: a failed unit's
        says whether its current run ever started (`machine.ever_started`)."""
        unit = self.units[name]
        if unit.status != "failed":
            return unit.status
        return dep_state("failed", ever_started(_failed_out_of(unit.history)))

    def get(self, name: str) -> Unit:
        self._check_new(name)
        try:
            return self.units[name]
        except KeyError:
            raise Refused(
                f"{self.unknown(name)}; check the name",
                code="unknown_unit",
                unit=name,
            ) from None

    # --- snapshots -----------------------------------------------------------------------

    def images(self, names: Iterable[str] | None = None) -> Iterator[UnitImage]:
        """Every unit's image (a snapshot), or those of the known units among `names`."""
        units = self.units.values() if names is None else _known_of(self.units, names)
        for unit in units:
            yield UnitImage(
                unit.name,
                unit.status,
                unit.since,
                unit.reason,
                list(unit.deps),
                list(unit.history),
                unit.token,
                unit.once,
                unit.owner,
                unit.host,
                {dep: on for dep, on in unit.deps.items() if on != DEFAULT_CONDITION},
                unit.restarts,
            )

    def boot_image(self) -> BootImage:
        return BootImage(self.boot, self.boot_identity, self.boot_since)

    @classmethod
    def from_images(cls, images: Iterable[UnitImage], boot: BootImage | None = None) -> Graph:
        """The graph a snapshot holds (`boot` None: written before boots were recorded)."""
        graph = cls()
        if boot is not None:
            graph.boot, graph.boot_identity = boot.number, boot.identity
            graph.boot_since = boot.since
        images = list(images)
        for image in images:
            unit = Unit(image.name, image.since, image.status, image.reason, image.token)
            unit.history.extend(image.history)
            unit.once, unit.owner, unit.host = image.once, image.owner, image.host
            unit.restarts = image.restarts
            graph.units[image.name] = unit
        for image in images:
            for dep in image.deps:
                graph.apply(Edge(image.name, dep, image.on.get(dep, DEFAULT_CONDITION)))
        return graph

    # --- internals -----------------------------------------------------------------------

    def _check_new(self, name: str) -> None:
        """The name rules hold for names new to the graph: a unit named before a rule was
        added (an older journal) stays usable (SPEC §12)."""
        if name not in self.units:
            check_name(name)

    def _deps(self, name: str) -> Iterable[str]:
        unit = self.units.get(name)
        return unit.deps if unit else ()

    def _path(self, start: str, goal: str) -> list[str] | None:
        """A dependency path from `start` to `goal`, if there is one (depth-first)."""
        parent: dict[str, str | None] = {start: None}
        stack = [start]
        while stack:
            node = stack.pop()
            if node == goal:
                path = [node]
                while (up := parent[path[-1]]) is not None:
                    path.append(up)
                return path[::-1]
            for dep in self._deps(node):
                if dep not in parent:
                    parent[dep] = node
                    stack.append(dep)
        return None


def went_ahead(failed: Sequence[str]) -> str:
    """The reason of a start that went ahead although dependencies failed (`finished`
    edges, or `started` ones whose dependency had started): so `status` shows it."""
    return f"{WENT_AHEAD} {listed(list(failed))} failed"


def _failed_out_of(history: Sequence[HistoryEntry]) -> State | None:
    """The status a failed unit failed out of: its latest move into `failed` that was not
    from `failed` (None if its history no longer holds one)."""
    if history and (last := history[-1]).from_ != "failed":  # nearly always: the last move
        return last.from_ if last.to == "failed" else None
    for entry in reversed(history):
        if entry.to != "failed":
            return None
        if entry.from_ != "failed":
            return entry.from_
    return None


def _known_of(units: dict[str, Unit], names: Iterable[str]) -> Iterator[Unit]:
    return (units[name] for name in names if name in units)


def _check_reason(name: str, reason: str) -> None:
    check_reason(reason, name)


def _path_text(path: list[str]) -> str:
    """A cycle as `a -> b -> c -> a`; a long one with its middle counted, not listed."""
    if len(path) <= NAMES_IN_A_MESSAGE:
        return " -> ".join(path)
    head, tail = path[: NAMES_IN_A_MESSAGE - 3], path[-3:]
    skipped = len(path) - len(head) - len(tail)
    return f"{' -> '.join(head)} -> ({skipped:,} more) -> {' -> '.join(tail)}"


def _restarted(unit: Unit, move: Move) -> bool:
    """Is this move to started the current run starting its command again (same token,
    the run not over)? A new run has a token of its own."""
    return bool(move.token) and move.token == unit.token and unit.status != "pending"


def _reset_reason(result: Go | Stay | Drop, overrides: set[str]) -> str | None:
    """A reset that took a run whose owner still runs says so in the unit's history (None:
    the table's reason)."""
    if isinstance(result, Go) and overrides == {"force"}:
        return FORCED_RESET_REASON
    return result.reason if isinstance(result, Go) else None


def _still(owner: OwnerRecord, owner_alive: bool | None) -> str:
    """How sure the agent is that `owner` still runs, as a refusal says it."""
    if owner_alive is None:
        return ", in another PID namespace: the agent cannot tell whether it still runs"
    return ", which still runs"


def _stopped(owner: OwnerRecord) -> str:
    """What happens to the old run when it is superseded: only a `run` can be told."""
    return " (that `run` then stops its command)" if owner.kind == "run" else ""


def _stop_it(name: str, owner: OwnerRecord) -> str:
    """How to stop `owner`'s run: a `run` is told by `sync stop` (its command ends as a
    stop ends it, and the unit says so); a script only by a signal."""
    if owner.kind == "run":
        return f"`unitsync sync stop {shlex.quote(name)}`"
    return f"`kill {owner.pid}`"


def _describe(owner: OwnerRecord) -> str:
    """An owner as a message names it: `run` or the script, with its pid and command."""
    if owner.kind == "run":
        return f"`unitsync sync run` (pid {owner.pid}, {owner.command})"
    return f"pid {owner.pid} ({owner.command})"


def unknown_because(name: str, forgotten: float | None) -> str:
    """An unknown unit, and why when the graph knows: a name it forgot (when), else one
    never named or forgotten too long ago to be remembered."""
    if forgotten is not None:
        return f"unknown unit {name!r}: it was forgotten at {timestamp(forgotten)} (`forget`)"
    return f"unknown unit {name!r}: never named (or forgotten)"


def _refusal_message(
    name: str,
    unit: Unit | None,
    refusal: Refuse,
    owner_alive: bool | None = True,
    command: Command = START,
    forgotten: float | None = None,
) -> str:
    """What a refused command says: what is wrong, and what to do instead (`forgotten`:
    when the unknown `name` was forgotten, if that is remembered)."""
    if refusal.code == "already_started" and unit is not None and unit.status == "completed":
        assert unit.owner is not None  # a completed unit with no owner is not refused
        return (
            f"unit {name!r} is completed and its run goes on: {_describe(unit.owner)}"
            f"{_still(unit.owner, owner_alive)}; use --rerun to start a new run anyway"
            f"{_stopped(unit.owner)}, or stop that run first ({_stop_it(name, unit.owner)})"
        )
    if refusal.code == "already_started":
        assert unit is not None
        by = f" by {_describe(unit.owner)}" if unit.owner else ""
        still = _still(unit.owner, owner_alive) if unit.owner is not None else ""
        stopped = _stopped(unit.owner) if unit.owner is not None else ""
        return (
            f"unit {name!r} already started at {timestamp(unit.since)}{by}{still}; "
            f"use --rerun to start a new run{stopped}"
        )
    if refusal.code == "in_use" and command is RESET:
        assert unit is not None and unit.owner is not None
        return (
            f"unit {name!r} is {unit.status} and its run goes on: {_describe(unit.owner)}"
            f"{_still(unit.owner, owner_alive)}; stop that run first "
            f"({_stop_it(name, unit.owner)}), "
            f"or use --force to reset it anyway{_stopped(unit.owner)}"
        )
    if refusal.code == "once_done":
        assert unit is not None
        return (
            f"unit {name!r} is a one-time unit, completed at {timestamp(unit.since)}: "
            "nothing to do (--rerun starts it again, `reset` makes it pending)"
        )
    if refusal.code == "not_started" and command is RESTARTING:
        assert unit is not None
        return f"unit {name!r} is {unit.status}: it has no run to start again; start it first"
    if refusal.code == "not_started":
        if unit is None:
            known = "is not known to the agent"
        elif unit.history:
            known = "has not been started since it was reset"
        else:
            known = "was never started"
        return f"unit {name!r} {known}; check the name, or use --force to complete it anyway"
    if refusal.code == "unknown_unit":
        force = " (or use --force to declare it failed anyway)" if refusal.overrides else ""
        return f"{unknown_because(name, forgotten)}; check the name{force}"
    if refusal.code == "in_use":
        return (
            f"unit {name!r} is started (its script may still be running); "
            "complete, fail or reset it first"
        )
    raise AssertionError(f"no message for the refusal {refusal}")
