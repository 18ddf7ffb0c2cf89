"""`sync run` once its unit may run: the command is started, followed and reported.

`run_unit` (`command`) declares the unit and waits; then `run_started` runs the command
as the unit: `supervisor.ServiceRun` owns its life, `follow.Follower` decides what each end
leads to, and `UnitAgent` makes every agent call that follows and says what it means.
Imported once the unit waits or, if it need not, once it has started (`command`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from unitsync.client import Client, UnitsyncError
from unitsync.wire.errors import AgentUnavailable
from unitsync.wire.host.backoff import Backoff
from unitsync.wire.host.processes import shortened
from unitsync.wire.protocol import Order

from ..say import say
from ..words import shell_line
from .children import Ended, SpawnFailed
from .follow import EXIT_STOPPED, Follower
from .hold import RunHold
from .policy import Policy, Restarts
from .reactor import Reactor
from .readiness.detector import Detector
from .readiness.options import ReadyOptions, detector_for
from .recorder import Recorder
from .supervisor import STOP_GRACE, ServiceRun


def run_started(
    client: Client,
    unit: str,
    command: Sequence[str],
    readiness: ReadyOptions,
    detector: Detector | None,
    ready_timeout: float | None,
    log_limit: int,
    policy: Policy,
) -> int:
    """Run `command` as `unit`, which the client now holds; its exit status (see `run_unit`).

    From here on the client holds the run: if its agent goes away, taking the run back and
    reporting bring one back as `Client._connect` says (a crash at once, a clean stop after
    a grace)."""
    recorder = _recorder(client, unit, command, log_limit)
    with ServiceRun(command, detector, ready_timeout, recorder) as service:
        follower = Follower(service, lambda: detector_for(readiness)[0], Restarts(policy))
        agent = UnitAgent(
            client,
            unit,
            service=detector is not None,
            hold=service.reactor,
            stop=follower.stop_now,
            on_order=follower.ordered,
            recorder=recorder,
        )
        follower.agent = agent
        try:
            service.start()
        except SpawnFailed as exc:
            say(f"unitsync: {exc.reason}")
            return agent.ended(exc.status, exc.reason)
        return follower.follow()


class UnitAgent:
    """Every agent call `run` makes once its command runs, and what each one prints.

    The run is held by `run`'s connection until its end is reported (`hold.RunHold`); a
    report that finds the agent gone waits for it to come back, up to REPORT_PATIENCE.
    Once a newer run supersedes this one, the command is stopped (`stop`) and nothing more
    is reported.
    """

    def __init__(
        self,
        client: Client,
        unit: str,
        *,
        service: bool,
        hold: Reactor,
        stop: Callable[[], None] = lambda: None,
        on_order: Callable[[Order], None] = lambda _order: None,
        recorder: Recorder | None = None,
    ) -> None:
        self.client = client
        self.unit = unit
        self.service = service
        self.stop = stop
        self.recorder = recorder
        self.hold = RunHold(client, hold, unit, on_superseded=self._superseded, on_order=on_order)

    @property
    def superseded(self) -> bool:
        return self.hold.superseded

    def _superseded(self, by: str) -> None:
        say(f"{self.unit}: superseded by {by}; stopping")
        self.stop()

    def ready(self, how: str) -> None:
        # A ready service's `run` goes on holding the unit: if it dies now, the unit fails.
        self._tell("is ready", lambda: self.client.complete(self.unit, hold=True))
        if not self.superseded:  # (told so in the same breath: it is being stopped)
            say(f"{self.unit}: ready ({how})")

    def status_text(self, text: str) -> None:
        self._tell("says what it is doing", lambda: self.client.set_reason(self.unit, text))

    def not_ready(self, reason: str) -> None:
        say(
            f"unitsync: {self.unit} {reason}; stopping it "
            f"(SIGTERM, then SIGKILL after {STOP_GRACE:g}s)"
        )
        self._tell("is not ready", lambda: self.client.fail(self.unit, reason))

    def restarting(self, reason: str) -> None:
        """The command is being started again: the unit is `started` with `reason`."""
        self._tell("is restarting", lambda: self.client.restarting(self.unit, reason))

    def stopped(self, reason: str) -> int:
        """The command was stopped on `sync stop`'s order and its group is gone: the unit
        is pending. EXIT_STOPPED (or the agent's exit code, if recording it failed)."""
        self.hold.close()
        if self.hold.given_up:
            return EXIT_STOPPED
        say(f"{self.unit}: stopped")
        try:
            _patiently(lambda: self.client.stopped(self.unit, reason))
        except UnitsyncError as exc:
            say(f"unitsync: {self.unit} was stopped, but recording it failed: {exc}")
            return exc.exit_code
        return EXIT_STOPPED

    def exited(self, ended: Ended, was_ready: bool, gave_up: str = "") -> int:
        """Record how the command ended (`gave_up`: and that its restart policy gave up);
        its status (or the agent's exit code)."""
        if not self.service:  # plain `run`: its end is the unit's end
            if ended.signal_name:
                return self.ended(ended.status, f"killed by signal {ended.signal_name}{gave_up}")
            if not ended.status:
                return self.ended(0, None)
            return self.ended(ended.status, self._said(f"exit status {ended.status}") + gave_up)
        # A service that is gone is not ready, whatever its status.
        how = (
            f"killed by signal {ended.signal_name}"
            if ended.signal_name
            else f"exited with status {ended.status}"
        )
        when = "after being ready" if was_ready else "before being ready"
        reason = f"{how} {when}"
        said = reason if ended.signal_name else self._said(reason)
        return self.ended(ended.status, said + gave_up)

    def _said(self, reason: str) -> str:
        """An exit's reason, with the last line the command wrote to stderr, if any (not a
        signal's: what a killed command last said is seldom why it was killed)."""
        last = self.recorder.last_error_line() if self.recorder is not None else ""
        return f"{reason}: {last}" if last else reason

    def record_end(self, status: int, reason: str | None) -> None:
        """The run's end, in the unit's log (the agent is told separately, if at all)."""
        if self.recorder is not None:
            self.recorder.end(status, reason)

    def ended(self, status: int, reason: str | None) -> int:
        """Complete the unit (no reason) or fail it; `status`, unless recording failed."""
        self.record_end(status, reason)
        self.hold.close()  # the end is reported on whichever connection is open now
        if self.hold.given_up:  # the unit is no longer this run's: say nothing more of it
            return status
        try:
            _patiently(
                lambda: (
                    self.client.complete(self.unit)
                    if reason is None
                    else self.client.fail(self.unit, reason)
                )
            )
        except UnitsyncError as exc:
            say(f"unitsync: {self.unit} ran, but recording its end failed: {exc}")
            return exc.exit_code if status == 0 else status
        return status

    def _tell(self, what: str, call: Callable[[], object]) -> None:
        """A change while the command runs: if it cannot be recorded, say so and go on."""
        if self.hold.given_up:
            return
        try:
            _patiently(call, before=self.hold.ensure)
        except UnitsyncError as exc:
            say(f"unitsync: {self.unit} {what}, but telling the agent failed: {exc}")
        self.hold.after_call()


REPORT_PATIENCE = 30.0
"""How long a report waits for an agent that is restarting: far longer than a restart takes,
short enough that a `run` whose agent is gone for good still ends."""


def _patiently(call: Callable[[], object], before: Callable[[], None] = lambda: None) -> None:
    """Make an agent call; while no agent answers, retry with backoff for REPORT_PATIENCE
    (`before` each try)."""
    deadline = time.monotonic() + REPORT_PATIENCE
    backoff = Backoff()
    while True:
        try:
            before()
            call()
            return
        except AgentUnavailable as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not exc.passing:
                raise
            time.sleep(backoff.next(remaining))


def _recorder(client: Client, unit: str, command: Sequence[str], limit: int) -> Recorder | None:
    """The unit's log on this host, where the agent's welcome says (None: not recorded)."""
    welcome = client.welcome
    if not limit or welcome is None or not welcome.logs:
        return None
    return Recorder(
        welcome.logs,
        unit,
        limit=limit,
        boot=welcome.boot,
        pid=os.getpid(),
        command=shortened(shell_line(command)),
        host=welcome.host,
        warn=say,
    )
