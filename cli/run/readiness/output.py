"""`--ready-log`: the service's output searched for a line, as `run` passes it through.

The output itself is `run.output.Relay`'s (pipes or a pseudo-terminal, copied unchanged
as it comes); this reads along (a tap) until one line matches. Where the service's output
goes to a pipe or a file, it gets `PYTHONUNBUFFERED=1` (unless set): a Python program
would otherwise hold its lines in an 8 KiB buffer and its ready line would come too late.

Until one line matches, each complete line is searched (`re.search`) with its line end
and terminal escape sequences (colours) removed; after that the output is only copied.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..children import Child, Exits
from ..output import escapes
from ..reactor import Reactor
from .detector import Listener

MAX_LINE = 65536
"""A line longer than this without a newline is searched as it is and not kept: `run`'s
memory stays bounded whatever the service writes."""


class LogReady:
    """Ready on the first line of output that matches `pattern`."""

    reads_output = True
    """`ServiceRun` passes the output through a `Relay` and tells `seen` each chunk."""

    def __init__(self, pattern: re.Pattern[str], stdout: int = 1, stderr: int = 2) -> None:
        self.pattern = pattern
        self.outs = (stdout, stderr)
        self.partial: dict[int, bytearray] = {}
        """The line being written, per stream, while lines are searched."""
        self.searching = True
        self.listener: Listener | None = None

    def child_options(self) -> dict[str, Any]:
        out, err = self.outs
        if not (os.isatty(out) and os.isatty(err)) and "PYTHONUNBUFFERED" not in os.environ:
            return {"env": {**os.environ, "PYTHONUNBUFFERED": "1"}}
        return {}

    def begin(self, reactor: Reactor, exits: Exits, service: Child, listener: Listener) -> None:
        self.listener = listener

    def stop(self) -> None:
        self.searching = False
        self.partial.clear()

    def waiting_for(self) -> str:
        return f"no output line matched {self.pattern.pattern!r}"

    def finish(self) -> None:
        """Search the last lines the service left with no newline."""
        for partial in self.partial.values():
            if self.searching and partial:
                self._search([bytes(partial)])
        self.partial.clear()

    def seen(self, stream: int, data: bytes) -> None:
        """A chunk of the service's output (a `Relay` tap)."""
        if not self.searching:
            return
        partial = self.partial.setdefault(stream, bytearray())
        partial += data
        *lines, rest = partial.split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        partial[:] = rest
        self._search(lines)

    def _search(self, lines: list[bytes]) -> None:
        assert self.listener is not None
        for line in lines:
            text = escapes().sub(b"", line).rstrip(b"\r").decode("utf-8", "replace")
            if self.pattern.search(text):
                self.listener.ready(f"output matched {self.pattern.pattern!r}")
                return
