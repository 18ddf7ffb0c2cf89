"""`sync run`: want, wait, run a command as the unit, then complete or fail it (SPEC §2, §8).

The command's life (spawn, signals, readiness, output, exit) is `supervisor.ServiceRun`'s;
every agent call `run` makes is here: `run_unit` declares and starts the unit, and
`UnitAgent` tells the agent what the command's events mean for it.

Plain `run` completes the unit when the command exits 0. With a readiness option the
command is a service: the unit completes when the service is ready and fails when it
exits (before or after), or when it is not ready in time (`run` then exits 5).

The command's output is kept in the unit's log as it passes through (`recorder`, SPEC
§15), in the folder the agent's welcome names (on this host, in etcd mode too), unless
`--log-limit 0`; a failed unit's reason ends with the last line the command wrote to
stderr (`exit status 1: Error: port 5432 in use`).

A `run` whose run a newer one supersedes (`run --rerun`, `start --rerun`, `reset --force`:
SPEC §11) stops its command the documented way, says so, reports nothing more (the unit is
the newer run's) and exits EXIT_SUPERSEDED.

What each end of the command leads to (the restart policy, the agent's orders: supersede,
`sync stop`, `sync restart`) is `follow.Follower`'s; the calls it makes are `UnitAgent`'s.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

import msgspec

from unitsync.client import Client, UnitsyncError
from unitsync.client.owners import owner
from unitsync.wire.errors import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    AgentUnavailable,
    AlreadyDone,
)
from unitsync.wire.host.backoff import Backoff
from unitsync.wire.host.processes import shortened
from unitsync.wire.protocol import Order, Owner

from ..progress import StartProgress
from ..say import say
from ..sizes import LOG_LIMIT
from ..words import shell_line, shell_word
from .children import Ended, SpawnFailed
from .follow import EXIT_STOPPED, Follower
from .hold import RunHold
from .policy import NEVER, Policy, Restarts
from .reactor import Reactor
from .readiness.options import PLAIN, BadOption, ReadyOptions, detector_for
from .recorder import Recorder
from .supervisor import STOP_GRACE, ServiceRun


def run_unit(
    client: Client,
    unit: str,
    command: Sequence[str],
    wants: Sequence[str],
    timeout: float | None,
    readiness: ReadyOptions = PLAIN,
    *,
    once: bool = False,
    rerun: bool = False,
    log_limit: int = LOG_LIMIT,
    policy: Policy = NEVER,
) -> int:
    """Exit with the command's status; if it never runs, with the start's exit code.

    `log_limit`: bytes of the unit's log kept (0: its output is not recorded)."""
    try:
        detector, ready_timeout = detector_for(readiness, once=once)
    except BadOption as exc:  # the command line checks first (`cli.app.run`); others may not
        say(f"unitsync: run: {exc}")
        return EXIT_USAGE
    progress = StartProgress(unit, sys.stderr)
    try:
        if wants:
            client.want(unit, *wants)
        started = client.start(
            unit,
            rerun=rerun,
            timeout=timeout,
            on_progress=progress.update,
            tick=progress.tick,
            once=once,
            owner=_run_owner(command),
            hold=True,
        )
    except AlreadyDone as exc:
        progress.clear()
        say(f"{unit}: {exc}; not running {shell_word(command[0])}")
        return 0
    except UnitsyncError as exc:
        progress.clear()
        say(f"unitsync: {exc}; not running {shell_word(command[0])}")
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C while waiting: as `start` says it
        progress.interrupted()
        return EXIT_INTERRUPTED
    progress.done(started)
    # From here on the client holds the run: if its agent goes away, taking the run back
    # and reporting bring one back as `Client._connect` says (a crash at once, a clean
    # stop after a grace).
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


def _run_owner(command: Sequence[str]) -> Owner | None:
    """`run` itself owns the run; it is named by the command it runs, which is what a
    person looking at `status` or at a lost run's reason recognises (bytes that are not
    UTF-8 escaped, as a shell takes them back: `/bin/echo $'\\xff'`)."""
    me = owner(os.getpid(), "run")
    if me is None:
        return None
    return msgspec.structs.replace(me, command=shortened(shell_line(command)))
