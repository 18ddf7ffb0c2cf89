"""What `start` shows while it waits (SPEC §2).

On a terminal: one line, redrawn in place, naming what it waits for and for how
long. Otherwise (logs, CI): one line when waiting begins, one when it proceeds.

One clock: the counter runs from when the agent found the start blocked (the first
`Waiting`, less what the agent had counted by then), as the agent's final "started after
waiting" figure does; connecting and an agent's start-up are not waiting.
"""

from __future__ import annotations

import time
from typing import TextIO

from unitsync.client import UnitsyncError
from unitsync.wire.protocol import Started, Waiting
from unitsync.wire.timefmt import duration as format_duration

CLEAR_LINE = "\r\x1b[K"


class StartProgress:
    def __init__(self, unit: str, stream: TextIO) -> None:
        self.unit = unit
        self.stream = stream
        self.live = stream.isatty()
        self.began = time.monotonic()
        self.wait_began: float | None = None
        """When the wait began, on this clock (from the first `Waiting`)."""
        self.waiting: Waiting | None = None
        self.unreachable: UnitsyncError | None = None

    def update(self, event: Waiting | UnitsyncError) -> None:
        if isinstance(event, Waiting):
            first = self.waiting is None
            if first:
                self.wait_began = time.monotonic() - event.waited
            self.waiting, self.unreachable = event, None
            if self.live:
                self._draw(f"{self.unit}: waiting for {', '.join(event.on)}")
            elif first:
                self._line(f"{self.unit}: waiting for {', '.join(event.on)}")
        else:
            if self.live:
                self._draw(f"{self.unit}: agent unreachable, reconnecting ({event})")
            elif self.unreachable is None:
                self._line(f"{self.unit}: agent unreachable, reconnecting: {event}")
            self.unreachable = event

    def done(self, started: Started) -> None:
        self.clear()
        waited = f" after waiting {format_duration(started.waited)}" if self.waiting else ""
        self._line(f"{self.unit}: started{waited}")

    def interrupted(self) -> None:
        """Ctrl-C: end the live line (so the prompt does not land on it) and say so."""
        self.clear()
        waiting = f" while waiting for {', '.join(self.waiting.on)}" if self.waiting else ""
        elapsed = format_duration(time.monotonic() - (self.wait_began or self.began))
        self._line(f"unitsync: {self.unit}: interrupted{waiting} ({elapsed})")

    def clear(self) -> None:
        if self.live and (self.waiting or self.unreachable):
            self.stream.write(CLEAR_LINE)
            self.stream.flush()

    def _draw(self, text: str) -> None:
        elapsed = format_duration(time.monotonic() - (self.wait_began or self.began))
        self.stream.write(f"{CLEAR_LINE}{text} ({elapsed})")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
