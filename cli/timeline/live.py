"""The live watch's timeline, kept up to date one unit at a time.

`build_timeline` reads every unit's history: right for a command that prints once, far
too slow to redo on every refresh of `status --watch` with 10,000 units. Here a change
only marks its unit; the next frame rebuilds the rows of the units marked since the last
one and, if any were, the axis (the boot's first and last moment) from the kept rows. A
frame with no change in between costs nothing per unit. A new boot (a workspace restart)
is the one change that rebuilds every row.

Not thread-safe: the caller (the live board) holds its lock around every call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from unitsync.wire.protocol import UnitView

from .model import Row, Timeline, unit_row


class LiveTimeline:
    """The latest boot's rows, one per unit that did something in it (or waits in it)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        """A running row's `ran` is as of its unit's last change (bars do not use it)."""
        self._marked: set[str] = set()
        self._latest_boot: dict[str, int] = {}
        """The boot of each unit's last history entry: the highest is the one shown."""
        self._boots: Counter[int] = Counter()
        self._boot = 0
        self._origin: float | None = None
        self._last: float | None = None
        self._open = False
        """Whether a row still runs or waits: the axis then reaches `now`."""

    def mark(self, names: Iterable[str]) -> None:
        """These units changed (or are gone): their rows are rebuilt before the next frame."""
        self._marked.update(names)

    def timeline(
        self,
        units: Mapping[str, UnitView],
        now: float,
        wait_began: Mapping[str, float],
        shown: Iterable[str],
    ) -> Timeline:
        """The timeline's axis as of `now`, with the rows of the units `shown` (if any)."""
        if self._marked:
            self._catch_up(units, now, wait_began)
        last = [] if self._last is None else [self._last]
        horizon = max([*last, now] if self._open else last, default=now)  # as build_timeline
        rows = tuple(self.rows[name] for name in shown if name in self.rows)
        return Timeline(self._boot, (self._boot,), self._origin, now, horizon, rows)

    def _catch_up(
        self, units: Mapping[str, UnitView], now: float, wait_began: Mapping[str, float]
    ) -> None:
        for name in self._marked:
            if (old := self._latest_boot.pop(name, None)) is not None:
                self._boots[old] -= 1
                if not self._boots[old]:
                    del self._boots[old]
            view = units.get(name)
            if view is not None and view.history:
                self._latest_boot[name] = view.history[-1].boot
                self._boots[view.history[-1].boot] += 1
        boot = max(self._boots, default=1)
        if boot != self._boot:  # a new boot: every unit's row is another run
            self._boot = boot
            self._marked = set(units) | set(self.rows)
        for name in self._marked:
            view = units.get(name)
            row = None if view is None else unit_row(view, boot, True, now, wait_began.get(name))
            if row is None:
                self.rows.pop(name, None)
            else:
                self.rows[name] = row
        self._marked.clear()
        self._axis()

    def _axis(self) -> None:
        """The boot's first and last moment, and whether anything is still open."""
        first, last, self._open = None, None, False
        for row in self.rows.values():
            for moment in (row.wait_began, row.started, row.ended):
                if moment is not None:
                    first = moment if first is None or moment < first else first
                    last = moment if last is None or moment > last else last
            self._open = self._open or row.outcome in ("running", "waiting")
        self._origin, self._last = first, last
