"""What the agent does with each request: the graph, made durable and awaitable.

`commit` is the one seam through which every change flows. A command is handed to the
store as a `decide` function (the graph's rule for it, with the arguments bound, which
only decides); the store runs it against its graph, makes the records durable and
applies them, then the caller answers (`store/base.py`). The local journal decides once
and applies as it appends (`store/journal/writer.py`); etcd may decide again after
another agent's change got in first, and applies from its watch (`store/etcd/store.py`),
which is why a decision is a function and not its records. Either way the store reports
every change it applies, this agent's or another's, to `applied`, which wakes the waiters
it concerns and stages views for watchers. The graph is the store's: the service reads
`store.graph` each time, never keeping its own, as a store may replace it. Views for
clients are built by `core/views.py`; the start wait is `starting.py`.

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
etcd is unreachable). The journal then rebuilds the graph from its durable files and
replaces its graph with it (`replaced`: every blocked start checks its readiness again,
every watcher gets a full view); a start whose dependency's completion was refused goes
back to waiting instead of failing.

Superseded runs' reports are answered, never refused, and logged once per run
(`log_throttle`).

Stop and restart (SPEC §8, issue 24): `sync stop` and `sync restart` ask the `run` that
holds a unit's run to stop its command (or to start it again). The request is committed
as an `Asked` record, which changes no state but travels the road every change travels:
the journal's agent applies it at once, and with etcd every agent of the graph applies it
from its watch, so the agent whose connection holds that run (on whatever host) pushes
the `Order` to it, once the record is durable, as it pushes a supersede. The asking agent
then waits on the unit itself (its own replica shows what the `run` reports, wherever it
runs): `stop` until the run reported its command's group gone (the unit is pending) or
ended otherwise; `restart` until the unit is ready again (completed, one restart more) or
failed. Past the request's timeout it is refused with `timeout` (exit 5): the `run` goes
on with what it was told. A unit that no live `run` holds is refused with `no_run`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio

from unitsync.wire import __version__
from unitsync.wire.bounds import MAX_DEPS, listed
from unitsync.wire.errors import NotDurable, Refused, UnitFailed, WaitTimeout, as_text
from unitsync.wire.host.processes import still_runs
from unitsync.wire.protocol import (
    Complete,
    Fail,
    Forget,
    Ok,
    Order,
    Pong,
    Reset,
    Restart,
    Restarting,
    SetReason,
    Status,
    StatusReply,
    Stop,
    Stopped,
    UnitView,
    Want,
)
from unitsync.wire.runlog.layout import logs_folder, remove_unit

from .broadcast import Hub, Watcher
from .core.graph import WORKSPACE_RESTARTED, Graph, Unit
from .core.machine import DEFAULT_CONDITION, FORCED_RESET_REASON, RESET_REASON
from .core.records import Asked, Boot, Edge, Move, OwnerRecord, Record
from .core.records import Forget as Forgotten
from .core.views import unit_view
from .holds import RECLAIM_GRACE, Holder, Holds
from .log_throttle import Throttle
from .store.base import Decide, Store
from .waiters import Waiters

log = logging.getLogger("unitsync.agent")

LOST_RUN_RETRY = 1.0
"""How often a lost run's end is tried again while etcd cannot take it: as often as a
ready start tries (`starting.START_RETRY`); no `run` is left to retry it."""
SUPERSEDED_KEPT = 1024
"""Superseded runs remembered (by token) for what they are told when they come back and for
logging their first ignored report once: far more than a workspace supersedes between two
reports of one run, and a bound on what an agent that runs for months keeps."""


class Service:
    def __init__(
        self,
        store: Store,
        *,
        socket: Path,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        host: str = "",
    ) -> None:
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
                for name, unit in store.graph.units.items()
                if unit.owner is not None and unit.owner.kind == "run" and self._here(unit.owner)
            }
        )
        """Runs held by `run` connections; those held before a restart start unclaimed."""
        self._superseding: deque[tuple[int, str, str, str, str]] = deque()
        """Orders for held runs: (seq, unit, token, by whom, what), told once the change
        that gives them is durable (a refused change orders nothing): `supersede` when an
        applied change replaced the run, `stop` and `restart` when one asked for them."""
        self.superseded: OrderedDict[str, str] = OrderedDict()
        """Superseded runs, newest last: token -> by whom."""
        self.runs_begun: OrderedDict[str, Move] = OrderedDict()
        """The latest runs begun (here or by another agent), newest last: token -> the move
        that began it. A start whose attempt may have been made (`MaybeMade`) looks here for
        its own run once the unit has moved on (`starting`)."""
        self.rebuilds = 0
        """How many times the store rebuilt its graph: changes applied across a rebuild were
        never seen one by one (`runs_begun` may miss them)."""
        self._ignored_reports = Throttle(math.inf, keys_kept=SUPERSEDED_KEPT)
        """Superseded runs (by token) whose first ignored report was logged."""
        self._forgotten, self._forgotten_out = trio.open_memory_channel[str](math.inf)
        """Units forgotten (here or by another agent of a shared graph): their output logs
        on this host go too (`remove_forgotten_logs`)."""
        store.listen(self)

    @property
    def logs_folder(self) -> str:
        """Where `run`s on this host keep their commands' output ("": nowhere known)."""
        return as_text(str(logs_folder(self.state_dir))) if self.state_dir is not None else ""

    @property
    def graph(self) -> Graph:
        """The store's graph, as it is now (a store may replace it: never keep it)."""
        return self.store.graph

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
            _seq, name, token, by, what = self._superseding.popleft()
            if what == "supersede":
                self._supersede(name, token, by)
            else:
                self._order(name, token, by, what)

    def applied(self, records: list[Record], seq: int) -> None:
        """A change reached the graph: wake the waiters it concerns, stage views for watchers
        and the superseding of the held runs it replaced."""
        changed = {r.unit for r in records if isinstance(r, Edge | Move)}
        self.waiters.notify(changed)
        for record in records:
            if type(record) is Forgotten:
                self._forgotten.send_nowait(record.unit)
        if any(isinstance(r, Forgotten | Boot) for r in records):
            if self.hub.watchers:  # a unit gone, a new boot: no view per unit tells it
                self.hub.stage(seq, None)
        else:
            self._stage(seq, [r.unit for r in records], moved=changed)  # type: ignore[union-attr]
        for record in records:
            if type(record) is Move and record.to == "started" and record.token:
                self._remember_run(record)
            if type(record) is Move and record.to in ("started", "pending"):
                held = self.holds.held(record.unit)
                if held is not None and held[0] != record.token:  # a new run, or none
                    self._superseding.append(
                        (seq, record.unit, held[0], _superseder(record), "supersede")
                    )
            elif type(record) is Asked and self.holds.held(record.unit) is not None:
                self._superseding.append((seq, record.unit, record.token, record.by, record.what))
        self._release()

    def replaced(self, seq: int) -> None:
        """The graph was rebuilt (etcd listed afresh; the journal undid refused changes):
        every waiter checks again; every watcher drops what it had queued (it may never
        have become durable) and gets a full view."""
        self.rebuilds += 1
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

    def show(self, name: str) -> None:
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
        self.show(name)  # its owner's hold is gone

    def _order(self, name: str, token: str, by: str, what: str) -> None:
        """Pass `sync stop`'s or `sync restart`'s order to the `run` holding run `token`
        here (an order for a run this agent does not hold is another agent's to pass)."""
        held = self.holds.held(name)
        if held is None or held[0] != token:
            return
        if held[1] is None:
            log.info("%s: %s asked by %s, but its `run` is not back yet", name, what, by)
            return
        log.info("%s: telling its `run` to %s its command (asked by %s)", name, what, by)
        held[1].push(Order(name, what, token, by))  # type: ignore[arg-type]

    def _remember_run(self, move: Move) -> None:
        _keep_newest(self.runs_begun, move.token, move)

    def _remember_superseded(self, token: str, by: str) -> None:
        _keep_newest(self.superseded, token, by)

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
        by = self.superseded.get(token, "a newer run")
        if self._ignored_reports.passes(token) is not None:
            log.info(
                "%s: ignored %s from a run superseded by %s: nothing that run reports counts",
                name,
                what,
                by,
            )
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

    @contextlib.contextmanager
    def watching(self, unit: str | None) -> Iterator[Watcher]:
        """A watcher of `unit` and its dependencies (None: every unit), which is offered
        every change made durable while the block runs (`Unknown unit`: refused now)."""
        watcher = Watcher(self.watch_filter(unit))
        self.hub.watchers.add(watcher)
        try:
            yield watcher
        finally:
            self.hub.watchers.discard(watcher)

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
        """Before serving anyone: make the new boot durable, if it is one (each store keeps
        boots its own way: `Store.begin_boot`); its number."""
        number = await self.store.begin_boot(identity, now=self.clock(), host=self.host)
        self._release()
        return number

    async def want(self, request: Want) -> Ok:
        notes: list[str] = []

        def decide() -> list[Record]:
            records, notes[:] = self.graph.want(
                request.unit, request.deps, now=self.clock(), once=request.once, on=request.on
            )
            return records

        records = await self.commit(decide, [request.unit, *request.deps])
        added = any(isinstance(r, Edge) for r in records)
        named = list(dict.fromkeys(request.deps))
        unit = self.graph.units.get(request.unit)  # (a store may have replaced the graph)
        have = unit.deps if unit is not None else {}
        on = {have.get(dep, DEFAULT_CONDITION) for dep in named}
        if len(on) == 1:  # the usual case: one condition for all, said once
            [common] = on
            deps = listed(named, MAX_DEPS) + (
                "" if common == DEFAULT_CONDITION else f" on {common}"
            )
        else:
            deps = listed([_on(dep, have.get(dep, DEFAULT_CONDITION)) for dep in named], MAX_DEPS)
        now = "now" if added else "already"
        return Ok(unit=request.unit, message=f"{request.unit} {now} wants {deps}", notes=notes)

    async def complete(self, request: Complete, holder: Holder | None = None) -> Ok:
        name, token = request.unit, request.token
        held = holder is not None and name in holder.units
        # A ready service's `run` goes on holding its run; any other report ends the hold.
        keep = request.hold and held
        try:
            records, superseded = await self._report(
                name,
                token,
                lambda: self.graph.complete(
                    name,
                    now=self.clock(),
                    force=request.force,
                    once=request.once,
                    keep_owner=keep,
                    token=token,
                ),
            )
        except NotDurable as exc:
            raise (
                self._unrecorded(exc, holder, name, None) if held and not keep else exc
            ) from None
        if superseded:
            return self._ignored(name, token, "its readiness" if request.hold else "its end")
        if held and not keep:
            self.holds.release(name)
        moved = any(isinstance(r, Move) for r in records)
        return Ok(unit=name, message=f"{name} {'completed' if moved else 'was already completed'}")

    async def fail(self, request: Fail, holder: Holder | None = None) -> Ok:
        name, token = request.unit, request.token
        held = holder is not None and name in holder.units
        try:
            _records, superseded = await self._report(
                name,
                token,
                lambda: self.graph.fail(
                    name, request.reason, now=self.clock(), force=request.force, token=token
                ),
            )
        except NotDurable as exc:
            raise (self._unrecorded(exc, holder, name, request.reason) if held else exc) from None
        if superseded:
            return self._ignored(name, token, f"its end ({request.reason})")
        if held:
            self.holds.release(name)
        return Ok(unit=name, message=f"{name} failed")

    def _unrecorded(
        self, exc: NotDurable, holder: Holder | None, name: str, reason: str | None
    ) -> NotDurable:
        """A `run`'s report of its command's end that etcd did not take: kept, to be
        recorded when the run's connection ends (`runs_lost`), once etcd takes it."""
        if holder is None or not self.store.recovers_unaided:
            return exc  # the disk is full: the `run` says so; it fails when it ends
        holder.unrecorded[name] = reason
        return NotDurable(f"{exc}; this agent records it once etcd is back")

    async def forget(self, request: Forget) -> Ok:
        name = request.unit
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
        await self.commit(lambda: self.graph.forget(name, now=self.clock()), [name])
        if self.state_dir is not None:  # its runs' output goes with it (SPEC §15)
            await trio.to_thread.run_sync(remove_unit, logs_folder(self.state_dir), name)
        return Ok(unit=name, message=f"forgot {name} and its history")

    async def remove_forgotten_logs(self) -> None:
        """Remove the output logs of forgotten units from this host's state dir, as they are
        forgotten (by this agent, or by another of a shared graph), until cancelled."""
        async for name in self._forgotten_out:
            if self.state_dir is not None:
                await trio.to_thread.run_sync(remove_unit, logs_folder(self.state_dir), name)

    async def set_reason(self, request: SetReason) -> Ok:
        name, token = request.unit, request.token
        _records, superseded = await self._report(
            name, token, lambda: self.graph.set_reason(name, request.reason, token=token)
        )
        if superseded:
            return self._ignored(name, token, f"its status ({request.reason})")
        return Ok(unit=name)

    async def restarting(self, request: Restarting) -> Ok:
        """A run's report: its command is being started again (`started`, same run)."""
        name, token = request.unit, request.token
        _records, superseded = await self._report(
            name,
            token,
            lambda: self.graph.restarting(name, request.reason, now=self.clock(), token=token),
        )
        if superseded:
            return self._ignored(name, token, f"its restart ({request.reason})")
        return Ok(unit=name, message=f"{name} restarting")

    async def stopped(self, request: Stopped, holder: Holder | None = None) -> Ok:
        """A run's report: its command was stopped on order and its group is gone."""
        name, token = request.unit, request.token
        _records, superseded = await self._report(
            name,
            token,
            lambda: self.graph.stopped(name, request.reason, now=self.clock(), token=token),
        )
        if superseded:
            return self._ignored(name, token, f"its stop ({request.reason})")
        if holder is not None and name in holder.units:
            self.holds.release(name)
        return Ok(unit=name, message=f"{name} stopped")

    async def stop(self, request: Stop) -> Ok:
        """`sync stop`: once the unit's `run` stopped its command (its group is gone)."""
        name = request.unit
        unit, token = self._live_run(name, "stop")
        by = request.by or "sync stop"
        await self.commit(lambda: self.graph.ask(name, "stop", by, now=self.clock()), [name])

        def over(unit: Unit | None) -> Unit | None:
            ended = unit is None or unit.token != token or unit.status in ("pending", "failed")
            return unit if ended else None

        with trio.move_on_after(request.timeout):
            now = await self._until(name, over)
            if now is None:
                return Ok(unit=name, message=f"{name} stopped; it was forgotten meanwhile")
            if now.token != token:
                return Ok(
                    unit=name, message=f"{name}: that run ended; a new run began ({now.status})"
                )
            if now.status == "pending":
                return Ok(unit=name, message=f"{name} stopped; it is pending")
            return Ok(unit=name, message=f"{name}'s run ended otherwise: {now.reason}")
        raise WaitTimeout(
            f"{name} was not stopped within {request.timeout:g}s: its `run` (pid "
            f"{_pid(unit)}) goes on stopping it (SIGKILL follows SIGTERM after its grace); "
            "`unitsync sync status` shows when it is done",
            code="timeout",
            unit=name,
        )

    async def restart(self, request: Restart) -> Ok:
        """`sync restart`: once the unit's `run` started its command again and it is ready
        (a plain command: once it completed)."""
        name = request.unit
        unit, token = self._live_run(name, "restart")
        before = unit.restarts
        by = request.by or "sync restart"
        await self.commit(lambda: self.graph.ask(name, "restart", by, now=self.clock()), [name])

        def over(unit: Unit | None) -> Unit | None:
            if unit is None or unit.token != token or unit.status in ("pending", "failed"):
                return unit
            return unit if unit.status == "completed" and unit.restarts > before else None

        with trio.move_on_after(request.timeout):
            now = await self._until(name, over)
            if now is None or now.token != token or now.status == "pending":
                status = "forgotten" if now is None else now.status
                raise Refused(
                    f"{name}'s run ended before it was ready again ({name} is {status}); "
                    "start it again with `unitsync sync run`",
                    code="no_run",
                    unit=name,
                )
            if now.status == "failed":
                raise UnitFailed(
                    f"{name} failed instead of becoming ready again: {now.reason}", unit=name
                )
            return Ok(unit=name, message=f"{name} restarted and is ready again")
        raise WaitTimeout(
            f"{name} was not ready again within {request.timeout:g}s (it is "
            f"{self.graph.units[name].status if name in self.graph.units else 'forgotten'}); "
            "its `run` goes on; `unitsync sync status` shows when it is ready",
            code="timeout",
            unit=name,
        )

    def _live_run(self, name: str, what: str) -> tuple[Unit, str]:
        """The unit and its run's token, if a live `run` holds that run; else refused,
        saying what to do instead."""
        unit = self.graph.get(name)
        owner = unit.owner
        if unit.status in ("pending", "failed") or owner is None:
            raise Refused(
                f"unit {name!r} is {unit.status} and no `unitsync sync run` runs it: nothing "
                f"to {what}"
                + ("; `unitsync sync reset` makes it pending" if unit.status != "pending" else ""),
                code="no_run",
                unit=name,
            )
        if owner.kind != "run":
            raise Refused(
                f"unit {name!r} is run by a script (pid {owner.pid}, {owner.command}), not by "
                f"`unitsync sync run`: only a `run` can be told to {what}; stop that script "
                f"(`kill {owner.pid}`)",
                code="no_run",
                unit=name,
            )
        if self.owner_alive(name) is False:
            raise Refused(
                f"unit {name!r}'s `unitsync sync run` (pid {owner.pid}) is gone: nothing to "
                f"{what}; `unitsync sync reset {name}` makes it pending",
                code="no_run",
                unit=name,
            )
        return unit, unit.token

    async def _until(self, name: str, done: Callable[[Unit | None], Unit | None]) -> Unit | None:
        """Wait until `done` says the unit is where it is waited for (`done`'s answer);
        woken by each change to it, on this host or another."""
        while True:
            with self.waiters.watching([name]) as woken:
                unit = self.graph.units.get(name)
                found = done(unit)
                if found is not None or unit is None:
                    return found
                with woken:
                    await trio.sleep_forever()

    async def reset(self, request: Reset) -> Ok:
        """Back to pending; a unit whose run's owner still runs is refused (`reset UNIT`) or
        left alone (`reset --all`, naming it), unless `force`: then its run is superseded."""
        name, force = request.unit, request.force
        left_alone: list[str] = []

        def decide() -> list[Record]:
            now, graph = self.clock(), self.graph
            if name is not None:
                return graph.reset(name, now=now, force=force, owner_alive=self.owner_alive)
            records, left_alone[:] = graph.reset_all(
                now=now, force=force, owner_alive=self.owner_alive, only_failed=request.failed
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
            notes=[
                self.graph.live_run(each, owner_alive=self.owner_alive(each)) for each in left_alone
            ],
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
            return StatusReply(
                views,
                self.clock(),
                boot=graph.boot,
                boot_since=graph.boot_since,
                replica_behind_since=self.store.replica_behind_since,
            )

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
        """A `run` connection ended with its command's end not recorded: record the end it
        reported while etcd could not take it, or fail what it held."""
        for name, token in self.holds.dropped(holder).items():
            if name in holder.unrecorded:
                reported = (holder.unrecorded.pop(name),)
                log.info("%s: recording the end its run reported while etcd was away", name)
                await self._fail_lost_run(name, token, "", reported)
            else:
                what = "ended without reporting how its command ended"
                await self._fail_lost_run(name, token, what)

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

    async def _fail_lost_run(
        self, name: str, token: str, what: str, reported: tuple[str | None] | None = None
    ) -> None:
        """Fail the run `token` of `name`, its `run` gone (or record the end it `reported`:
        a failure's reason, None for completed). A store that recovers unaided (etcd) tries
        until it takes it: no `run` is left to tell."""

        def decide() -> list[Record]:
            unit = self.graph.units.get(name)
            if (
                unit is None
                or unit.token != token
                or unit.status not in ("started", "completed")
                or unit.owner is None
                or unit.owner.kind != "run"
            ):
                return []  # its run ended otherwise meanwhile (reported, reset, a new run)
            if reported is not None:
                if reported[0] is None:
                    return self.graph.complete(name, now=self.clock(), token=token)
                return self.graph.fail(name, reported[0], now=self.clock(), token=token)
            owner = unit.owner
            reason = f"lost its run: `unitsync sync run` (pid {owner.pid}, {owner.command}) {what}"
            log.warning("%s %s", name, reason)
            return self.graph.fail(name, reason, now=self.clock())

        while True:
            try:
                await self.commit(decide, [name], confirm_noop=False)
                return
            except NotDurable:
                if not self.store.recovers_unaided:
                    raise
                await trio.sleep(LOST_RUN_RETRY)  # etcd is away: its waiters wait the same


def _on(dep: str, condition: str) -> str:
    """A dependency as `want` says it: `db`, or `db on started` (not `completed`)."""
    return dep if condition == DEFAULT_CONDITION else f"{dep} on {condition}"


def _pid(unit: Unit) -> str:
    return str(unit.owner.pid) if unit.owner is not None else "?"


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


def _keep_newest(table: OrderedDict[str, Any], key: str, value: object) -> None:
    """`table[key] = value`, newest last, keeping the SUPERSEDED_KEPT newest entries."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > SUPERSEDED_KEPT:
        table.popitem(last=False)
