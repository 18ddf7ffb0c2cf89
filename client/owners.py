"""Who owns a run, in the wire's terms (SPEC §7): the process a `start` names as its owner.

A process is described by `wire.host.processes`, which knows nothing of the wire; here it
becomes the `Owner` that `Client.start(owner=...)` carries: the script that called
`start` (the CLI's default), `run` itself, or any process a program names. Where there is
no /proc there is no owner (None), and the agent never takes the run's owner for gone.
"""

from __future__ import annotations

from typing import Literal

from unitsync.wire.host.processes import process
from unitsync.wire.protocol import Owner


def owner(pid: int, kind: Literal["run", "start"] = "start") -> Owner | None:
    """Process `pid` as the owner of a run, or None if it does not exist (or no /proc)."""
    found = process(pid)
    if found is None:
        return None
    return Owner(found.pid, found.ticks, found.command, kind, found.pidns)
