"""A command's life under `run`: spawned, watched until ready, followed until it exits (SPEC §8).

`ServiceRun` starts the command, lets one `Detector` (`readiness/`: a probe, an output
line, sd_notify) tell when it is ready, enforces the ready timeout, passes signals on, and
reports what happens as events: `Ready`, `StatusText`, `NotReady`, `Exited`. It never
talks to the agent: `started.py` turns the events into agent calls, in one place.

Without a detector this is plain `run`: the command inherits `run`'s stdin, and its exit
is the only event. Its output is passed through (`output.Relay`) to whoever reads along:
the `Recorder` that keeps it in the unit's log (`recorder`), `--ready-log`'s search. With
neither (`--log-limit 0`) the command inherits `run`'s stdout and stderr too.

The command runs in a process group of its own, and stopping it stops the group
(`group`): SIGTERM to every process in it, SIGKILL to what is left STOP_GRACE later, and
`run` ends only once the group is gone. When the command ends by itself, a service's
leftovers are stopped the same way (a service that is gone must not go on serving under a
failed unit, as systemd's KillMode=control-group has it); a plain command's are left
alone (a setup step may start a daemon on purpose, as it may from a shell).

A restart policy (`policy.py`, decided in `follow.py`) or `sync restart` starts the command
again in the same `ServiceRun` (`restart_after`): what is left of the old group is stopped
first, then, after the delay (a timer: `run` sleeps in the kernel meanwhile), the command
is spawned anew with a fresh detector and ready timeout, and `Respawned` says so: each
restart is one clear event. A signal that arrives while no command runs (waiting to
restart it) is `Interrupted`: `run` ends then.

Resource rules: every descriptor, timer and child process belongs to the `ServiceRun`
that made it and is released by `close` (the `with` block), which also stops a service
still running then (a `run` going away must not leave behind a service that its
dependents trust). Once the service is ready (or given up on), the detector stops and
the ready timeout is cancelled: after that only the service itself (its exit, its
output) wakes `run`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import msgspec

from .children import Child, Ended, Exits, Forwarding, SpawnFailed, spawn
from .group import Terminal, signal_group, wait_out_group
from .output import Relay, Tap
from .reactor import Reactor, Timer
from .readiness.detector import Detector

if TYPE_CHECKING:
    from .recorder import Recorder

STOP_GRACE = 10.0
"""Seconds between SIGTERM and SIGKILL when `run` stops a command's group (not ready in time):
docker stop's default, long enough for a server to close its connections and files."""


class Ready(msgspec.Struct, frozen=True):
    how: str
    """What showed it, for people: "`curl -fs localhost:8000` succeeded on try 3"."""


class StatusText(msgspec.Struct, frozen=True):
    text: str
    """What the service says it is doing while it starts (sd_notify's STATUS=)."""


class NotReady(msgspec.Struct, frozen=True):
    """The ready timeout passed; the service is being stopped."""

    within: float
    waiting_for: str


class Exited(msgspec.Struct, frozen=True):
    ended: Ended
    was_ready: bool
    told: bool = False
    """`run` passed the command a signal (Ctrl-C, SIGTERM), or the user's Ctrl-C reached it
    on the terminal `run` lent it: it was asked to end, and is not restarted."""


class Respawned(msgspec.Struct, frozen=True):
    """The command was started again (a restart): its new process."""

    pid: int


class RespawnFailed(msgspec.Struct, frozen=True):
    """The command could not be started again (it was removed meanwhile, say)."""

    status: int
    reason: str


class Interrupted(msgspec.Struct, frozen=True):
    """A signal reached `run` while no command ran (it waited to restart it)."""

    signum: int


class CalledOff(msgspec.Struct, frozen=True):
    """The restart `run` waited for was called off (`sync stop`, a newer run)."""


Event = Ready | StatusText | NotReady | Exited | Respawned | RespawnFailed | Interrupted | CalledOff
FINAL = (Exited, RespawnFailed, Interrupted, CalledOff)
"""The events after which `events` returns: the command is not running."""


class ServiceRun:
    def __init__(
        self,
        command: Sequence[str],
        detector: Detector | None = None,
        ready_timeout: float | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.command = command
        self.detector = detector
        self.ready_timeout = ready_timeout
        self.reactor = Reactor()
        self.recorder = recorder
        reads_output = getattr(detector, "reads_output", False)
        self.relay = Relay() if recorder is not None or reads_output else None
        """Passes the output through to the recorder and the detector (None: inherited)."""
        if self.relay is not None and recorder is not None:
            recorder.schedule = self.reactor.call_later
            self.relay.taps.append(recorder.output)
        self._detector_tap: Tap | None = None
        self._listen(detector)
        self.exits = Exits(self.reactor)
        self.child: Child | None = None
        self.is_ready = False
        self._events: deque[Event] = deque()
        self._settled = detector is None
        """Ready, or given up on: readiness no longer matters."""
        self._finished = False
        self._deadline: Timer | None = None
        self._kill: Timer | None = None
        self._kill_at: float | None = None
        """When the group being stopped gets SIGKILL (`Reactor.now` time); None: not stopping."""
        self.terminal = Terminal()
        self.forwarding = Forwarding()
        self._restart: Timer | None = None
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        """A signal between two runs of the command writes here: it wakes the reactor."""
        self.reactor.add_reader(self._wake_read, self._woken)
        self.forwarding.between = self._between
        self._signalled: list[int] = []
        self._ended_at = 0.0
        """When the command last ended (`Reactor.now` time): a restart's delay counts from it."""

    def __enter__(self) -> ServiceRun:
        self.forwarding.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Spawn the service; `SpawnFailed` if it cannot be."""
        options = self.detector.child_options() if self.detector else {}
        if self.relay is not None:
            options.update(self.relay.child_options())
        if self.recorder is not None:
            self.recorder.begin()  # a new section of the unit's log
        self.child = spawn(self.command, **options)
        if self.relay is not None:
            self.relay.begin(self.reactor)
        self.forwarding.attach(self.child)
        self.terminal.lend(self.child.pid)
        self.exits.watch(self.child, self._exited)
        if self.detector:
            self.detector.begin(self.reactor, self.exits, self.child, self)
            if self.ready_timeout is not None:
                self._deadline = self.reactor.call_later(self.ready_timeout, self._not_ready)

    def events(self) -> Iterator[Event]:
        """What happens, as it happens, up to and including the command's end (`FINAL`)."""
        assert self.child is not None, "start() first"
        while True:
            while self._events:
                event = self._events.popleft()
                yield event
                if isinstance(event, FINAL):
                    return
            self.reactor.run_once()

    @property
    def running(self) -> bool:
        """The command runs (not ended, nor waiting to be started again)."""
        return self.child is not None and self.child.returncode is None

    def restart_after(self, delay: float, detector: Detector | None) -> None:
        """Start the command again `delay` seconds after it ended, watched by `detector` (a
        new one: a detector serves one process). What is left of its old group goes first."""
        self.end_group()
        when = max(self._ended_at + delay, self.reactor.now())
        self._restart = self.reactor.call_at(when, lambda: self._respawn(detector))

    @property
    def restart_pending(self) -> bool:
        """A restart is set for later (`restart_after`)."""
        return self._restart is not None

    def cancel_restart(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None

    def call_off_restart(self) -> None:
        """No restart after all: `events` ends with `CalledOff`."""
        if self._restart is not None:
            self.cancel_restart()
            self._events.append(CalledOff())

    def end_group(self) -> None:
        """The command ended: stop what is left of its group (a service's; a plain
        command's too, before it is started again, or when it was stopped on an order)
        and wait until it is gone."""
        assert self.child is not None
        if self._kill_at is None:
            self.stop()
        assert self._kill_at is not None
        wait_out_group(self.child.pid, self._kill_at)
        if self._kill is not None:
            self._kill.cancel()  # the group is gone: no SIGKILL for a group id reused later

    def stop(self) -> None:
        """SIGTERM to the command's group now, SIGKILL to what is left `STOP_GRACE` later."""
        assert self.child is not None
        if self._kill_at is None:
            group = self.child.pid
            self._kill_at = self.reactor.now() + STOP_GRACE
            signal_group(group, signal.SIGTERM)
            self._kill = self.reactor.call_at(
                self._kill_at, lambda: signal_group(group, signal.SIGKILL)
            )

    def close(self) -> None:
        self.cancel_restart()
        self.terminal.close()
        if self.child is not None:
            if self.child.returncode is None:  # `run` is going away first
                self.exits.unwatch(self.child)
                self.stop()
                self._wait_for_child()
            if self._kill_at is None and self.detector is not None:
                self.stop()  # the service is gone: so is the rest of its group
            if self._kill_at is not None:
                wait_out_group(self.child.pid, self._kill_at)
        self._finish()
        if self.recorder is not None:
            self.recorder.close()
        self.exits.close()
        self.reactor.remove_reader(self._wake_read)
        self.reactor.close()
        self.forwarding.restore()
        os.close(self._wake_read)
        os.close(self._wake_write)

    # --- what the detector reports (Listener) ---------------------------------------------

    def ready(self, how: str) -> None:
        if self._settled:
            return
        self._settle()
        self.is_ready = True
        self._events.append(Ready(how))

    def status_text(self, text: str) -> None:
        if self._settled:
            return
        if self._events and isinstance(self._events[-1], StatusText):
            self._events.pop()  # the agent only needs the latest
        self._events.append(StatusText(text))

    # --- internals ------------------------------------------------------------------------

    def _not_ready(self) -> None:
        assert self.detector is not None and self.ready_timeout is not None
        if self._settled:
            return
        self._settle()
        self._events.append(NotReady(self.ready_timeout, self.detector.waiting_for()))
        self.stop()

    def _settle(self) -> None:
        self._settled = True
        if self._deadline is not None:
            self._deadline.cancel()
        if self.detector is not None:
            self.detector.stop()

    def _wait_for_child(self) -> None:
        assert self.child is not None and self._kill_at is not None
        try:
            self.child.wait(max(self._kill_at - self.reactor.now(), 0.0))
        except TimeoutError:
            signal_group(self.child.pid, signal.SIGKILL)
            self.child.wait()

    def _listen(self, detector: Detector | None) -> None:
        """`detector` reads the command's output, if it is one that does (`--ready-log`), in
        place of the detector of the command's previous start."""
        if self.relay is None:
            return
        if self._detector_tap is not None:
            self.relay.taps.remove(self._detector_tap)
            self._detector_tap = None
        if getattr(detector, "reads_output", False):
            self._detector_tap = detector.seen  # type: ignore[union-attr]
            self.relay.taps.append(self._detector_tap)

    def _respawn(self, detector: Detector | None) -> None:
        self._restart = None
        self.detector, self.is_ready = detector, False
        self._listen(detector)
        self._settled, self._finished = detector is None, False
        self._deadline = self._kill = None
        self._kill_at = None
        try:
            self.start()
        except SpawnFailed as exc:
            self._finished = True
            if detector is not None:
                detector.finish()
            self._events.append(RespawnFailed(exc.status, exc.reason))
            return
        assert self.child is not None
        self._events.append(Respawned(self.child.pid))

    def _between(self, signum: int) -> None:
        """(A signal handler.) A signal with no command running: wake the reactor."""
        self._signalled.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"!")

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 512):
                pass
        while self._signalled:
            signum = self._signalled.pop(0)
            if not self.running:  # (a restart may have begun since)
                self.cancel_restart()
                self._events.append(Interrupted(signum))
                return

    def _exited(self, ended: Ended) -> None:
        self._ended_at = self.reactor.now()
        lent = self.terminal.fd >= 0  # the user's Ctrl-C reaches the command directly
        self.terminal.close()  # before `run` says anything more
        if self._kill is not None:
            self._kill.cancel()  # `close` waits out the rest of the group
        self._finish()  # its last output may still hold the ready line
        if not self._settled:
            self._settle()
        told = self.forwarding.forwarded or (lent and ended.signal_name in ("SIGINT", "SIGQUIT"))
        self._events.append(Exited(ended, self.is_ready, told))

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.relay is not None:
            self.relay.finish()  # the last output, to every reader
        if self.detector is not None:
            self.detector.finish()
