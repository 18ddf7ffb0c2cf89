"""What `start` shows while it waits (SPEC §2).

On a terminal, in its foreground: one line, redrawn in place, naming what it waits for
and for how long. Otherwise (logs, CI, and a process in the background of its terminal,
whose `\r\x1b[K` would erase the prompt and the command being typed): one line when
waiting begins, one when it proceeds. Which it is, is asked again at every draw
(`tcgetpgrp`), so `fg` and `bg` (or Ctrl-Z) switch between the two as it goes.

One clock: the counter runs from when the agent found the start blocked (the first
`Waiting`, less what the agent had counted by then), as the agent's final "started after
waiting" figure does; connecting and an agent's start-up are not waiting.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

from unitsync.client import UnitsyncError
from unitsync.wire.protocol import Started, Waiting
from unitsync.wire.timefmt import duration as format_duration

CLEAR_LINE = "\r\x1b[K"
TICK = 1.0
"""How often a terminal's line is redrawn (seconds): the counter shows tenths past a second."""


class StartProgress:
    def __init__(self, unit: str, stream: TextIO) -> None:
        self.unit = unit
        self.stream = stream
        self.terminal = stream.isatty()
        self.began = time.monotonic()
        self.wait_began: float | None = None
        """When the wait began, on this clock (from the first `Waiting`)."""
        self.waiting: Waiting | None = None
        self.unreachable: UnitsyncError | None = None
        self.drawn = False
        """A line drawn in place is on the terminal, not yet ended."""
        self.said_waiting = False
        self.said_unreachable = False

    @property
    def tick(self) -> float | None:
        """How often to be told the latest news again: on a terminal, which may be (or come
        to be) in the foreground, to redraw the counter; never otherwise."""
        return TICK if self.terminal else None

    @property
    def live(self) -> bool:
        """Redraw in place now? On a terminal, unless our process group is in its background."""
        if not self.terminal:
            return False
        try:
            return os.tcgetpgrp(self.stream.fileno()) == os.getpgrp()
        except OSError:  # not our controlling terminal: no job control puts us behind
            return True

    def update(self, event: Waiting | UnitsyncError) -> None:
        if isinstance(event, Waiting):
            if self.waiting is None:
                self.wait_began = time.monotonic() - event.waited
            self.waiting, self.unreachable = event, None
            self.said_unreachable = False
            text = f"{self.unit}: waiting for {', '.join(event.on)}"
            if self.live:
                self._draw(text)
            elif not self.said_waiting:
                self.said_waiting = True
                self._line(text)
        else:
            self.unreachable = event
            if self.live:
                self._draw(f"{self.unit}: agent unreachable, reconnecting ({event})")
            elif not self.said_unreachable:
                self.said_unreachable = True
                self._line(f"{self.unit}: agent unreachable, reconnecting: {event}")

    def done(self, started: Started) -> None:
        self.clear()
        waited = f" after waiting {format_duration(started.waited)}" if self.waiting else ""
        self._line(f"{self.unit}: started{waited}")
        for note in started.notes:  # it went ahead although a dependency failed
            self._line(f"note: {note}")

    def interrupted(self) -> None:
        """Ctrl-C: end the live line (so the prompt does not land on it) and say so."""
        self.clear()
        waiting = f" while waiting for {', '.join(self.waiting.on)}" if self.waiting else ""
        elapsed = format_duration(time.monotonic() - (self.wait_began or self.began))
        self._line(f"unitsync: {self.unit}: interrupted{waiting} ({elapsed})")

    def clear(self) -> None:
        """End a line drawn in place: erased in the foreground; in the background (moved
        there meanwhile) left as it is, ended, so that nothing of the prompt is erased."""
        if self.drawn:
            self.stream.write(CLEAR_LINE if self.live else "\n")
            self.stream.flush()
            self.drawn = False

    def _draw(self, text: str) -> None:
        elapsed = format_duration(time.monotonic() - (self.wait_began or self.began))
        self.drawn = True  # first: a Ctrl-C right after the write must still end the line
        self.stream.write(f"{CLEAR_LINE}{text} ({elapsed})")
        self.stream.flush()

    def _line(self, text: str) -> None:
        if self.drawn:  # moved to the background: end the drawn line, do not erase it
            self.stream.write("\n")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()
