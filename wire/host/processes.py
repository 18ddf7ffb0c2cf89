"""Processes as the kernel names them (Linux /proc): who a process is, and does it still run.

Both sides need this: a client describes the owner of a run (its parent script, or `run`
itself; `client/owners.py` makes the wire's `Owner` of a `Process`), the agent checks
later whether that owner still runs, `run --notify` whether a sender descends from its
service. A pid alone is not enough, as pids are reused: a process is its pid plus its start
time (clock ticks since the kernel booted), which no later process with the same pid
shares. Where there is no /proc, processes are not described and nothing is ever taken
for gone.

/proc/PID/stat is read and split in one place (`_stat`). Error rules: a process that is
gone, or a /proc that cannot be read, is an answer (None, "", False), never an exception.
"""

from __future__ import annotations

import os

import msgspec

COMMAND_LIMIT = 200
"""Characters of a command line kept: enough to recognise a script, bounded for a frame."""


class Process(msgspec.Struct, frozen=True):
    """One process, told apart from any later one that gets its pid."""

    pid: int
    ticks: int
    """When it started: clock ticks since the kernel booted."""
    command: str
    """Its command line as one line, shortened to COMMAND_LIMIT."""
    pidns: str
    """The PID namespace its pid means something in ("pid:[4026531836]"); "" if unknown."""


DEAD = (b"Z", b"X")
"""Process states of a process that has exited: a zombie waits only for its parent to
reap it, and its script runs no more."""


def _stat(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (the state) on, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may hold spaces or ')': skip past it.
    return data[data.rindex(b")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if there is none."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])  # field 22 of the whole line


def command_line(pid: int) -> str:
    """Its command line as one shell-ish line, shortened; "" if it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    return shortened(" ".join(word.decode(errors="replace") for word in words))


def shortened(line: str) -> str:
    """A command line cut to COMMAND_LIMIT characters, its end marked."""
    return line if len(line) <= COMMAND_LIMIT else line[: COMMAND_LIMIT - 1] + "…"


def pid_namespace() -> str:
    """This process's PID namespace ("pid:[4026531836]"); "" if it cannot be told."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


WRAPPERS = frozenset(
    {
        "timeout",
        "nice",
        "ionice",
        "nohup",
        "env",
        "stdbuf",
        "setsid",
        "taskset",
        "chrt",
        "flock",
        "time",
        "sudo",
        "doas",
        "runuser",
        "setpriv",
        "unbuffer",
    }
)
"""Commands that run another for a script and end with it: `timeout 60 unitsync sync start
x` in a script is the script's start, and `timeout` ends as soon as unitsync does."""


def calling_script(pid: int) -> int:
    """The script behind process `pid`: `pid` itself, or, while `pid` is a wrapper
    (`WRAPPERS`), the process that ran it."""
    for _ in range(8):  # wrappers seldom nest deeper; never loop on a strange /proc
        parent = parent_of(pid)
        if parent is None or _name(pid) not in WRAPPERS or parent <= 1:
            return pid
        pid = parent
    return pid


def parent_of(pid: int) -> int | None:
    """The pid of process `pid`'s parent, or None if there is no such process."""
    fields = _stat(pid)
    return None if fields is None else int(fields[1])  # field 4 of the whole line


def descends_from(pid: int, ancestor: int) -> bool | None:
    """Is `pid` `ancestor` or below it? None if a process on the way has exited."""
    while pid > 1:
        if pid == ancestor:
            return True
        parent = parent_of(pid)
        if parent is None:
            return None
        pid = parent
    return pid == ancestor


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as comm:
            return comm.read().strip().decode(errors="replace")
    except OSError:
        return ""


def process(pid: int) -> Process | None:
    """Process `pid` as it is now, or None if it does not exist (or there is no /proc)."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    return Process(pid, ticks, command_line(pid), pid_namespace())


def still_runs(pid: int, ticks: int, pidns: str) -> bool | None:
    """Does the process that started at `ticks` with `pid` still run? None: cannot tell
    (it lives in another PID namespace, where this pid means another process)."""
    if pidns and pidns != pid_namespace():
        return None
    fields = _stat(pid)
    return fields is not None and fields[0] not in DEAD and int(fields[19]) == ticks


def is_running(pid: int) -> bool:
    """Is there a process `pid` that has not exited (a zombie has)?"""
    fields = _stat(pid)
    return fields is not None and fields[0] not in DEAD
