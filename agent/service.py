"""What the agent does with each request: the graph, made durable and awaitable.

`commit` is the one seam through which every change flows: the graph has
already applied the records (in memory); here they go to the store, the waiters
they concern are woken, and the caller waits until they are durable before it
answers. Views for clients are built by `views.py`.

A store that cannot make changes durable (the disk is full) refuses every change
not yet durable with `NotDurable` and hands over the graph rebuilt from its
durable state (`_rolled_back`): from then on that graph is served, every blocked
start re-checks its readiness against it (a `start` whose dependency's completion
was refused goes back to waiting instead of failing), and every watcher gets a
fresh full view. So always read `self.graph` afresh after an await.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import trio

from unitsync.wire import __version__
from unitsync.wire.errors import DependencyFailed, NotDurable
from unitsync.wire.protocol import (
    Complete,
    Fail,
    Ok,
    Pong,
    Reset,
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
from .records import Edge, Move, Record
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
        """Return once append `seq` is durable; raise NotDurable if it was refused."""

    def on_rollback(self, listener: Callable[[Graph], None]) -> None:
        """Call `listener` with the durable state whenever changes were refused."""


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
        store.on_rollback(self._rolled_back)

    async def commit(self, records: list[Record]) -> None:
        """Journal records the graph has applied, wake whoever they concern, wait for fsync."""
        seq = self.store.append(records)
        if records:
            changed = {r.unit for r in records if isinstance(r, Edge | Move)}
            self.waiters.notify(changed)
            self._stage(seq, [r.unit for r in records], moved=changed)
        # If the agent stops meanwhile, the writer still flushes this; the client just gets
        # no reply (a start's token makes its retry safe).
        await self.store.durable(seq)
        self.hub.release(self.store.durable_seq)

    def _rolled_back(self, graph: Graph) -> None:
        """Changes were refused: serve the durable state from now on (module docstring)."""
        self.graph = graph
        self.waiters.notify_all()
        self.hub.resync()

    def _stage(self, seq: int, units: list[str], moved: set[str] = frozenset()) -> None:
        """Views for watchers: the changed units, then dependents whose readiness may follow."""
        if not self.hub.watchers:
            return
        names = dict.fromkeys(units)
        for name in moved:
            names.update(dict.fromkeys(sorted(self.graph.units[name].dependents)))
        self.hub.stage(seq, [self.view(name) for name in names])

    def _waiting_changed(self, name: str) -> None:
        """A start began or stopped waiting: not a journaled change, but watchers show it."""
        self._stage(self.store.append([]), [name])
        self.hub.release(self.store.durable_seq)

    def watch_filter(self, unit: str | None) -> Callable[[str], bool]:
        """Which units a watcher sees: every unit, or one unit and its dependencies."""
        if unit is None:
            return lambda _name: True
        self.graph.get(unit)  # refuse an unknown unit now

        def wanted(name: str) -> bool:
            found = self.graph.units.get(unit)  # the graph may be rebuilt: look it up each time
            return name == unit or (found is not None and name in found.deps)

        return wanted

    def views(self, wanted: Callable[[str], bool]) -> list[UnitView]:
        return [self.view(name) for name in self.graph.units if wanted(name)]

    async def durable_views(self, wanted: Callable[[str], bool]) -> list[UnitView]:
        """`views`, once all they show is on disk (taken again if some of it was refused)."""
        while True:
            views = self.views(wanted)
            try:
                await self.commit([])
            except NotDurable:
                continue
            return views

    # --- requests --------------------------------------------------------------------------

    def ping(self) -> Pong:
        return Pong(
            agent=__version__,
            pid=os.getpid(),
            uptime=time.monotonic() - self.started_at,
            socket=str(self.socket),
            state_dir=str(self.state_dir or ""),
        )

    async def want(self, request: Want) -> Ok:
        records, notes = self.graph.want(request.unit, request.deps, self.clock())
        await self.commit(records)
        added = sum(isinstance(r, Edge) for r in records)
        message = (
            f"{request.unit} now wants {', '.join(request.deps)}"
            if added
            else f"{request.unit} already wants {', '.join(request.deps)}"
        )
        return Ok(unit=request.unit, message=message, notes=notes)

    async def complete(self, request: Complete) -> Ok:
        records = self.graph.complete(request.unit, request.force, self.clock())
        await self.commit(records)
        return Ok(unit=request.unit, message=_moved(request.unit, records, "completed"))

    async def fail(self, request: Fail) -> Ok:
        records = self.graph.fail(request.unit, request.reason, self.clock())
        await self.commit(records)
        return Ok(unit=request.unit, message=f"{request.unit} failed")

    async def reset(self, request: Reset) -> Ok:
        records = self.graph.reset(request.unit, self.clock())
        await self.commit(records)
        count = sum(isinstance(r, Move) for r in records)
        what = request.unit or "every unit"
        return Ok(unit=request.unit, message=f"reset {what} ({count} changed)")

    async def status(self, request: Status) -> StatusReply:
        while True:
            names = [request.unit] if request.unit is not None else list(self.graph.units)
            views = [self.view(name) for name in names]
            # What we show must be on disk, even if another request changed it a moment ago.
            try:
                await self.commit([])
            except NotDurable:
                continue  # some of it was refused and undone: show what is on disk instead
            return StatusReply(units=views, at=self.clock())

    def view(self, name: str) -> UnitView:
        waiters = self.waiting[name]
        pending = list(self.graph.readiness(name).pending) if waiters else []
        return unit_view(self.graph, name, pending, waiters)

    async def start(
        self, request: Start, progress: Progress, idle: Idle = trio.sleep_forever
    ) -> Started:
        """Wait until the unit is ready, then start it; fail it if a dependency failed."""
        name = request.unit
        unit = self.graph.units.get(name)
        if request.token and unit and unit.status == "started" and unit.token == request.token:
            return Started(name, at=unit.since, waited=0.0)  # a retry of a start we acknowledged
        await self.commit(self.graph.admit(name, request.rerun, self.clock()))
        blocked = _Blocked(self, name)
        try:
            return await self._wait_and_start(request, self.clock(), progress, idle, blocked)
        finally:
            blocked.end()

    async def _wait_and_start(
        self, request: Start, began: float, progress: Progress, idle: Idle, blocked: _Blocked
    ) -> Started:
        name = request.unit
        told: tuple[str, ...] | None = None
        while True:
            readiness = self.graph.readiness(name)
            if readiness.failed is not None:
                blocked.end()
                try:
                    raise await self._dependency_failed(name, readiness.failed)
                except NotDurable:
                    if self.graph.readiness(name).failed is None:
                        continue  # the dependency's failure was refused too: wait on
                    raise
            if readiness.ready:
                blocked.end()
                now = self.clock()
                waited = now - began
                try:
                    await self.commit(
                        self.graph.start(name, request.rerun, now, request.token, waited)
                    )
                except NotDurable:
                    if not self.graph.readiness(name).ready:
                        continue  # what made it ready was refused too: wait on
                    raise
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

    async def _dependency_failed(self, name: str, dep: str) -> DependencyFailed:
        dep_reason = self.graph.units[dep].reason
        records = self.graph.fail(name, f"dependency {dep} failed", self.clock())
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


def _moved(name: str, records: list[Record], state: str) -> str:
    return f"{name} {state}" if records else f"{name} was already {state}"
