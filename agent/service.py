"""What the agent does with each request: the graph, made durable and awaitable.

`commit` is the one seam through which every change flows. A command is handed to the
store as a `decide` function (the graph's rule for it, with the arguments bound); the
store runs it against the graph, makes the records durable and applies them, then the
caller answers. The local journal decides once and applies at once (`journal.Journal`);
etcd may decide again after another agent's change got in first (`etcd_store.EtcdStore`),
which is why a decision is a function and not its records. Either way the store reports
every change it applies, this agent's or another's, to `applied`, which wakes the waiters
it concerns and stages views for watchers. Views for clients are built by `views.py`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
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

Decide = Callable[[], list[Record]]
"""A command bound to its arguments: the records it makes against the graph as it stands
now (none when there is nothing to do), or `Refused`."""


class Changes(Protocol):
    """What a store tells about the changes it applies to the graph (the service)."""

    def applied(self, records: list[Record], seq: int) -> None:
        """`records` were applied to the graph, as change number `seq`."""

    def replaced(self, seq: int) -> None:
        """The whole graph was replaced (a shared store listed it afresh) at `seq`."""


class Store(Protocol):
    """Makes changes durable and applies them to the graph, in one order.

    Implemented by the local journal (`journal.Journal`) and by etcd
    (`etcd_store.EtcdStore`, where several agents share the graph).
    """

    location: str
    """Where the graph is kept, for the log."""

    @property
    def applied_seq(self) -> int:
        """The sequence number of the last change applied to the graph."""

    @property
    def durable_seq(self) -> int:
        """Every change up to this sequence number is durable."""

    def listen(self, changes: Changes) -> None:
        """Report every change applied from now on to `changes`."""

    async def commit(
        self, decide: Decide, about: Sequence[str] | None, *, confirm_noop: bool = True
    ) -> list[Record]:
        """Decide a change, make it durable, apply it; return its records once all is done.

        `about` names the units whose state the command's outcome rests on (None: every
        unit): a shared store checks that none changed meanwhile, and confirms against the
        store an outcome that changes nothing (a refusal, "already so") before returning
        it, unless `confirm_noop` is false (a step that merely found nothing to do).
        """

    async def settle(self) -> None:
        """Return once everything the graph shows is durable (before showing it)."""


START_RETRY = 1.0
"""A ready start whose change the store could not make durable tries again this often."""

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
        store.listen(self)

    async def commit(
        self, decide: Decide, about: Sequence[str] | None, *, confirm_noop: bool = True
    ) -> list[Record]:
        """Make `decide`'s change durable and applied (see `Store.commit`); its records."""
        # If the agent stops meanwhile, the journal's writer still flushes this; the client
        # just gets no reply (a start's token makes its retry safe).
        records = await self.store.commit(decide, about, confirm_noop=confirm_noop)
        self.hub.release(self.store.durable_seq)
        return records

    async def settle(self) -> None:
        """Return once what `status` or a watcher is about to be shown is durable."""
        await self.store.settle()
        self.hub.release(self.store.durable_seq)

    def applied(self, records: list[Record], seq: int) -> None:
        """A change reached the graph: wake the waiters it concerns, stage views for watchers."""
        changed = {r.unit for r in records if isinstance(r, Edge | Move)}
        self.waiters.notify(changed)
        self._stage(seq, [r.unit for r in records], moved=changed)
        self.hub.release(self.store.durable_seq)

    def replaced(self, seq: int) -> None:
        """The graph was listed afresh: every waiter checks again, every watcher is told."""
        self.waiters.notify_all()
        names = list(self.graph.units)
        self._stage(seq, names, moved=set(names))
        self.hub.release(self.store.durable_seq)

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
        self._stage(self.store.applied_seq, [name])
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
        )

    async def want(self, request: Want) -> Ok:
        notes: list[str] = []

        def decide() -> list[Record]:
            records, notes[:] = self.graph.want(request.unit, request.deps, self.clock())
            return records

        records = await self.commit(decide, [request.unit, *request.deps])
        added = sum(isinstance(r, Edge) for r in records)
        message = (
            f"{request.unit} now wants {', '.join(request.deps)}"
            if added
            else f"{request.unit} already wants {', '.join(request.deps)}"
        )
        return Ok(unit=request.unit, message=message, notes=notes)

    async def complete(self, request: Complete) -> Ok:
        graph, name = self.graph, request.unit
        records = await self.commit(
            lambda: graph.complete(name, request.force, self.clock()), [name]
        )
        return Ok(unit=request.unit, message=_moved(request.unit, records, "completed"))

    async def fail(self, request: Fail) -> Ok:
        graph, name = self.graph, request.unit
        await self.commit(lambda: graph.fail(name, request.reason, self.clock()), [name])
        return Ok(unit=request.unit, message=f"{request.unit} failed")

    async def reset(self, request: Reset) -> Ok:
        graph, name = self.graph, request.unit
        records = await self.commit(
            lambda: graph.reset(name, self.clock()), None if name is None else [name]
        )
        count = sum(isinstance(r, Move) for r in records)
        what = request.unit or "every unit"
        return Ok(unit=request.unit, message=f"reset {what} ({count} changed)")

    async def status(self, request: Status) -> StatusReply:
        names = [request.unit] if request.unit is not None else list(self.graph.units)
        views = [self.view(name) for name in names]
        # What we show must be durable, even if another request changed it a moment ago.
        await self.settle()
        return StatusReply(units=views, at=self.clock())

    def view(self, name: str) -> UnitView:
        waiters = self.waiting[name]
        pending = list(self.graph.readiness(name).pending) if waiters else []
        return unit_view(self.graph, name, pending, waiters)

    async def start(
        self, request: Start, progress: Progress, idle: Idle = trio.sleep_forever
    ) -> Started:
        """Wait until the unit is ready, then start it; fail it if a dependency failed."""
        name, graph = request.unit, self.graph
        unit = graph.units.get(name)
        if request.token and unit and unit.status == "started" and unit.token == request.token:
            return Started(name, at=unit.since, waited=0.0)  # a retry of a start we acknowledged
        await self.commit(
            lambda: graph.admit(name, request.rerun, self.clock()), [name], confirm_noop=False
        )
        blocked = _Blocked(self, name)
        try:
            return await self._wait_and_start(request, self.clock(), progress, idle, blocked)
        finally:
            blocked.end()

    async def _wait_and_start(
        self, request: Start, began: float, progress: Progress, idle: Idle, blocked: _Blocked
    ) -> Started:
        name, graph = request.unit, self.graph
        told: tuple[str, ...] | None = None
        while True:
            unit = graph.units[name]
            if request.token and unit.status == "started" and unit.token == request.token:
                return Started(name, at=unit.since, waited=unit.since - began)  # see NotDurable
            readiness = graph.readiness(name)
            try:
                if readiness.failed is not None:
                    blocked.end()
                    raise await self._dependency_failed(name, readiness.failed)
                if readiness.ready:
                    blocked.end()
                    return await self._start_now(request, began)
            except _Overtaken:
                continue
            except NotDurable:
                # The store cannot commit now (etcd unreachable): a start is a wait, bounded
                # by its client's timeout, so it waits on. If the commit was made after all,
                # its token shows it at the top of the loop.
                await trio.sleep(START_RETRY)
                continue
            blocked.begin()
            # Registered before telling the client, so a change during the send is not missed;
            # the send itself is outside the scope, so a wake-up never cuts a frame in half.
            with self.waiters.watching([name, *readiness.pending]) as woken:
                if readiness.pending != told:
                    told = readiness.pending
                    await progress(Waiting(name, list(told), since=began))
                with woken:
                    await idle()

    async def _start_now(self, request: Start, began: float) -> Started:
        """Start a unit found ready (a shared store decides again if that changed meanwhile)."""
        name, graph = request.unit, self.graph

        def decide() -> list[Record]:
            if not graph.readiness(name).ready:
                raise _Overtaken
            now = self.clock()
            return graph.start(name, request.rerun, now, request.token, now - began)

        move = (await self.commit(decide, [name]))[-1]
        assert isinstance(move, Move) and move.waited is not None
        return Started(name, at=move.at, waited=move.waited)

    async def _dependency_failed(self, name: str, dep: str) -> DependencyFailed:
        graph = self.graph

        def decide() -> list[Record]:
            if graph.readiness(name).failed != dep:
                raise _Overtaken
            return graph.fail(name, f"dependency {dep} failed", self.clock())

        await self.commit(decide, [name, dep])
        dep_reason = graph.units[dep].reason
        because = f" ({dep_reason})" if dep_reason else ""
        return DependencyFailed(
            f"cannot start {name}: dependency {dep} failed{because}; {name} is now failed too",
            unit=name,
            dependency=dep,
        )


class _Overtaken(Exception):
    """What a start was about to do no longer holds: another agent's change got in first
    (only a shared store decides again); the start looks at the graph afresh."""


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
