"""Pushing changes to `status --watch` connections, without letting them slow anyone.

Views are taken when a change is committed and released, in journal order, once
that change is on disk: a watcher never sees what a crash could take back.
Each watcher has a bounded queue; one that falls behind loses its queue and gets
a fresh full view instead, so a stuck peer costs a fixed amount of memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import trio

from unitsync.wire.protocol import UnitView

QUEUE_LIMIT = 256
"""Unit views a watcher may have waiting before it is given a full view instead."""


class Watcher:
    def __init__(self, wanted: Callable[[str], bool], limit: int = QUEUE_LIMIT) -> None:
        self.wanted = wanted
        """Which units this watcher shows."""
        self.limit = limit
        self.queue: deque[UnitView] = deque()
        self.behind = False
        self._wakeup = trio.Event()

    def offer(self, views: Iterable[UnitView] | None) -> None:
        """Queue the views this watcher shows; None: units went away, send a full view."""
        if views is None:
            self.queue.clear()
            self.behind = True
            self._wakeup.set()
            return
        wanted = [view for view in views if self.wanted(view.name)]
        if not wanted:
            return
        if self.behind or len(self.queue) + len(wanted) > self.limit:
            self.queue.clear()
            self.behind = True
        else:
            self.queue.extend(wanted)
        self._wakeup.set()

    def resync(self) -> None:
        """What was queued may never have become durable: send a fresh full view instead."""
        self.queue.clear()
        self.behind = True
        self._wakeup.set()

    async def next(self) -> list[UnitView] | None:
        """The queued views, or None when the watcher fell behind and needs a full view."""
        while not self.queue and not self.behind:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        if self.behind:
            self.behind = False
            return None
        views = list(self.queue)
        self.queue.clear()
        return views


class Hub:
    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()
        self._staged: deque[tuple[int, list[UnitView] | None]] = deque()

    def stage(self, seq: int, views: list[UnitView] | None) -> None:
        """Hold views of a change until journal sequence `seq` is durable (None: a change a
        view per unit cannot tell, such as a unit forgotten: every watcher gets a full view)."""
        self._staged.append((seq, views))

    def release(self, durable: int) -> None:
        """Publish, in order, every staged change up to `durable`."""
        while self._staged and self._staged[0][0] <= durable:
            _seq, views = self._staged.popleft()
            for watcher in self.watchers:
                watcher.offer(views)

    def resync(self) -> None:
        """Staged changes were refused, not made durable: drop them, resend every watcher."""
        self._staged.clear()
        for watcher in self.watchers:
            watcher.resync()
