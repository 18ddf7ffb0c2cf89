"""Which boot of the workspace this is (SPEC §7): the kernel's boot and PID 1's start.

A workspace restart restarts the machine or the container. The kernel's boot id changes
with the machine; the start time of PID 1 *in the agent's PID namespace* changes with the
container (a container restart starts a new init, on the same kernel). Together they tell
a workspace restart (every script runs again from the top) from an agent restart (the
scripts go on). Platforms that know better say so with `--boot-id` / UNITSYNC_BOOT_ID.
"""

from __future__ import annotations

from pathlib import Path

from unitsync.wire.host.processes import start_ticks

KERNEL_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
UNKNOWN = "unknown"
"""Where neither can be read (not Linux): every start is the same boot, so nothing is ever
reset behind the user's back; `--boot-id` restores the distinction."""


def boot_identity(given: str | None = None) -> str:
    """`given` if set, else the kernel's boot id and PID 1's start time, e.g.
    "0d4c...e2/4711"; UNKNOWN where neither can be read."""
    if given:
        return given
    try:
        kernel = KERNEL_BOOT_ID.read_text().strip()
    except OSError:
        kernel = ""
    init = start_ticks(1)
    if not kernel and init is None:
        return UNKNOWN
    return f"{kernel}/{init if init is not None else ''}"
