"""A small blocking event loop: readable descriptors and timers, in one thread.

`run` waits on several things at once while its service runs (the service's exit,
its output, a readiness probe, a notification socket, deadlines), and the CLI may
not import trio (start-up time is a feature). `selectors` plus a heap of timers is
all it takes.

Rules: callbacks run in the loop's thread, one at a time, and must not block for
long. A signal interrupts the wait (PEP 475 retries it after the Python handler
ran), so handlers that only forward the signal need no wake-up. With no reader
ready and no timer set, `run_once` sleeps in the kernel: an idle loop costs no CPU.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import time
from collections.abc import Callable

Callback = Callable[[], None]


class Timer:
    """A pending call; `cancel` it to drop it (it stays in the heap, skipped when due)."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    """Owns one selector; the descriptors registered with it stay their owners' to close."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        """Breaks ties between timers due at the same moment: first set, first run."""

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        self._selector.unregister(fd)

    def call_at(self, when: float, callback: Callback) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(self.now() + delay, callback)

    def run_once(self) -> None:
        """Wait for the first reader or timer, then run every callback that is due."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        timeout = max(self._timers[0][0] - self.now(), 0.0) if self._timers else None
        registered = self._selector.get_map()
        for key, _events in self._selector.select(timeout):
            if registered.get(key.fd) is key:  # an earlier callback may have removed it
                key.data()
        now = self.now()
        while self._timers and self._timers[0][0] <= now:
            _when, _order, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def close(self) -> None:
        self._selector.close()
