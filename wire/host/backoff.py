"""Exponential backoff: the one pause-and-double that every retry loop uses.

Owns the sequence of pauses between attempts (a first pause, doubling up to a longest one)
and nothing else: no clock, no sleeping, no exceptions. Each caller sleeps the way its
loop does (trio, a blocking sleep, a reactor's timer) and decides when to give up.
"""

from __future__ import annotations

FIRST_DELAY = 0.05
"""A restarting agent is back within tens of milliseconds: try soon."""
MAX_DELAY = 1.0
"""An agent that is down for longer is picked up within a second of its return."""


class Backoff:
    """Pauses of `first` seconds, doubling after each, up to `longest`."""

    def __init__(self, first: float = FIRST_DELAY, longest: float = MAX_DELAY) -> None:
        self.first = first
        self.longest = longest
        self.delay = first
        """The pause `next` gives next."""

    def next(self, within: float | None = None) -> float:
        """The pause before the next try (at most `within`, the time left, if given); the
        one after it is twice as long, up to `longest`."""
        delay = self.delay if within is None else min(self.delay, within)
        self.delay = min(self.delay * 2, self.longest)
        return delay

    def reset(self) -> None:
        """The peer answered: the next trouble starts again from `first`."""
        self.delay = self.first
