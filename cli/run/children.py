"""Child processes of `run`: starting one, learning of its exit without polling, its status.

A child's exit reaches the `Reactor` as a readable descriptor: a pidfd (Linux 5.3+,
`wire.host.exits`), or, where there is none, a SIGCHLD handler writing to a wake-up pipe,
after which every watched child is asked (`poll`) whether it has ended. Either way nothing
wakes while children run.

Resource rules: `Exits` owns the pidfds (or the wake-up pipe and the SIGCHLD handler)
and releases them in `close`; the `Popen` objects stay their spawner's, reaped here
once they have exited (`wait` after the pidfd fired, `poll` after SIGCHLD).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from unitsync.wire.host.exits import exit_descriptor

from ..words import shell_word
from .group import signal_group
from .reactor import Reactor

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""Signals `run` passes on to its command's group."""

Child = subprocess.Popen  # type: ignore[type-arg]


class Ended(NamedTuple):
    """How a child ended, from `Popen.returncode` (negative: killed by that signal)."""

    returncode: int

    @property
    def status(self) -> int:
        """Shell-style: the exit status, or 128+N for signal N."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(-self.returncode).name if self.returncode < 0 else None


class SpawnFailed(Exception):
    """The command could not be started; `status` is what a shell would exit with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def spawn(command: Sequence[str], **options: Any) -> Child:
    """Start `command` in a process group of its own (see `group`); SpawnFailed (127 or
    126, as a shell says) if it cannot be."""
    argv = [os.fsencode(word) for word in command]  # the bytes given, UTF-8 or not
    try:
        return subprocess.Popen(argv, process_group=0, **options)
    except FileNotFoundError:
        raise SpawnFailed(127, f"command not found: {shell_word(command[0])}") from None
    except PermissionError:
        raise SpawnFailed(126, f"permission denied: {shell_word(command[0])}") from None


class Forwarding:
    """Pass the usual signals on to the command's process group (SPEC §2's `run`): the
    whole group, as a terminal would, since the command runs in its own.

    Installed before the command is spawned, so no signal finds `run` with the default
    action (which would end `run` and leave its command running): one that arrives before
    the command exists is passed on as soon as it does (`attach`). Ctrl-C on a terminal
    `run` has lent to the command reaches its group directly (see `group.Terminal`); one
    that reaches `run` (the terminal was not lent) is passed on. A signal `run` was started
    with ignored (`nohup` ignores SIGHUP) stays ignored, as the convention for such signals
    goes: the child inherited the same.

    Resource rules: the handlers are `run`'s from `install` to `restore`, which puts the
    previous ones back.
    """

    def __init__(self) -> None:
        self.child: Child | None = None
        self._early: list[int] = []
        self._previous: dict[int, object] = {}
        self.forwarded = False
        """A signal was passed on to the current command: it was told to end (a restart
        policy leaves it ended)."""
        self.between: Callable[[int], None] = lambda _signum: None
        """Told of a signal that finds no command running (`run` waits to restart it)."""

    def install(self) -> None:
        for sig in FORWARDED:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._forward)

    def attach(self, child: Child) -> None:
        """`child` is the command: pass on to its group what arrived meanwhile, and all after."""
        self.child = child
        self.forwarded = False
        early, self._early = self._early, []
        for signum in early:
            self._forward(signum, None)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _forward(self, signum: int, _frame: object) -> None:
        if self.child is None:
            self._early.append(signum)
        elif self.child.returncode is None:  # until it is reaped, its pid is the group's id
            self.forwarded = True
            signal_group(self.child.pid, signum)
        else:
            self.between(signum)


class Exits:
    """Calls back once per watched child, with how it ended, when it has exited."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self._pidfds: dict[Child, int] = {}
        self._fallback: _ChildSignals | None = None

    def watch(self, child: Child, on_exit: Callable[[Ended], None]) -> None:
        fd = exit_descriptor(child.pid)
        if fd is None:  # no pidfds (an old kernel, not Linux)
            if self._fallback is None:
                self._fallback = _ChildSignals(self.reactor)
            self._fallback.watch(child, on_exit)
            return
        self._pidfds[child] = fd

        def exited() -> None:
            self._forget(child)
            on_exit(Ended(child.wait()))

        self.reactor.add_reader(fd, exited)

    def unwatch(self, child: Child) -> None:
        """No callback for `child` after all (its owner reaps it)."""
        if child in self._pidfds:
            self._forget(child)
        elif self._fallback is not None:
            self._fallback.children.pop(child, None)

    def _forget(self, child: Child) -> None:
        fd = self._pidfds.pop(child)
        self.reactor.remove_reader(fd)
        os.close(fd)

    def close(self) -> None:
        for child in list(self._pidfds):
            self._forget(child)
        if self._fallback is not None:
            self._fallback.close()


class _ChildSignals:
    """Without pidfds: SIGCHLD writes to a wake-up pipe; then each child is asked."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.children: dict[Child, Callable[[Ended], None]] = {}
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_handler = signal.signal(signal.SIGCHLD, lambda *_: None)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        reactor.add_reader(self._read, self._woken)

    def watch(self, child: Child, on_exit: Callable[[Ended], None]) -> None:
        self.children[child] = on_exit
        self.reactor.call_later(0, self._woken)  # it may have ended before the handler was set

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass
        for child, on_exit in list(self.children.items()):
            if child.poll() is not None:
                del self.children[child]
                on_exit(Ended(child.returncode))

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        signal.signal(signal.SIGCHLD, self._previous_handler)
        self.reactor.remove_reader(self._read)
        os.close(self._read)
        os.close(self._write)
