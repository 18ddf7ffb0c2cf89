"""Who owns a run, in the wire's terms (SPEC §7): the script that called `start`, or `run`.

A process is described by `wire.host.processes`, which knows nothing of the wire; here it
becomes the `Owner` that a `start` carries. Where there is no /proc there is no owner
(None): the agent then never takes the run's owner for gone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from unitsync.wire.host.processes import process, shortened
from unitsync.wire.protocol import Owner

from .words import shell_line


def owner(pid: int, kind: Literal["run", "start"]) -> Owner | None:
    """Process `pid` as the owner of a run, or None if it does not exist (or no /proc)."""
    found = process(pid)
    if found is None:
        return None
    return Owner(found.pid, found.ticks, found.command, kind, found.pidns)


def run_owner(command: Sequence[str]) -> Owner | None:
    """`run` itself owns the run; it is named by the command it runs, which is what a
    person looking at `status` or at a lost run's reason recognises (bytes that are not
    UTF-8 escaped, as a shell takes them back: `/bin/echo $'\\xff'`)."""
    found = process(os.getpid())
    if found is None:
        return None
    return Owner(found.pid, found.ticks, shortened(shell_line(command)), "run", found.pidns)
