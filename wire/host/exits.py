"""Learning that a process has exited without polling: a pidfd (Linux 5.3+).

A pidfd turns readable once its process exits, so a wait for an exit can sit in the same
`select`/`poll` as the other things a program waits for (a notify socket, output, timers)
and costs nothing meanwhile. `run` watches its command and its probes this way, and a
client that started an agent watches that agent's exit while it waits for its READY=1.

Error rules: where there are no pidfds (an old kernel, not Linux, a process already
reaped) the answer is None, never an exception: the caller then learns of the exit
another way (SIGCHLD, or asking now and then).

Resource rules: a descriptor from `exit_descriptor` is its caller's to close;
`watching_exit` closes its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def exit_descriptor(pid: int) -> int | None:
    """A descriptor that turns readable once process `pid` exits, or None where there are
    none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no os.pidfd_open here, or the kernel refused
        return None


@contextlib.contextmanager
def watching_exit(pid: int) -> Iterator[int | None]:
    """`exit_descriptor(pid)` for the block, closed after it."""
    fd = exit_descriptor(pid)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)
