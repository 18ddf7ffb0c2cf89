"""The command's process group: what `run` signals, and who holds the terminal meanwhile.

`run` starts its command in a process group of its own (the command's pid is the
group's id) and signals the whole group, so that stopping the command stops what it
started too: the server under `make dev` or `sh -c`, a pipeline's every stage. This is
what process-compose and docker's init do (systemd uses a cgroup). Only a descendant
that leaves the group (`setsid`, a double-forking daemon) is out of reach.

A group of its own is not the terminal's foreground group, where a command reading or
configuring the terminal would be stopped (SIGTTIN, SIGTTOU) and Ctrl-C would not reach
it. So when `run` is the foreground job of its controlling terminal, it lends the
terminal to the command's group for the command's life, as a shell does to a job: the
command reads it as before and Ctrl-C and Ctrl-\\ reach the whole group from the
terminal. Ctrl-Z stops the group; `run` sees its command stop, takes the terminal back
and stops itself, so the shell shows its prompt; `fg` continues both. Otherwise (no
terminal, or `run` in the background) the terminal is left alone and `run` passes
SIGINT on to the group like the signals it forwards.

Resource rules: `Terminal` owns its descriptor of the terminal and its SIGCHLD handler
from `lend` to `close`, which gives the terminal back to `run`'s group if the command's
group still holds it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

GONE_CHECK = 0.05
"""Seconds between looks at a stopping group (members that are not `run`'s children
cannot be waited for): only while stopping, which the SIGKILL deadline bounds."""


def signal_group(group: int, signum: int) -> None:
    """Send `signum` to every process of `group`; none left is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def group_is_gone(group: int) -> bool:
    """No process of `group` is left (its leader reaped, if it was `run`'s child)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a member that changed its user: still there
        return False
    return False


def wait_out_group(group: int, kill_at: float) -> None:
    """Wait for the rest of a stopping group (its leader reaped) to end; SIGKILL at `kill_at`
    (a `time.monotonic` time)."""
    while not group_is_gone(group):
        if time.monotonic() >= kill_at:
            signal_group(group, signal.SIGKILL)
            return
        time.sleep(GONE_CHECK)


def _give(terminal: int, group: int) -> None:
    """Make `group` the terminal's foreground group, even from the background."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTTOU])
    try:
        os.tcsetpgrp(terminal, group)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class Terminal:
    """The controlling terminal, lent to the command's group while `run` holds it."""

    def __init__(self) -> None:
        self.fd = -1
        self.own_group = os.getpgrp()
        self.group = 0
        """The command's group, while it holds the terminal."""
        self._previous_handler: object = None

    def lend(self, command: int) -> None:
        """If `run` is the terminal's foreground job, make the group of `command` (a pid
        and group id; `run`'s child) the foreground job instead."""
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:  # no controlling terminal
            return
        try:
            holds = os.tcgetpgrp(fd) == self.own_group
        except OSError:
            holds = False
        if not holds:
            os.close(fd)
            return
        self.fd, self.group = fd, command
        _give(fd, command)
        # Whatever touched the terminal before it was lent was stopped for it: go on.
        signal_group(command, signal.SIGCONT)
        self._previous_handler = signal.signal(signal.SIGCHLD, self._child_changed)

    def close(self) -> None:
        """Take the terminal back (if the command's group still holds it)."""
        if self.fd < 0:
            return
        signal.signal(signal.SIGCHLD, self._previous_handler)  # type: ignore[arg-type]
        with contextlib.suppress(OSError):
            if os.tcgetpgrp(self.fd) == self.group:
                _give(self.fd, self.own_group)
        os.close(self.fd)
        self.fd = -1

    def _child_changed(self, _signum: int, _frame: object) -> None:
        """The command stopped (Ctrl-Z)? Then stop `run` too, and continue it after."""
        try:
            stopped = os.waitid(os.P_PID, self.group, os.WSTOPPED | os.WNOHANG)
        except ChildProcessError:
            return
        if stopped is None:
            return
        _give(self.fd, self.own_group)
        os.kill(os.getpid(), signal.SIGSTOP)  # the shell shows the job stopped
        # Continued: by `fg` (the terminal is `run`'s again) or by `bg`.
        with contextlib.suppress(OSError):
            if os.tcgetpgrp(self.fd) == self.own_group:
                _give(self.fd, self.group)
        signal_group(self.group, signal.SIGCONT)
