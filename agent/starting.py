"""The start wait: a `start` waits until its unit is ready, then starts it.

Rules:

- A start first registers the unit (`admit`, after `declare_once` for `--once`), which
  refuses a second concurrent run early; then it looks at the unit's readiness.
- Ready: the start is decided again at that moment (`Graph.start`) and committed; its
  reply says how long it waited in all (a retry's `waited_before` included, across
  agents). The wait is the time it was blocked on dependencies (`_Wait`), nothing else:
  a start found ready at once waited 0 (or its `waited_before`), however long its
  client took to connect (an agent it had to start) or its commits took. With `hold`,
  the run is its connection's from then on.
- A dependency failed: the unit fails too (`dependency X failed`), and the start is
  answered with `DependencyFailed`.
- Neither: it waits, told `Waiting` (again only when what it waits for changes), woken
  by any change to the unit or to what it waits for (`Waiters`), until then doing `idle`
  (the connection watches for a hang-up). It counts as waiting in `status` and for
  watchers only while really blocked (`_Blocked`).
- A start asked again with the token of a run already under way (a retry after a lost
  reply, a `run` back after an agent restart) gets that run's reply: nothing is repeated
  (`same_run`). A `run` taking back a run that is gone is refused (`Superseded` if a
  newer run replaced it).
- What it was about to do no longer holds when decided (only a shared store decides
  again, after another agent's change): it looks afresh (`_Overtaken`).
- The store could not make the change durable (`NotDurable`): if what made the unit
  ready (or failed) was refused too, it waits on. Otherwise, a store that recovers
  unaided (etcd unreachable) is waited for, retried every START_RETRY (bounded by the
  client's timeout); a store that needs someone to act (a full disk) refuses the start
  at once, saying so (exit 6).
- Never two runs for one start: once an attempt may have been made (`MaybeMade`: etcd
  took it, its answer was lost), the start tries again only while its run cannot have
  begun unseen. Its run, seen begun (`Service.runs_begun`), is its answer while under way,
  and `Superseded` once another change ended or replaced it; a graph rebuilt meanwhile
  (changes applied unseen) ends the start with `NotDurable`, "may or may not".

The graph is read from the service (`service.graph`, the store's) every time: the store
may replace it while a start waits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from unitsync.wire.errors import DependencyFailed, NotDurable, Refused, Superseded
from unitsync.wire.protocol import Start, Started, Waiting
from unitsync.wire.timefmt import timestamp

from .core.graph import WENT_AHEAD
from .core.records import Move, Record
from .core.views import owner_record
from .holds import Holder
from .service import Service
from .store.base import MaybeMade

START_RETRY = 1.0
"""A ready start whose change the store could not make durable tries again this often."""

Progress = Callable[[Waiting], Awaitable[None]]
"""How a start tells its client what it waits for."""
Idle = Callable[[], Awaitable[None]]
"""What a blocked start does until woken: the connection watches its socket for a hang-up."""


async def start_when_ready(
    service: Service,
    request: Start,
    progress: Progress,
    idle: Idle = trio.sleep_forever,
    holder: Holder | None = None,
) -> Started:
    """Wait until the unit is ready, then start it; fail it if a dependency failed.

    With `hold`, the run is `holder`'s connection's from then on (a `run`).
    """
    name = request.unit
    same = same_run(service, request)
    if same is not None:  # a retry of a start we acknowledged, or a `run` back
        if request.hold and holder is not None:
            service.holds.take(name, request.token, holder)
        return same
    if request.again:
        raise _gone(service, request)
    if request.once:  # before admit, which may refuse a completed unit as done
        await service.commit(lambda: service.graph.declare_once(name), [name], confirm_noop=False)
    await service.commit(
        lambda: service.graph.admit(
            name,
            now=service.clock(),
            rerun=request.rerun,
            once=request.once,
            owner_alive=service.owner_alive(name),
        ),
        [name],
        confirm_noop=False,
    )
    blocked = _Blocked(service, name)
    wait = _Wait(service.clock, max(request.waited_before, 0.0))
    try:
        return await _wait_and_start(service, request, wait, progress, idle, blocked, holder)
    finally:
        blocked.end()


def same_run(service: Service, request: Start) -> Started | None:
    """The reply to a start whose run is already under way: same token, run not over."""
    unit = service.graph.units.get(request.unit)
    if not request.token or unit is None or unit.token != request.token:
        return None
    held_service = unit.status == "completed" and unit.owner is not None
    if unit.status != "started" and not held_service:
        return None
    began = next((h for h in reversed(unit.history) if h.to == "started"), None)
    at, waited = (began.at, began.waited or 0.0) if began else (unit.since, 0.0)
    return Started(request.unit, at=at, waited=waited)


def _gone(service: Service, request: Start) -> Refused:
    """Why a `run` cannot take back its run (asked `again`, and it is not under way)."""
    name, graph = request.unit, service.graph
    unit = graph.units.get(name)
    if unit is None or graph.superseded(name, request.token):  # a newer run, a reset
        by = service.superseded.get(request.token, "a newer run")
        return Superseded(
            f"{name}: the run this `run` held was superseded by {by} while the agent restarted",
            unit=name,
            by=by,
        )
    return Refused(
        f"the run of {name!r} this `run` held was given up (the unit is now {unit.status}): "
        "its command goes on, but its end will not be recorded",
        code="not_started",
        unit=name,
    )


async def _wait_and_start(
    service: Service,
    request: Start,
    wait: _Wait,
    progress: Progress,
    idle: Idle,
    blocked: _Blocked,
    holder: Holder | None,
) -> Started:
    name = request.unit
    told: tuple[str, ...] | None = None
    maybe_made: int | None = None
    """`service.rebuilds` when an attempt to start may have been made (see `MaybeMade`)."""
    while True:
        if (same := same_run(service, request)) is not None:  # see NotDurable below
            return same
        if maybe_made is not None:
            _not_begun_unseen(service, request, maybe_made)
        readiness = service.graph.readiness(name)
        try:
            if readiness.failed is not None:
                blocked.end()
                raise await _dependency_failed(service, name, readiness.failed, wait)
            if readiness.ready:
                blocked.end()
                return await _start_now(service, request, wait, holder)
        except _Overtaken:
            continue
        except NotDurable as exc:
            if isinstance(exc, MaybeMade) and readiness.ready and maybe_made is None:
                maybe_made = service.rebuilds  # (ready: the start's own attempt, not a fail)
            if service.graph.readiness(name) != readiness:
                continue  # what made it ready (or failed) was refused too: wait on
            if not service.store.recovers_unaided:
                raise  # the disk is full: say so now (exit 6), as for any change
            # etcd is unreachable: a start is a wait, bounded by its client's timeout, so
            # it waits on (ended, as any wait, by its client hanging up). If the commit
            # was made after all, its token shows it above.
            with trio.move_on_after(START_RETRY):
                await idle()
            continue
        blocked.begin()
        wait.begin()
        # Registered before telling the client, so a change during the send is not missed;
        # the send itself is outside the scope, so a wake-up never cuts a frame in half.
        with service.waiters.watching([name, *readiness.pending]) as woken:
            if readiness.pending != told:
                told = readiness.pending
                await progress(Waiting(name, list(told), since=wait.since(), waited=wait.so_far()))
            with woken:
                await idle()


def _not_begun_unseen(service: Service, request: Start, rebuilds: int) -> None:
    """Return if the start may try again: its run has not begun, as far as this agent saw
    every change since its attempt (`rebuilds`); raise if it did begin, or if that cannot
    be told."""
    name = request.unit
    begun = service.runs_begun.get(request.token)
    if begun is not None:  # and it is no longer under way (`same_run` said so)
        unit = service.graph.units.get(name)
        now = f"is now {unit.status}" if unit is not None else "was forgotten"
        raise Superseded(
            f"{name}: this start began a run at {timestamp(begun.at)} (etcd's answer was "
            f"lost on the way), and another change has ended it since: {name} {now}; "
            "start it again for a new run",
            unit=name,
            by="another change",
        )
    if service.rebuilds != rebuilds:
        raise NotDurable(
            f"{name}: etcd's answer to this start was lost, and the agent has since read the "
            "graph afresh: the start may or may not have been made; `unitsync sync status` "
            "shows which"
        )


async def _start_now(
    service: Service, request: Start, wait: _Wait, holder: Holder | None
) -> Started:
    """Start a unit found ready (a shared store decides again if that changed meanwhile)."""
    name = request.unit

    def decide() -> list[Record]:
        graph = service.graph
        if same_run(service, request) is not None:
            raise _Overtaken  # an attempt whose answer was lost went in: it is that run
        if not graph.readiness(name).ready:
            raise _Overtaken
        now = service.clock()
        return graph.start(
            name,
            now=now,
            token=request.token,
            waited=wait.so_far(now),
            rerun=request.rerun,
            once=request.once,
            owner=owner_record(request.owner, service.host),
            owner_alive=service.owner_alive(name),
            host=service.host,
        )

    move = (await service.commit(decide, [name]))[-1]
    assert isinstance(move, Move) and move.waited is not None
    if request.hold and holder is not None:
        service.holds.take(name, request.token, holder)
        service.show(name)  # the view sent with the move showed no hold yet
    notes = [f"{name} {move.reason}"] if move.reason.startswith(WENT_AHEAD) else []
    return Started(name, at=move.at, waited=move.waited, notes=notes)


async def _dependency_failed(
    service: Service, name: str, dep: str, wait: _Wait
) -> DependencyFailed:
    def decide() -> list[Record]:
        graph = service.graph
        if graph.readiness(name).failed != dep:
            raise _Overtaken
        unit = graph.units[name]
        reason = f"dependency {dep} failed"
        if unit.status == "failed" and unit.reason == reason and unit.since >= wait.arrived:
            return []  # since this start began (its own attempt whose answer was
            # lost, or another start of the unit that met the same failure): not twice
        now = service.clock()
        return graph.fail(name, reason, now=now, waited=wait.so_far(now))

    await service.commit(decide, [name, dep])
    dep_reason = service.graph.units[dep].reason
    because = f" ({dep_reason})" if dep_reason else ""
    return DependencyFailed(
        f"cannot start {name}: dependency {dep} failed{because}; {name} is now failed too",
        unit=name,
        dependency=dep,
    )


class _Overtaken(Exception):
    """What a start was about to do no longer holds: another agent's change got in first
    (only a shared store decides again); the start looks at the graph afresh."""


class _Wait:
    """How long a start has been blocked on its dependencies: from the first time it was
    found blocked here (earlier connections' `waited_before` added), never from its
    arrival, which may follow a slow connect or precede a slow commit."""

    def __init__(self, clock: Callable[[], float], before: float) -> None:
        self.clock = clock
        self.before = before
        self.began: float | None = None
        self.arrived = clock() - before
        """When this start (with its earlier connections) arrived, on this agent's clock."""

    def begin(self) -> None:
        if self.began is None:
            self.began = self.clock()

    def so_far(self, now: float | None = None) -> float:
        if self.began is None:
            return self.before
        return self.before + (self.clock() if now is None else now) - self.began

    def since(self) -> float:
        """When the whole wait began, on this agent's clock."""
        return (self.began if self.began is not None else self.clock()) - self.before


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
            self.service.show(self.name)

    def end(self) -> None:
        if self.active:
            self.active = False
            waiting = self.service.waiting
            waiting[self.name] -= 1
            if not waiting[self.name]:
                del waiting[self.name]
            self.service.show(self.name)
