"""What the agent does with each request: the graph, made durable and awaitable.

`commit` is the one seam through which every change flows. A command is handed to the
store as a `decide` function (the graph's rule for it, with the arguments bound); the
store runs it against the graph, makes the records durable and applies them, then the
caller answers. The local journal decides once and applies at once (`journal.Journal`);
etcd may decide again after another agent's change got in first (`etcd_store.EtcdStore`),
which is why a decision is a function and not its records. Either way the store reports
every change it applies, this agent's or another's, to `applied`, which wakes the waiters
it concerns and stages views for watchers. Views for clients are built by `views.py`.

Owners (SPEC §7): a `run` holds its unit's run through its connection (`holds.py`); a
`start` names the script it belongs to, whose liveness the agent checks in /proc. The
owners of other hosts' runs (a shared store) cannot be checked from here: they count as
alive, so nothing is taken from another host on a guess.

One run at a time (SPEC §11): the graph refuses a second run while the owner of the
current one lives, unless `--rerun` (or `reset --force`). The run that a new one replaces
is *superseded*: once the change is durable, its hold ends and its `run` is told (an
`Order` pushed on its connection, or a `Superseded` refusal when it comes back after an
agent restart). Every report of a run carries its token; a superseded run's reports (its
service's end, its readiness, its reason) change nothing, and the agent logs the first
of them. This works the same whichever agent began the new run: it is the applied change
that supersedes, in `applied`, not the request.

A store that cannot make a change durable refuses it with `NotDurable` (the disk is full;
etcd is unreachable). The journal then rebuilds the graph from its durable files, in
place (`Graph.become`, then `replaced`: every blocked start checks its readiness again,
every watcher gets a full view); a start whose dependency's completion was refused goes
back to waiting instead of failing.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

import trio

from unitsync.wire import __version__
from unitsync.wire.bounds import MAX_DEPS, listed
from unitsync.wire.errors import DependencyFailed, NotDurable, Refused, Superseded, as_text
from unitsync.wire.host.processes import still_runs
from unitsync.wire.protocol import (
    Complete,
    Fail,
    Forget,
    Ok,
    Order,
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

from . import host_boot
from .broadcast import Hub
from .core.graph import WORKSPACE_RESTARTED, Graph
from .core.machine import FORCED_RESET_REASON, RESET_REASON
from .core.records import Boot, Edge, Move, OwnerRecord, Record
from .core.records import Forget as Forgotten
from .core.views import owner_record, unit_view
from .holds import RECLAIM_GRACE, Holder, Holds
from .waiters import Waiters

log = logging.getLogger("unitsync.agent")

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
    graph_id: str
    """The graph's identity (SPEC §11): made once when the graph was created, kept for good."""

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
SUPERSEDED_KEPT = 1024
"""Superseded runs remembered (by token) for what they are told when they come back and for
logging their first ignored report once: far more than a workspace supersedes between two
reports of one run, and a bound on what an agent that runs for months keeps."""

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
        host: str = "",
    ) -> None:
        self.graph = graph
        self.store = store
        self.socket = socket
        self.state_dir = state_dir
        self.clock = clock
        self.host = host
        """This agent's host, for owners (a shared store's agents each have their own)."""
        self.waiters = Waiters()
        self.waiting: Counter[str] = Counter()
        """Units with a `start` in progress, and how many."""
        self.started_at = time.monotonic()
        self.hub = Hub()
        self.holds = Holds(
            {
                name: unit.token
                for name, unit in graph.units.items()
                if unit.owner is not None and unit.owner.kind == "run" and self._here(unit.owner)
            }
        )
        """Runs held by `run` connections; those held before a restart start unclaimed."""
        self._superseding: deque[tuple[int, str, str, str]] = deque()
        """Held runs that an applied change supersedes: (seq, unit, token, by whom), told
        once the change is durable (a refused change supersedes nothing)."""
        self.superseded: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        """Superseded runs, newest last: token -> (by whom, whether an ignored report of it
        was logged)."""
        store.listen(self)

    async def commit(
        self, decide: Decide, about: Sequence[str] | None, *, confirm_noop: bool = True
    ) -> list[Record]:
        """Make `decide`'s change durable and applied (see `Store.commit`); its records."""
        # If the agent stops meanwhile, the journal's writer still flushes this; the client
        # just gets no reply (a start's token makes its retry safe).
        records = await self.store.commit(decide, about, confirm_noop=confirm_noop)
        self._release()
        return records

    async def settle(self) -> None:
        """Return once what `status` or a watcher is about to be shown is durable."""
        await self.store.settle()
        self._release()

    def _release(self) -> None:
        """What waited for changes to be durable goes out: watchers' views, superseding."""
        durable = self.store.durable_seq
        self.hub.release(durable)
        while self._superseding and self._superseding[0][0] <= durable:
            _seq, name, token, by = self._superseding.popleft()
            self._supersede(name, token, by)

    def applied(self, records: list[Record], seq: int) -> None:
        """A change reached the graph: wake the waiters it concerns, stage views for watchers
        and the superseding of the held runs it replaced."""
        changed = {r.unit for r in records if isinstance(r, Edge | Move)}
        self.waiters.notify(changed)
        if any(isinstance(r, Forgotten | Boot) for r in records):
            if self.hub.watchers:  # a unit gone, a new boot: no view per unit tells it
                self.hub.stage(seq, None)
        else:
            self._stage(seq, [r.unit for r in records], moved=changed)  # type: ignore[union-attr]
        for record in records:
            if type(record) is Move and record.to in ("started", "pending"):
                held = self.holds.held(record.unit)
                if held is not None and held[0] != record.token:  # a new run, or none
                    self._superseding.append((seq, record.unit, held[0], _superseder(record)))
        self._release()

    def replaced(self, seq: int) -> None:
        """The graph was rebuilt (etcd listed afresh; the journal undid refused changes):
        every waiter checks again; every watcher drops what it had queued (it may never
        have become durable) and gets a full view."""
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

    def _shown_changed(self, name: str) -> None:
        """Not a durable change, but watchers show it: a start began or stopped waiting, a
        `run` took hold of its unit (its owner shows as running only from then on)."""
        self._stage(self.store.applied_seq, [name])
        self.hub.release(self.store.durable_seq)

    def _supersede(self, name: str, token: str, by: str) -> None:
        """A durable change replaced the held run `token` of `name`: end its hold, tell its
        `run` (now, or when it comes back after a restart), and ignore its reports."""
        held = self.holds.held(name)
        if held is None or held[0] != token or not self.graph.superseded(name, token):
            return  # it ended otherwise meanwhile, or the change was refused and undone
        self.holds.release(name)
        self._remember_superseded(token, by)
        holder = held[1]
        told = (
            "telling its `run` to stop its command"
            if holder is not None
            else "its `run` is told when it comes back"
        )
        log.info("%s: its run was superseded by %s; %s", name, by, told)
        if holder is not None:
            holder.push(Order(name, "supersede", token, by))
        self._shown_changed(name)  # its owner's hold is gone

    def _remember_superseded(self, token: str, by: str, logged: bool = False) -> None:
        self.superseded[token] = (by, logged)
        self.superseded.move_to_end(token)
        while len(self.superseded) > SUPERSEDED_KEPT:
            self.superseded.popitem(last=False)

    async def _report(self, name: str, token: str, decide: Decide) -> tuple[list[Record], bool]:
        """Commit a run's report (`decide`: the graph ignores a superseded run's); its records,
        and whether it came from a superseded run (decided with the change, in one step)."""
        superseded = False

        def checked() -> list[Record]:
            nonlocal superseded
            superseded = self.graph.superseded(name, token)
            return decide()

        records = await self.commit(checked, [name])
        return records, superseded

    def _ignored(self, name: str, token: str, what: str) -> Ok:
        """The reply to a superseded run's report, which changed nothing; logged once per run."""
        by, logged = self.superseded.get(token, ("a newer run", False))
        if not logged:
            log.info(
                "%s: ignored %s from a run superseded by %s: nothing that run reports counts",
                name,
                what,
                by,
            )
            self._remember_superseded(token, by, logged=True)
        return Ok(
            unit=name,
            message=f"{name}: this run was superseded by {by}; its report changed nothing",
        )

    def watch_filter(self, unit: str | None) -> Callable[[str], bool]:
        """Which units a watcher sees: every unit, or one unit and its dependencies."""
        if unit is None:
            return lambda _name: True
        self.graph.get(unit)  # refuse an unknown unit now

        def wanted(name: str) -> bool:
            found = self.graph.units.get(unit)  # its dependencies may change: look each time
            return name == unit or (found is not None and name in found.deps)

        return wanted

    def views(self, wanted: Callable[[str], bool]) -> list[UnitView]:
        return [self.view(name) for name in self.graph.units if wanted(name)]

    async def durable_views(self, wanted: Callable[[str], bool]) -> list[UnitView]:
        """`views`, once all they show is durable (taken again if some of it was refused)."""
        while True:
            views = self.views(wanted)
            try:
                await self.settle()
            except NotDurable:
                continue
            return views

    # --- requests --------------------------------------------------------------------------

    def ping(self) -> Pong:
        return Pong(
            agent=__version__,
            pid=os.getpid(),
            uptime=time.monotonic() - self.started_at,
            socket=as_text(str(self.socket)),
            state_dir=as_text(str(self.state_dir or "")),
            boot=self.graph.boot,
            boot_since=self.graph.boot_since,
            graph=self.store.graph_id,
        )

    async def begin_boot(self, identity: str) -> int:
        """Before serving anyone: make the new boot durable, if it is one; its number.

        With the journal, a boot is one record of it. In a shared graph, the boot is this
        host's own (kept in its state dir), and a new one starts over only the units whose
        latest run this host started (SPEC §10).
        """
        graph = self.graph
        if not getattr(self.store, "shared", False):
            await self.commit(lambda: graph.begin_boot(identity, self.clock()), None)
            return graph.boot
        assert self.state_dir is not None
        known = host_boot.load(self.state_dir)
        if known is not None and known.identity == identity:
            graph.boot, graph.boot_identity, graph.boot_since = known.number, identity, known.since
            return graph.boot
        now = self.clock()
        graph.boot = known.number + 1 if known is not None else 1
        graph.boot_identity, graph.boot_since = identity, now
        if known is not None:  # a crash before `save` starts over the same units again: no-op
            await self.commit(lambda: graph.restart_host(self.host, now), None)
        host_boot.save(self.state_dir, graph.boot_image())
        return graph.boot

    async def want(self, request: Want) -> Ok:
        notes: list[str] = []

        def decide() -> list[Record]:
            records, notes[:] = self.graph.want(
                request.unit, request.deps, self.clock(), once=request.once
            )
            return records

        records = await self.commit(decide, [request.unit, *request.deps])
        added = sum(isinstance(r, Edge) for r in records)
        deps = listed(list(dict.fromkeys(request.deps)), MAX_DEPS)  # each once: it fits a frame
        message = (
            f"{request.unit} now wants {deps}" if added else f"{request.unit} already wants {deps}"
        )
        return Ok(unit=request.unit, message=message, notes=notes)

    async def complete(self, request: Complete, holder: Holder | None = None) -> Ok:
        graph, name, token = self.graph, request.unit, request.token
        held = holder is not None and name in holder.units
        # A ready service's `run` goes on holding its run; any other report ends the hold.
        keep = request.hold and held
        records, superseded = await self._report(
            name,
            token,
            lambda: graph.complete(
                name, request.force, self.clock(), once=request.once, keep_owner=keep, token=token
            ),
        )
        if superseded:
            return self._ignored(name, token, "its readiness" if request.hold else "its end")
        if held and not keep:
            self.holds.release(name)
        moved = any(isinstance(r, Move) for r in records)
        return Ok(unit=name, message=f"{name} {'completed' if moved else 'was already completed'}")

    async def fail(self, request: Fail, holder: Holder | None = None) -> Ok:
        graph, name, token = self.graph, request.unit, request.token
        _records, superseded = await self._report(
            name,
            token,
            lambda: graph.fail(name, request.reason, self.clock(), request.force, token=token),
        )
        if superseded:
            return self._ignored(name, token, f"its end ({request.reason})")
        if holder is not None and name in holder.units:
            self.holds.release(name)
        return Ok(unit=name, message=f"{name} failed")

    async def forget(self, request: Forget) -> Ok:
        graph, name = self.graph, request.unit
        if self.waiting[name]:
            raise Refused(
                f"unit {name!r} has a start waiting for its dependencies; "
                "end that start first, then forget it",
                code="in_use",
                unit=name,
            )
        if self.holds.is_held(name):  # held now, or its run not yet back after a restart
            raise Refused(
                f"unit {name!r} is a service whose `unitsync sync run` still runs it: stop "
                "that run first (its end is recorded on the unit), then forget it",
                code="in_use",
                unit=name,
            )
        await self.commit(lambda: graph.forget(name, self.clock()), [name])
        return Ok(unit=name, message=f"forgot {name} and its history")

    async def set_reason(self, request: SetReason) -> Ok:
        graph, name, token = self.graph, request.unit, request.token
        _records, superseded = await self._report(
            name, token, lambda: graph.set_reason(name, request.reason, token)
        )
        if superseded:
            return self._ignored(name, token, f"its status ({request.reason})")
        return Ok(unit=name)

    async def reset(self, request: Reset) -> Ok:
        """Back to pending; a unit whose run's owner still runs is refused (`reset UNIT`) or
        left alone (`reset --all`, naming it), unless `force`: then its run is superseded."""
        graph, name, force = self.graph, request.unit, request.force
        left_alone: list[str] = []

        def decide() -> list[Record]:
            now = self.clock()
            if name is not None:
                return graph.reset(name, now, force=force, owner_alive=self.owner_alive)
            records, left_alone[:] = graph.reset_all(
                now, force=force, owner_alive=self.owner_alive, only_failed=request.failed
            )
            return records

        records = await self.commit(decide, None if name is None else [name])
        left_alone.sort()  # (in the order people look for them, not the graph's)
        count = sum(isinstance(r, Move) for r in records)
        what = request.unit or ("every failed unit" if request.failed else "every unit")
        message = f"reset {what} ({count} changed)"
        if left_alone:
            message = f"reset {what} ({count} changed; left alone: {', '.join(left_alone)})"
        return Ok(
            unit=request.unit,
            message=message,
            notes=[graph.live_run(each, self.owner_alive(each)) for each in left_alone],
            left_alone=left_alone,
        )

    async def status(self, request: Status) -> StatusReply:
        while True:
            names = [request.unit] if request.unit is not None else list(self.graph.units)
            views = [self.view(name) for name in names]
            # What we show must be durable, even if another request changed it a moment ago.
            try:
                await self.settle()
            except NotDurable:
                continue  # some of it was refused and undone: show what is durable instead
            graph = self.graph
            return StatusReply(views, self.clock(), boot=graph.boot, boot_since=graph.boot_since)

    def view(self, name: str) -> UnitView:
        waiters = self.waiting[name]
        pending = list(self.graph.readiness(name).pending) if waiters else []
        unit = self.graph.units.get(name)
        alive = self.owner_alive(name) if unit is not None and unit.owner else None
        return unit_view(self.graph, name, pending, waiters, alive)

    # --- owners ------------------------------------------------------------------------------

    def owner_alive(self, name: str) -> bool | None:
        """Does the owner of `name`'s current run (a started unit's, a ready service's) still
        run? True when there is none to ask about (the graph tells a unit with no owner
        apart itself); None when this agent cannot tell (another PID namespace, another
        host)."""
        unit = self.graph.units.get(name)
        if unit is None or unit.status not in ("started", "completed") or unit.owner is None:
            return True
        owner = unit.owner
        if not self._here(owner):
            return None
        if owner.kind == "run":  # its connection says: open (or coming back) or lost
            return self.holds.is_held(name)
        return still_runs(owner.pid, owner.ticks, owner.pidns)

    def _here(self, owner: OwnerRecord) -> bool:
        return owner.host in ("", self.host)

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
        graph = self.graph

        def decide() -> list[Record]:
            unit = graph.units.get(name)
            if (
                unit is None
                or unit.token != token
                or unit.status not in ("started", "completed")
                or unit.owner is None
                or unit.owner.kind != "run"
            ):
                return []  # its run ended otherwise meanwhile (reported, reset, a new run)
            owner = unit.owner
            reason = f"lost its run: `unitsync sync run` (pid {owner.pid}, {owner.command}) {what}"
            log.warning("%s %s", name, reason)
            return graph.fail(name, reason, self.clock())

        await self.commit(decide, [name], confirm_noop=False)

    # --- start -------------------------------------------------------------------------------

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
            unit = graph.units.get(name)
            if unit is None or graph.superseded(name, request.token):  # a newer run, a reset
                by = self.superseded.get(request.token, ("a newer run", False))[0]
                raise Superseded(
                    f"{name}: the run this `run` held was superseded by {by} while the agent "
                    "restarted",
                    unit=name,
                )
            now_is = unit.status
            raise Refused(
                f"the run of {name!r} this `run` held was given up (the unit is now {now_is}): "
                "its command goes on, but its end will not be recorded",
                code="not_started",
                unit=name,
            )
        if request.once:  # before admit, which may refuse a completed unit as done
            await self.commit(lambda: graph.declare_once(name), [name], confirm_noop=False)
        await self.commit(
            lambda: graph.admit(
                name,
                request.rerun,
                self.clock(),
                once=request.once,
                owner_alive=self.owner_alive(name),
            ),
            [name],
            confirm_noop=False,
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
            if (same_run := self._same_run(request)) is not None:  # see NotDurable below
                return same_run
            readiness = graph.readiness(name)
            try:
                if readiness.failed is not None:
                    blocked.end()
                    raise await self._dependency_failed(name, readiness.failed, began)
                if readiness.ready:
                    blocked.end()
                    return await self._start_now(request, began, holder)
            except _Overtaken:
                continue
            except NotDurable:
                if graph.readiness(name) != readiness:
                    continue  # what made it ready (or failed) was refused too: wait on
                if not getattr(self.store, "shared", False):
                    raise  # the disk is full: say so now (exit 6), as for any change
                # etcd is unreachable: a start is a wait, bounded by its client's timeout, so
                # it waits on. If the commit was made after all, its token shows it above.
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

    async def _start_now(self, request: Start, began: float, holder: Holder | None) -> Started:
        """Start a unit found ready (a shared store decides again if that changed meanwhile)."""
        name, graph = request.unit, self.graph

        def decide() -> list[Record]:
            if not graph.readiness(name).ready:
                raise _Overtaken
            now = self.clock()
            return graph.start(
                name,
                request.rerun,
                now,
                request.token,
                now - began,
                once=request.once,
                owner=owner_record(request.owner, self.host),
                owner_alive=self.owner_alive(name),
                host=self.host,
            )

        move = (await self.commit(decide, [name]))[-1]
        assert isinstance(move, Move) and move.waited is not None
        if request.hold and holder is not None:
            self.holds.take(name, request.token, holder)
            self._shown_changed(name)  # the view sent with the move showed no hold yet
        return Started(name, at=move.at, waited=move.waited)

    async def _dependency_failed(self, name: str, dep: str, began: float) -> DependencyFailed:
        graph = self.graph

        def decide() -> list[Record]:
            if graph.readiness(name).failed != dep:
                raise _Overtaken
            now = self.clock()
            return graph.fail(name, f"dependency {dep} failed", now, waited=now - began)

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
            self.service._shown_changed(self.name)

    def end(self) -> None:
        if self.active:
            self.active = False
            waiting = self.service.waiting
            waiting[self.name] -= 1
            if not waiting[self.name]:
                del waiting[self.name]
            self.service._shown_changed(self.name)


def _superseder(move: Move) -> str:
    """Who superseded a run, as its `run` says it: the new run's owner, or a forced reset."""
    if move.to == "started":
        return f"a new run (pid {move.owner.pid})" if move.owner is not None else "a new run"
    if move.reason == FORCED_RESET_REASON:
        return "`unitsync sync reset --force`"
    if move.reason == RESET_REASON:
        return "`unitsync sync reset`"
    if move.reason == WORKSPACE_RESTARTED:
        return "a workspace restart"
    return f"the unit going back to pending ({move.reason})"
