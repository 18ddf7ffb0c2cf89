"""A small blocking event loop: readable descriptors and timers, in one thread.

`run` waits on several things at once while its service runs (the service's exit,
its output, a readiness probe, a notification socket, deadlines), and the CLI may
not import trio (start-up time is a feature). `poll(2)` plus a heap of timers is all it
takes (not `selectors`, whose import is 0.4 ms of every `run`).

Rules: callbacks run in the loop's thread, one at a time, and must not block for
long. A signal interrupts the wait (PEP 475 retries it after the Python handler
ran), so handlers that only forward the signal need no wake-up. With no reader
ready and no timer set, `run_once` sleeps in the kernel: an idle loop costs no CPU.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import select
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
    """Owns one poll set; the descriptors registered in it stay their owners' to close."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._readers: dict[int, tuple[Callback]] = {}
        """Each reader's callback, in a tuple of its own: a reader removed and added again
        (the same number, another descriptor) is a new entry, not told of the old one's news."""
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        """Breaks ties between timers due at the same moment: first set, first run."""

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def add_reader(self, fd: int, callback: Callback) -> None:
        if fd in self._readers:
            raise KeyError(f"descriptor {fd} is already watched")
        self._poll.register(fd, select.POLLIN)
        self._readers[fd] = (callback,)

    def remove_reader(self, fd: int) -> None:
        del self._readers[fd]
        with contextlib.suppress(KeyError):  # (dropped when found closed)
            self._poll.unregister(fd)

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
        timeout = None  # milliseconds, rounded up: a timer is never found not yet due
        if self._timers:
            timeout = math.ceil(max(self._timers[0][0] - self.now(), 0.0) * 1000)
        watched = dict(self._readers)
        for fd, events in self._poll.poll(timeout):  # (POLLHUP, POLLERR: read to learn it)
            if events & select.POLLNVAL:  # closed while watched: dropped unsaid, as by epoll
                self._poll.unregister(fd)
                continue
            entry = watched.get(fd)
            if entry is not None and self._readers.get(fd) is entry:  # not removed meanwhile
                entry[0]()
        now = self.now()
        while self._timers and self._timers[0][0] <= now:
            _when, _order, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def close(self) -> None:
        for fd in list(self._readers):
            self.remove_reader(fd)
