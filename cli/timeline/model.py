"""How one boot's start-up went, read from the units' histories (SPEC §9).

Pure: unit views in, figures out. No I/O and no clock (the caller passes `now`), so the
same model feeds `timeline`, `critical-chain`, `blame` and the live watch, and tests
build it from hand-made views.

One row per unit of the boot, describing the unit's **last run** in that boot: when its
start began to wait, when it started, when that run ended and how. Earlier runs (a failed
attempt, a `--rerun`) are counted in `runs` but not drawn: the last run is the one the
unit's dependents saw. A reset starts a unit's story over, so a run it cut short is not
shown. A unit's history says which boot each entry belongs to (`Transition.boot`); an
entry after the boot (the reset of the next workspace restart) still ends a run begun in
it, so an old boot's runs are never shown as open.

A run whose command was started again (a restart policy, `sync restart`) is still one
run, drawn as one `Segment` per start of its command: the first from the run's start,
each next one from a restart.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from unitsync.wire.errors import NotInHistory
from unitsync.wire.protocol import Transition, UnitView

Outcome = Literal["completed", "failed", "running", "interrupted", "waiting", "pending"]
"""What became of a row's run: `interrupted` is a run the next workspace restart cut
short; `waiting` a start blocked on its dependencies now; `pending` a unit of the boot
that no start has asked for (since its last reset)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One start of a run's command: from the run's start or a restart to what followed
    (ready, failed, the next restart; None: it runs now)."""

    started: float
    ended: float | None
    outcome: Outcome | Literal["restarted"]
    reason: str
    """For a restart: why it was started again (`restarting in 2s after exit status 1
    (restart 1 of 5)`); for the first: ""."""


@dataclass(frozen=True, slots=True)
class Row:
    """One unit's last run in the boot. Times are Unix times; None where they do not apply."""

    name: str
    outcome: Outcome
    wait_began: float | None
    """When the run's start began to wait for its dependencies (None: it did not wait, or
    the agent did not say)."""
    started: float | None
    ended: float | None
    """When the run completed, failed or was interrupted (a failure can end a run that
    never started: its dependency failed while it waited)."""
    ran: float | None
    """How long the run lasted: to its end, or to `now` while it runs."""
    reason: str
    runs: int
    """How many times the unit started in this boot since its last reset (the row shows
    the last)."""
    deps: tuple[str, ...]
    """The units this one wants, as the agent knows them now."""
    required: tuple[str, ...] = ()
    """What it needs of each of `deps`, in the same order (`want --on`; `completed` where
    none is given)."""

    segments: tuple[Segment, ...] = ()
    """The run's starts of its command, if it was restarted (empty: it was not); then
    `started` is the first's start, `ended`, `outcome` and `reason` the last's end."""

    def condition(self, dep: str) -> str:
        """What this unit needs of `dep` (one of its `deps`)."""
        for name, on in zip(self.deps, self.required, strict=False):
            if name == dep:
                return on
        return "completed"

    @property
    def restarts(self) -> int:
        return max(len(self.segments) - 1, 0)

    @property
    def waited(self) -> float | None:
        if self.wait_began is None or self.started is None:
            return None
        return self.started - self.wait_began

    @property
    def first(self) -> float | None:
        """The row's earliest moment: where its bar begins."""
        for moment in (self.wait_began, self.started, self.ended):
            if moment is not None:
                return moment
        return None


@dataclass(frozen=True, slots=True)
class Timeline:
    boot: int
    boots: tuple[int, ...]
    """Every boot found in the histories, oldest first."""
    origin: float | None
    """The boot's first event (the first start, wait or outcome): what `@` times count
    from. None if nothing happened in it."""
    now: float
    horizon: float
    """Where the time axis ends: the last moment of any row (`now` while something runs)."""
    rows: tuple[Row, ...]
    """Rows in the order they began (rows that never began last, by name)."""
    cut: tuple[str, ...] = ()
    """Units of the rows whose views left out something the timeline uses (dependencies,
    reasons: a journal written before the bounds), by name."""

    @property
    def span(self) -> float:
        return 0.0 if self.origin is None else self.horizon - self.origin

    def offset(self, moment: float) -> float:
        """Seconds since the boot's first event."""
        assert self.origin is not None
        return moment - self.origin


def boots_in(units: Iterable[UnitView]) -> tuple[int, ...]:
    return tuple(sorted({entry.boot for unit in units for entry in unit.history}))


def build_timeline(
    units: list[UnitView],
    now: float,
    boot: int | None = None,
    wait_began: Mapping[str, float] | None = None,
    began: float | None = None,
) -> Timeline:
    """The timeline of `boot` (default: the latest one in the histories).

    `wait_began` tells when a start that is waiting right now began to wait, for callers
    that saw it happen (the live watch); the views alone do not say. `began` is when the
    boot began, where the caller knows it; otherwise the boot's first event is the first
    moment of any row (a start beginning to wait, a start, an outcome): resets are not
    events of the start-up, and a unit left pending by an old reset must not stretch the
    axis back to it.
    """
    boots = boots_in(units) or (1,)
    latest = boots[-1]
    if boot is None:
        boot = latest
    elif boot not in boots:
        raise NotInHistory(
            f"no history entry belongs to boot {boot}; the histories hold boot(s) "
            f"{', '.join(map(str, boots))}; pick one of those with --boot"
        )
    current = boot == latest
    hints = wait_began or {}
    rows, moments = [], []
    for unit in units:
        row = unit_row(unit, boot, current, now, hints.get(unit.name))
        if row is None:
            continue
        rows.append(row)
        moments += [m for m in (row.wait_began, row.started, row.ended) if m is not None]
        moments += [s.ended for s in row.segments if s.ended is not None]
    origin = min(moments, default=None)
    if began is not None and (origin is None or began < origin):
        origin = began
    open_rows = any(row.outcome in ("running", "waiting") for row in rows)
    horizon = max([*moments, now] if open_rows else moments, default=now)
    rows.sort(key=_row_order)
    shown = {row.name for row in rows}
    cut = tuple(sorted(u.name for u in units if u.name in shown and _cut_for_timeline(u)))
    return Timeline(boot, boots, origin, now, horizon, tuple(rows), cut)


TIMELINE_FIELDS = ("dependencies:", "waiting_on:", "reason:", "history:")
"""The fields of a view a timeline uses: when one was cut, the timeline says so."""


def _cut_for_timeline(unit: UnitView) -> bool:
    """Did the view leave out what a timeline uses (not the units that want it, not its
    owner's command)?"""
    return any(what.startswith(TIMELINE_FIELDS) for what in unit.cut)


def by_run_time(timeline: Timeline) -> list[Row]:
    """`blame`: the rows that ran, longest run first (ties by name)."""
    ran = [row for row in timeline.rows if row.ran is not None]
    return sorted(ran, key=lambda row: (-(row.ran or 0.0), row.name))


# --- one unit --------------------------------------------------------------------------------


def unit_row(
    unit: UnitView, boot: int, current: bool, now: float, wait_began: float | None = None
) -> Row | None:
    """The unit's row in `boot` (`current`: the latest boot), None if it did nothing there.

    One unit alone decides its row, so a live view can rebuild just the units that changed.
    """
    story = _story(unit.history, boot)
    if not story and (unit.history or not current):
        return None
    row = _row(unit, story, current, now, wait_began)
    required = tuple(d.required for d in unit.dependencies)
    return replace(row, required=required) if set(required) - {"completed"} else row


def _story(history: list[Transition], boot: int) -> list[int]:
    """The indices of the unit's entries in `boot` since its last reset there.

    A reset (by hand, or the workspace restart that opens a boot) starts the unit's story
    over: a run it cut short is not part of how the unit came up.
    """
    story: list[int] = []
    for i, entry in enumerate(history):
        if entry.boot != boot:
            continue
        if entry.to == "pending":
            story.clear()
        story.append(i)
    return story


def _row(unit: UnitView, story: list[int], current: bool, now: float, hint: float | None) -> Row:
    history = unit.history
    deps = tuple(d.unit for d in unit.dependencies)
    starts = [i for i in story if history[i].to == "started" and not history[i].restart]
    if current and unit.waiters:
        # A start waits now; its run has not begun, so this row is that wait.
        needs = {d.unit: d.required for d in unit.dependencies if d.required != "completed"}
        names = [f"{dep} ({needs[dep]})" if dep in needs else dep for dep in unit.waiting_on]
        on = f"waiting on {', '.join(names)}" if names else "waiting"
        return Row(unit.name, "waiting", hint, None, None, None, on, len(starts), deps)
    attempts = []
    restarted = False  # within a run whose command was started again: its end is the run's
    for i in story:
        entry = history[i]
        if entry.to == "started":
            restarted = entry.restart
            if not entry.restart:
                attempts.append(i)
        elif _without_run(entry) and not restarted:
            attempts.append(i)
    if not attempts:
        return Row(unit.name, "pending", None, None, None, None, "", 0, deps)
    last = history[attempts[-1]]
    if last.to != "started":
        return Row(unit.name, last.to, None, None, last.at, None, last.reason, len(starts), deps)
    return _run(unit.name, history, attempts[-1], len(starts), now, deps)


def _without_run(entry: Transition) -> bool:
    """An outcome with no run: failed while its start waited (a dependency failed), or
    `fail` / `complete --force` of a unit that was not running."""
    return entry.to in ("completed", "failed") and entry.from_ != "started"


def _run(
    name: str, history: list[Transition], i: int, runs: int, now: float, deps: tuple[str, ...]
) -> Row:
    restarts = _restarts_of(history, i)
    if restarts:
        return _restarted_run(name, history, i, restarts, runs, now, deps)
    start = history[i]
    wait_began = start.at - start.waited if start.waited is not None else None
    end = history[i + 1] if i + 1 < len(history) else None
    if end is None:
        return Row(name, "running", wait_began, start.at, None, now - start.at, "", runs, deps)
    outcome: Outcome = end.to if end.to in ("completed", "failed") else "interrupted"
    reason = end.reason or ("new run" if end.to == "started" else "")
    return Row(name, outcome, wait_began, start.at, end.at, end.at - start.at, reason, runs, deps)


def _restarts_of(history: list[Transition], i: int) -> list[int]:
    """The restarts of the run that began at entry `i`: the moves to started that follow
    it with no other run or reset between."""
    found = []
    for j in range(i + 1, len(history)):
        entry = history[j]
        if entry.to == "pending" or (entry.to == "started" and not entry.restart):
            break
        if entry.to == "started":
            found.append(j)
    return found


def _restarted_run(
    name: str,
    history: list[Transition],
    i: int,
    restarts: list[int],
    runs: int,
    now: float,
    deps: tuple[str, ...],
) -> Row:
    """A run whose command was started again: one segment per start of it, each up to the
    next restart; the last up to the run's end (it failed, or is ready: completed; or it
    goes on: running)."""
    start = history[i]
    wait_began = start.at - start.waited if start.waited is not None else None
    begins = [i, *restarts]
    segments = [
        Segment(history[b].at, history[n].at, "restarted", history[b].reason if k else "")
        for k, (b, n) in enumerate(itertools.pairwise(begins))
    ]
    last = restarts[-1]
    outcome: Outcome = "running"
    ended: float | None = None
    reason = ""
    for entry in history[last + 1 :]:
        if entry.to == "started" or entry.to == "pending":
            if outcome == "running":
                outcome, ended = "interrupted", entry.at
                reason = entry.reason or ("new run" if entry.to == "started" else "")
            break
        outcome, ended, reason = entry.to, entry.at, entry.reason  # type: ignore[assignment]
        if entry.to == "failed":
            break
    segments.append(Segment(history[last].at, ended, outcome, history[last].reason))
    ran = (now if ended is None else ended) - start.at
    return Row(
        name,
        outcome,
        wait_began,
        start.at,
        ended,
        ran,
        reason,
        runs,
        deps,
        segments=tuple(segments),
    )


def _row_order(row: Row) -> tuple[bool, float, str]:
    first = row.first
    return (first is None, first or 0.0, row.name)


def note_waits(wait_began: dict[str, float], views: Iterable[UnitView], at: float | None) -> None:
    """Remember when each start began to wait, for `build_timeline(wait_began=...)`.

    For a watcher: it sees a unit's view change to `waiters > 0` at the moment the wait
    begins (`at`, the event's time), which no view says by itself. A full view (`at`
    None) only says who waits, not since when, so it adds no guess.
    """
    for view in views:
        if not view.waiters:
            wait_began.pop(view.name, None)
        elif at is not None:
            wait_began.setdefault(view.name, at)
