"""Child processes of `run`: starting one, learning of its exit without polling, its status.

A child is started with `posix_spawn` (`spawn`), not `subprocess`: importing `subprocess`
(with `threading`, `selectors` and `locale`) is 2 ms of every `run`, and the start-up of a
workspace is 50 `run`s at once. What `subprocess.Popen` did for `run` is done here the same
way: the command is looked up on `$PATH`, gets its own process group, SIGPIPE and SIGXFSZ
back at their defaults (Python ignores them), and none of the descriptors `run` inherited
beyond stdin, stdout and stderr (those Python opens are never inherited).

A child's exit reaches the `Reactor` as a readable descriptor: a pidfd (Linux 5.3+,
`wire.host.exits`), or, where there is none, a SIGCHLD handler writing to a wake-up pipe,
after which every watched child is asked (`poll`) whether it has ended. Either way nothing
wakes while children run.

Resource rules: `Exits` owns the pidfds (or the wake-up pipe and the SIGCHLD handler)
and releases them in `close`; the `Child` objects stay their spawner's, reaped here
once they have exited (`wait` after the pidfd fired, `poll` after SIGCHLD).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Sequence

import msgspec

from unitsync.wire.host.exits import exit_descriptor, watching_exit

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

DEVNULL = -3
"""A child's stream read from or written to /dev/null (as `subprocess.DEVNULL`)."""
SAME_AS_STDOUT = -2
"""A child's stderr sent where its stdout goes (as `subprocess.STDOUT`)."""
Stream = int | None
"""A child's stream: a descriptor of `run`'s, DEVNULL, SAME_AS_STDOUT, or None (`run`'s own)."""
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
"""Signals Python ignores that a command must meet at their defaults (`| head` ends it)."""
POLL_LONGEST = 0.05
"""Seconds between asking whether a child has ended, at most, where there are no pidfds."""


class Child:
    """A process `run` started: its pid and, once it is reaped, `returncode` (negative: the
    signal that killed it), as `subprocess.Popen` has them."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Reap it if it has ended; its returncode, or None while it runs."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Its returncode once it has ended; TimeoutError if it has not within `timeout`."""
        if self.returncode is None and timeout is not None:
            _ended_within(self.pid, timeout)
        if self.returncode is None:
            _pid, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _ended_within(pid: int, timeout: float) -> None:
    """Return once process `pid` (a child, not reaped) has ended; TimeoutError after
    `timeout` seconds if it has not."""
    with watching_exit(pid) as fd:
        if fd is not None:
            if not select.select([fd], [], [], timeout)[0]:
                raise TimeoutError(f"process {pid} still runs")
            return
    deadline, pause = time.monotonic() + timeout, 0.0005
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"process {pid} still runs")
        time.sleep(pause)
        pause = min(pause * 2, POLL_LONGEST)


class Ended(msgspec.Struct, frozen=True):
    """How a child ended, from `Child.returncode` (negative: killed by that signal)."""

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


def spawn(
    command: Sequence[str],
    *,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    env: dict[str, str] | None = None,
) -> Child:
    """Start `command` in a process group of its own (see `group`), its streams as given;
    SpawnFailed (127 or 126, as a shell says) if it cannot be."""
    argv = [os.fsencode(word) for word in command]  # the bytes given, UTF-8 or not
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:  # inherited so: see _reapable
        _reapable()
    try:
        pid = os.posix_spawnp(
            argv[0],
            argv,
            os.environ if env is None else env,
            file_actions=_streams(stdin, stdout, stderr) + _closing_inherited(),
            setpgroup=0,
            setsigdef=DEFAULT_SIGNALS,
        )
    except FileNotFoundError:
        raise SpawnFailed(127, f"command not found: {shell_word(command[0])}") from None
    except PermissionError:
        raise SpawnFailed(126, f"permission denied: {shell_word(command[0])}") from None
    return Child(pid)


def _reapable() -> None:
    """SIGCHLD back at its default: `run` was started with it ignored (a parent's choice
    that outlives exec), under which the kernel reaps children unasked and their status is
    lost: `subprocess` then reported every command as exited 0. The command meets the
    default too, as most commands expect."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _streams(stdin: Stream, stdout: Stream, stderr: Stream) -> list[tuple[object, ...]]:
    """The file actions that give the child its stdin, stdout and stderr."""
    actions: list[tuple[object, ...]] = []
    for target, given in enumerate((stdin, stdout, stderr)):
        if given == DEVNULL:
            flags = os.O_RDONLY if target == 0 else os.O_WRONLY
            actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, flags, 0))
        elif given == SAME_AS_STDOUT:
            actions.append((os.POSIX_SPAWN_DUP2, 1, target))
        elif given is not None:
            actions.append((os.POSIX_SPAWN_DUP2, given, target))
    return actions


def _closing_inherited() -> list[tuple[object, ...]]:
    """Close actions for the descriptors `run` inherited past 0-2 (what `subprocess`'s
    `close_fds` closed): they are its caller's, not its command's."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: the few there may be go to the command
        return []
    actions: list[tuple[object, ...]] = []
    for name in names:
        fd = int(name)
        with contextlib.suppress(OSError):  # (the listing's own descriptor, closed since)
            if fd > 2 and os.get_inheritable(fd):
                actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return actions


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
