"""A command's life under `run`: spawned, watched until ready, followed until it exits (SPEC §8).

`ServiceRun` starts the command, lets one `Detector` (`readiness/`: a probe, an output
line, sd_notify) tell when it is ready, enforces the ready timeout, passes signals on, and
reports what happens as events: `Ready`, `StatusText`, `NotReady`, `Exited`. It never
talks to the agent: `command.py` turns the events into agent calls, in one place.

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

Resource rules: every descriptor, timer and child process belongs to the `ServiceRun`
that made it and is released by `close` (the `with` block), which also stops a service
still running then (a `run` going away must not leave behind a service that its
dependents trust). Once the service is ready (or given up on), the detector stops and
the ready timeout is cancelled: after that only the service itself (its exit, its
output) wakes `run`.
"""

from __future__ import annotations

import signal
import subprocess
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

from .children import Child, Ended, Exits, Forwarding, spawn
from .group import Terminal, signal_group, wait_out_group
from .output import Relay
from .reactor import Reactor, Timer
from .readiness.detector import Detector

if TYPE_CHECKING:
    from .recorder import Recorder

STOP_GRACE = 10.0
"""Seconds between SIGTERM and SIGKILL when `run` stops a command's group (not ready in time):
docker stop's default, long enough for a server to close its connections and files."""


class Ready(NamedTuple):
    how: str
    """What showed it, for people: "`curl -fs localhost:8000` succeeded on try 3"."""


class StatusText(NamedTuple):
    text: str
    """What the service says it is doing while it starts (sd_notify's STATUS=)."""


class NotReady(NamedTuple):
    """The ready timeout passed; the service is being stopped."""

    within: float
    waiting_for: str


class Exited(NamedTuple):
    ended: Ended
    was_ready: bool


Event = Ready | StatusText | NotReady | Exited


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
        if self.relay is not None and reads_output:
            self.relay.taps.append(detector.seen)  # type: ignore[union-attr]
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
        """What happens, as it happens, up to and including `Exited`."""
        assert self.child is not None, "start() first"
        while True:
            while self._events:
                event = self._events.popleft()
                yield event
                if isinstance(event, Exited):
                    return
            self.reactor.run_once()

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
        self.reactor.close()
        self.forwarding.restore()

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
        except subprocess.TimeoutExpired:
            signal_group(self.child.pid, signal.SIGKILL)
            self.child.wait()

    def _exited(self, ended: Ended) -> None:
        self.terminal.close()  # before `run` says anything more
        if self._kill is not None:
            self._kill.cancel()  # `close` waits out the rest of the group
        self._finish()  # its last output may still hold the ready line
        if not self._settled:
            self._settle()
        self._events.append(Exited(ended, self.is_ready))

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.relay is not None:
            self.relay.finish()  # the last output, to every reader
        if self.detector is not None:
            self.detector.finish()
