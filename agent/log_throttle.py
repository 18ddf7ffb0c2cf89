"""Rate-limited logging: one line of a kind per interval, the rest counted, not written.

Trouble that repeats (a peer that keeps breaking its connection, etcd staying
unreachable, a superseded run that keeps reporting) must not fill the log, yet the first
of it must show. A `Throttle` decides which lines go out; the caller writes them, so each
keeps its own logger, level and wording. Pure bookkeeping: no I/O, no trio (the clock is
given).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

KEYS_KEPT = 1024
"""Kinds of line remembered at once: the oldest is forgotten past this (and may then be
logged again), so an agent that runs for months keeps a bounded amount."""


class Throttle:
    """Lets one line per key through every `interval` seconds (`math.inf`: once per key)."""

    def __init__(
        self,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        keys_kept: int = KEYS_KEPT,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.keys_kept = keys_kept
        self.passed = 0
        """Lines let through so far, of every key."""
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        """Key -> (until when it is quiet, lines held back meanwhile)."""

    def passes(self, key: Hashable = None) -> int | None:
        """Whether a line of `key` may be logged now: None if not (it is counted), else how
        many were held back since the last one that was."""
        now = self.clock()
        quiet_until, held_back = self._keys.get(key, (-math.inf, 0))
        if now < quiet_until:
            self._keys[key] = (quiet_until, held_back + 1)
            return None
        self._keys[key] = (now + self.interval, 0)
        self._keys.move_to_end(key)
        while len(self._keys) > self.keys_kept:
            self._keys.popitem(last=False)
        self.passed += 1
        return held_back
