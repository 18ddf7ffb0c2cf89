"""What the agent does with each request: the graph, made durable and awaitable.

`commit` is the one seam through which every change flows: the graph has
already applied the records (in memory); here they go to the store, the waiters
they concern are woken, and the caller waits until they are durable before it
answers. Views for clients are built by `views.py`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import trio

from unitsync.wire import __version__
from unitsync.wire.errors import DependencyFailed, Refused
from unitsync.wire.processes import still_runs
from unitsync.wire.protocol import (
    Complete,
    Fail,
    Forget,
    Ok,
    Owner,
    Pong,
    Reset,
    SetReason,
    Start,
    Started,
    Status,
    StatusReply,
    UnitView,
    Waiting,
    Want,
)

from .broadcast import Hub
from .graph import Graph
from .holds import RECLAIM_GRACE, Holder, Holds
from .records import Boot, Edge, Move, OwnerRecord, Record
from .records import Forget as Forgotten
from .views import unit_view
from .waiters import Waiters


class Store(Protocol):
    """Where changes are made durable: the journal (`journal.Journal`) implements it."""

    @property
    def durable_seq(self) -> int:
        """Every append up to this sequence number is durable."""

    def append(self, records: list[Record]) -> int:
        """Take one command's records; return the sequence number to wait `durable` for."""

    async def durable(self, seq: int) -> None:
        """Return once append `seq` is durable; raise if it never can be."""


log = logging.getLogger("unitsync.agent")

Progress = Callable[[Waiting], Awaitable[None]]
Idle = Callable[[], Awaitable[None]]
"""What a blocked start does until woken: the connection watches its socket for a hang-up."""


class Service:
    def __init__(
        self,
        graph: Graph,
        store: Store,
        *,
        socket: Path,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.graph = graph
        self.store = store
        self.socket = socket
        self.state_dir = state_dir
        self.clock = clock
        self.waiters = Waiters()
        self.waiting: Counter[str] = Counter()
        """Units with a `start` in progress, and how many."""
        self.started_at = time.monotonic()
        self.hub = Hub()
        self.holds = Holds(
            {
                name: unit.token
                for name, unit in graph.units.items()
                if unit.owner is not None and unit.owner.kind == "run"
            }
        )
        """Runs held by `run` connections; those held before a restart start unclaimed."""

    async def commit(self, records: list[Record]) -> None:
        """Journal records the graph has applied, wake whoever they concern, wait for fsync."""
        seq = self.store.append(records)
        if records:
            changed = {r.unit for r in records if isinstance(r, Edge | Move)}
            self.waiters.notify(changed)
            if any(isinstance(r, Forgotten | Boot) for r in records):
                self._stage_everything(seq)
            else:
                self._stage(seq, [r.unit for r in records], moved=changed)
        # If the agent stops meanwhile, the writer still flushes this; the client just gets
        # no reply (a start's token makes its retry safe).
        await self.store.durable(seq)
        self.hub.release(self.store.durable_seq)

    def _stage(self, seq: int, units: list[str], moved: set[str] = frozenset()) -> None:
        """Views for watchers: the changed units, then dependents whose readiness may follow."""
        if not self.hub.watchers:
            return
        names = dict.fromkeys(units)
        for name in moved:
            names.update(dict.fromkeys(sorted(self.graph.units[name].dependents)))
        self.hub.stage(seq, [self.view(name) for name in names])

    def _stage_everything(self, seq: int) -> None:
        """A change no per-unit view tells (a unit gone, a new boot): full views for all."""
        if self.hub.watchers:
            self.hub.stage(seq, None)

    def _waiting_changed(self, name: str) -> None:
        """A start began or stopped waiting: not a journaled change, but watchers show it."""
        self._stage(self.store.append([]), [name])
        self.hub.release(self.store.durable_seq)

    def watch_filter(self, unit: str | None) -> Callable[[str], bool]:
        """Which units a watcher sees: every unit, or one unit and its dependencies."""
        if unit is None:
            return lambda _name: True
        deps = self.graph.get(unit).deps
        return lambda name: name == unit or name in deps

    def views(self, wanted: Callable[[str], bool]) -> list[UnitView]:
        return [self.view(name) for name in self.graph.units if wanted(name)]

    # --- requests --------------------------------------------------------------------------

    def ping(self) -> Pong:
        return Pong(
            agent=__version__,
            pid=os.getpid(),
            uptime=time.monotonic() - self.started_at,
            socket=str(self.socket),
            state_dir=str(self.state_dir or ""),
            boot=self.graph.boot,
            boot_since=self.graph.boot_since,
        )

    async def begin_boot(self, identity: str) -> int:
        """Before serving anyone: journal the new boot, if it is one; its number."""
        records = self.graph.begin_boot(identity, self.clock())
        if records:
            await self.store.durable(self.store.append(records))
        return self.graph.boot

    async def want(self, request: Want) -> Ok:
        records, notes = self.graph.want(
            request.unit, request.deps, self.clock(), once=request.once
        )
        await self.commit(records)
        added = sum(isinstance(r, Edge) for r in records)
        message = (
            f"{request.unit} now wants {', '.join(request.deps)}"
            if added
            else f"{request.unit} already wants {', '.join(request.deps)}"
        )
        return Ok(unit=request.unit, message=message, notes=notes)

    async def complete(self, request: Complete, holder: Holder | None = None) -> Ok:
        name = request.unit
        # A ready service's `run` goes on holding its run; any other report ends the hold.
        keep = request.hold and holder is not None and name in holder.units
        records = self.graph.complete(
            name, request.force, self.clock(), once=request.once, keep_owner=keep
        )
        if holder is not None and name in holder.units and not keep:
            self.holds.release(name)
        await self.commit(records)
        moved = any(isinstance(r, Move) for r in records)
        return Ok(
            unit=name, message=f"{name} completed" if moved else f"{name} was already completed"
        )

    async def fail(self, request: Fail, holder: Holder | None = None) -> Ok:
        records = self.graph.fail(request.unit, request.reason, self.clock(), request.force)
        if holder is not None and request.unit in holder.units:
            self.holds.release(request.unit)
        await self.commit(records)
        return Ok(unit=request.unit, message=f"{request.unit} failed")

    # --- owners ------------------------------------------------------------------------------

    def owner_alive(self, name: str) -> bool | None:
        """Does the owner of `name`'s run still run? True when there is no run to own."""
        unit = self.graph.units.get(name)
        if unit is None or unit.status != "started" or unit.owner is None:
            return True
        if unit.owner.kind == "run":  # its connection says: open (or coming back) or lost
            return self.holds.is_held(name)
        owner = unit.owner
        return still_runs(owner.pid, owner.ticks, owner.pidns)

    async def runs_lost(self, holder: Holder) -> None:
        """A `run` connection ended without reporting its command's end: fail what it held."""
        for name, token in self.holds.dropped(holder).items():
            await self._fail_lost_run(name, token, "ended without reporting how its command ended")

    async def expire_unclaimed(self, grace: float = RECLAIM_GRACE) -> None:
        """After a restart: fail the runs whose `run` did not come back within `grace`."""
        if not self.holds.unclaimed:
            return
        await trio.sleep(grace)
        for name, token in list(self.holds.unclaimed.items()):
            self.holds.release(name)
            await self._fail_lost_run(
                name, token, f"did not come back within {grace:g}s of the agent's restart"
            )

    async def _fail_lost_run(self, name: str, token: str, what: str) -> None:
        unit = self.graph.units.get(name)
        if (
            unit is None
            or unit.token != token
            or unit.status not in ("started", "completed")
            or unit.owner is None
            or unit.owner.kind != "run"
        ):
            return  # its run ended otherwise meanwhile (reported, reset, a new run)
        owner = unit.owner
        reason = f"lost its run: `unitsync sync run` (pid {owner.pid}, {owner.command}) {what}"
        log.warning("%s %s", name, reason)
        await self.commit(self.graph.fail(name, reason, self.clock()))

    async def forget(self, request: Forget) -> Ok:
        name = request.unit
        if self.waiting[name]:
            raise Refused(
                f"unit {name!r} has a start waiting for its dependencies; "
                "end that start first, then forget it",
                code="in_use",
                unit=name,
            )
        await self.commit(self.graph.forget(name, self.clock()))
        return Ok(unit=name, message=f"forgot {name} and its history")

    async def set_reason(self, request: SetReason) -> Ok:
        records = self.graph.set_reason(request.unit, request.reason)
        await self.commit(records)
        return Ok(unit=request.unit)

    async def reset(self, request: Reset) -> Ok:
        records = self.graph.reset(request.unit, self.clock())
        await self.commit(records)
        count = sum(isinstance(r, Move) for r in records)
        what = request.unit or "every unit"
        return Ok(unit=request.unit, message=f"reset {what} ({count} changed)")

    async def status(self, request: Status) -> StatusReply:
        names = [request.unit] if request.unit is not None else list(self.graph.units)
        views = [self.view(name) for name in names]
        # What we show must be on disk, even if another request changed it a moment ago.
        await self.commit([])
        graph = self.graph
        return StatusReply(views, self.clock(), boot=graph.boot, boot_since=graph.boot_since)

    def view(self, name: str) -> UnitView:
        waiters = self.waiting[name]
        pending = list(self.graph.readiness(name).pending) if waiters else []
        unit = self.graph.units.get(name)
        alive = self.owner_alive(name) if unit is not None and unit.owner else None
        return unit_view(self.graph, name, pending, waiters, alive)

    async def start(
        self,
        request: Start,
        progress: Progress,
        idle: Idle = trio.sleep_forever,
        holder: Holder | None = None,
    ) -> Started:
        """Wait until the unit is ready, then start it; fail it if a dependency failed.

        With `hold`, the run is `holder`'s connection's from then on (a `run`).
        """
        name, graph = request.unit, self.graph
        same_run = self._same_run(request)
        if same_run is not None:  # a retry of a start we acknowledged, or a `run` back
            if request.hold and holder is not None:
                self.holds.take(name, request.token, holder)
            return same_run
        if request.again:
            raise Refused(
                f"the run of {name!r} this `run` held was given up (its unit is now "
                f"{graph.units[name].status if name in graph.units else 'gone'}): its command "
                "goes on, but its end will not be recorded",
                code="not_started",
                unit=name,
            )
        alive = self.owner_alive(name)
        await self.commit(
            graph.admit(name, request.rerun, self.clock(), once=request.once, owner_alive=alive)
        )
        blocked = _Blocked(self, name)
        began = self.clock() - max(request.waited_before, 0.0)  # the whole wait, across agents
        try:
            return await self._wait_and_start(request, began, progress, idle, blocked, holder)
        finally:
            blocked.end()

    def _same_run(self, request: Start) -> Started | None:
        """The reply to a start whose run is already under way: same token, run not over."""
        unit = self.graph.units.get(request.unit)
        if not request.token or unit is None or unit.token != request.token:
            return None
        held_service = unit.status == "completed" and unit.owner is not None
        if unit.status != "started" and not held_service:
            return None
        began = next((h for h in reversed(unit.history) if h.to == "started"), None)
        at, waited = (began.at, began.waited or 0.0) if began else (unit.since, 0.0)
        return Started(request.unit, at=at, waited=waited)

    async def _wait_and_start(
        self,
        request: Start,
        began: float,
        progress: Progress,
        idle: Idle,
        blocked: _Blocked,
        holder: Holder | None,
    ) -> Started:
        name, graph = request.unit, self.graph
        told: tuple[str, ...] | None = None
        while True:
            readiness = graph.readiness(name)
            if readiness.failed is not None:
                blocked.end()
                raise await self._dependency_failed(name, readiness.failed, began)
            if readiness.ready:
                blocked.end()
                now = self.clock()
                waited = now - began
                records = graph.start(
                    name,
                    request.rerun,
                    now,
                    request.token,
                    waited,
                    once=request.once,
                    owner=_owner_record(request.owner),
                    owner_alive=self.owner_alive(name),
                )
                if request.hold and holder is not None:
                    self.holds.take(name, request.token, holder)
                await self.commit(records)
                return Started(name, at=now, waited=waited)
            blocked.begin()
            # Registered before telling the client, so a change during the send is not missed;
            # the send itself is outside the scope, so a wake-up never cuts a frame in half.
            with self.waiters.watching([name, *readiness.pending]) as woken:
                if readiness.pending != told:
                    told = readiness.pending
                    await progress(Waiting(name, list(told), since=began))
                with woken:
                    await idle()

    async def _dependency_failed(self, name: str, dep: str, began: float) -> DependencyFailed:
        dep_reason = self.graph.units[dep].reason
        now = self.clock()
        records = self.graph.fail(name, f"dependency {dep} failed", now, waited=now - began)
        await self.commit(records)
        because = f" ({dep_reason})" if dep_reason else ""
        return DependencyFailed(
            f"cannot start {name}: dependency {dep} failed{because}; {name} is now failed too",
            unit=name,
            dependency=dep,
        )


class _Blocked:
    """Counts a start as waiting (for status and watchers) only while it is really blocked."""

    def __init__(self, service: Service, name: str) -> None:
        self.service = service
        self.name = name
        self.active = False

    def begin(self) -> None:
        if not self.active:
            self.active = True
            self.service.waiting[self.name] += 1
            self.service._waiting_changed(self.name)

    def end(self) -> None:
        if self.active:
            self.active = False
            waiting = self.service.waiting
            waiting[self.name] -= 1
            if not waiting[self.name]:
                del waiting[self.name]
            self.service._waiting_changed(self.name)


def _owner_record(owner: Owner | None) -> OwnerRecord | None:
    """The wire's owner as the journal keeps it (the one seam between the two)."""
    if owner is None:
        return None
    return OwnerRecord(owner.pid, owner.ticks, owner.command, owner.kind, owner.pidns)
