"""`sync run`: want, wait, run a command as the unit, then complete or fail it (SPEC §2, §8).

The command's life (spawn, signals, readiness, output, exit) is `supervisor.ServiceRun`'s;
every agent call `run` makes is here: `run_unit` declares and starts the unit, and
`UnitAgent` tells the agent what the command's events mean for it.

Plain `run` completes the unit when the command exits 0. With a readiness option the
command is a service: the unit completes when the service is ready and fails when it
exits (before or after), or when it is not ready in time (`run` then exits 5).

A `run` whose run a newer one supersedes (`run --rerun`, `start --rerun`, `reset --force`:
SPEC §11) stops its command the documented way, says so, reports nothing more (the unit is
the newer run's) and exits EXIT_SUPERSEDED.

Restarts (issue 24): with a restart policy (`policy.py`), a command that ended is started
again by the same `run`, which first reports the unit `started` with why and when
(`restarting in 2s after exit status 1 (restart 3 of 5)`), so dependents wait instead of
failing; past the limit the unit fails and `run` exits with the command's status. The
agent may also order the `run` (on the connection that holds the run) to stop its command
(`sync stop`: the group is stopped and gone, the unit is reported `pending`, `run` exits
EXIT_STOPPED) or to restart it (`sync restart`: reported `started` first, then stopped and
started again at once). Neither ever triggers the policy.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

import msgspec

from unitsync.client import Client, UnitsyncError
from unitsync.client.owners import owner
from unitsync.wire.errors import (
    EXIT_INTERRUPTED,
    EXIT_TIMED_OUT,
    EXIT_USAGE,
    AgentUnavailable,
    AlreadyDone,
)
from unitsync.wire.host.backoff import Backoff
from unitsync.wire.host.processes import shortened
from unitsync.wire.protocol import Order, Owner
from unitsync.wire.timefmt import duration

from ..progress import StartProgress
from ..say import say
from ..words import shell_line, shell_word
from .children import Ended, SpawnFailed
from .hold import RunHold
from .policy import NEVER, GiveUp, Policy, Restart, Restarts
from .reactor import Reactor
from .readiness.detector import Detector
from .readiness.options import PLAIN, BadOption, ReadyOptions, detector_for
from .supervisor import (
    STOP_GRACE,
    CalledOff,
    Exited,
    Interrupted,
    NotReady,
    Ready,
    Respawned,
    RespawnFailed,
    ServiceRun,
    StatusText,
)

EXIT_SUPERSEDED = 0
EXIT_STOPPED = 0
"""`run`'s status once `sync stop` stopped its command: it ended as it was asked to."""
"""`run`'s status once a newer run superseded its run and it stopped its command: as after
systemd's `stop`, the command ended because it was asked to, not because it failed; and what
the unit becomes is the newer run's business, not this one's."""


def _seconds(seconds: float) -> str:
    """A duration as it was probably typed: 30s, 1.5s; 5m00s past a minute."""
    return f"{seconds:g}s" if seconds < 60 else duration(seconds)


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
    policy: Policy = NEVER,
) -> int:
    """Exit with the command's status; if it never runs, with the start's exit code."""
    try:
        detector, ready_timeout = detector_for(readiness)
    except BadOption as exc:
        say(f"unitsync: {exc}")
        return EXIT_USAGE
    if once and detector is not None:
        say(
            "unitsync: --once is for one-time setup, not services: a service must start "
            "again in every boot, or its dependents would trust one that is not running"
        )
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
            tick=1.0 if progress.live else None,
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
    with ServiceRun(command, detector, ready_timeout) as service:
        follower = Follower(service, lambda: detector_for(readiness)[0], Restarts(policy))
        agent = UnitAgent(
            client,
            unit,
            service=detector is not None,
            hold=service.reactor,
            stop=follower.stop_now,
            on_order=follower.ordered,
        )
        follower.agent = agent
        try:
            service.start()
        except SpawnFailed as exc:
            say(f"unitsync: {exc.reason}")
            return agent.ended(exc.status, exc.reason)
        return follower.follow()


def follow(service: ServiceRun, agent: UnitAgent) -> int:
    """Tell the agent what happens to the command, as it happens; `run`'s exit status
    (no restart policy)."""
    follower = Follower(service, lambda: None, Restarts(NEVER))
    follower.agent = agent
    return follower.follow()


class Follower:
    """One `run`'s command through its restarts: each end is decided here (the policy,
    or an order of the agent), each run's events become agent calls (`UnitAgent`)."""

    def __init__(
        self,
        service: ServiceRun,
        new_detector: Callable[[], Detector | None],
        restarts: Restarts,
    ) -> None:
        self.service = service
        self.new_detector = new_detector
        self.restarts = restarts
        self.agent: UnitAgent
        self.stopping: str | None = None
        """`sync stop` ordered the command stopped: by whom."""
        self.restarting_now = False
        """`sync restart` ordered the command started again, once it is stopped."""

    def follow(self) -> int:
        """Until the command ends for good; `run`'s exit status."""
        if self.service.detector is None:
            self.restarts.up()
        while True:
            status = self._one_run()
            if status is not None:
                return status

    def _one_run(self) -> int | None:
        """One run of the command, to its end; `run`'s exit status, or None: it was
        started again (or will be, after the policy's delay)."""
        service, agent = self.service, self.agent
        not_ready = False
        for event in service.events():
            if agent.superseded and isinstance(event, Exited | CalledOff | Interrupted):
                return EXIT_SUPERSEDED  # stopped on the agent's word: nothing more to say
            if agent.superseded:
                continue
            match event:
                case Ready(how):
                    self.restarts.up()
                    agent.ready(how)
                case StatusText(text):
                    agent.status_text(text)
                case NotReady(within, waiting_for):
                    not_ready = True
                    agent.not_ready(f"not ready within {_seconds(within)}: {waiting_for}")
                case Respawned(pid):
                    say(f"{agent.unit}: started again (pid {pid})")
                    if service.detector is None:
                        self.restarts.up()  # a plain command is up as soon as it runs
                case RespawnFailed(status, reason):
                    say(f"unitsync: {reason}")
                    return agent.ended(status, reason)
                case CalledOff():
                    return self._stopped()
                case Interrupted(signum):
                    name = signal.Signals(signum).name
                    say(f"{agent.unit}: {name} while waiting to restart it; not restarting")
                    return agent.ended(128 + signum, f"stopped by {name} while waiting to restart")
                case Exited(ended, was_ready, told):
                    return self._ended(ended, was_ready, told, not_ready)
        raise AssertionError("the service's events end with its end")

    def _ended(self, ended: Ended, was_ready: bool, told: bool, not_ready: bool) -> int | None:
        service, agent = self.service, self.agent
        if self.stopping is not None:
            service.end_group()  # `stop` returns once the group is gone
            return self._stopped()
        if self.restarting_now:  # (reported `started` when the order came)
            self.restarting_now = False
            self.restarts.total += 1
            service.restart_after(0.0, self.new_detector())
            return None
        decision = self.restarts.after(ended, told=told)
        if isinstance(decision, Restart):
            say(f"{agent.unit}: {decision.reason}")
            agent.restarting(decision.reason)
            if agent.superseded or self.stopping is not None:  # told so in the same breath
                return self._stopped() if self.stopping is not None else EXIT_SUPERSEDED
            service.restart_after(decision.delay, self.new_detector())
            return None
        if not_ready and not isinstance(decision, GiveUp):
            return EXIT_TIMED_OUT  # stopped for not being ready: the unit's reason says why
        gave_up = f"; {decision.reason}" if isinstance(decision, GiveUp) else ""
        return agent.exited(ended, was_ready, gave_up)

    def _stopped(self) -> int:
        assert self.stopping is not None or self.agent.superseded
        if self.agent.superseded:
            return EXIT_SUPERSEDED
        return self.agent.stopped(f"stopped by {self.stopping}")

    def stop_now(self) -> None:
        """Stop the command (a newer run superseded this one), or the restart awaited."""
        if self.service.running:
            self.service.stop()
        else:
            self.service.call_off_restart()

    def ordered(self, order: Order) -> None:
        """The agent's order (`sync stop`, `sync restart`) for this run."""
        unit = self.agent.unit
        if self.stopping is not None:
            return
        if order.what == "stop":
            self.stopping = order.by or "sync stop"
            say(f"{unit}: stopping (asked by {self.stopping})")
            self.restarting_now = False
            self.stop_now()
        elif order.what == "restart" and not self.restarting_now:
            say(f"{unit}: restarting (asked by {order.by or 'sync restart'})")
            self.agent.restarting(RESTART_REASON)
            if self.service.running:
                self.restarting_now = True
                self.service.stop()
            else:  # waiting out the policy's delay: now
                self.service.cancel_restart()
                self.restarts.total += 1
                self.service.restart_after(0.0, self.new_detector())


RESTART_REASON = "restarting (sync restart)"


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
    ) -> None:
        self.client = client
        self.unit = unit
        self.service = service
        self.stop = stop
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
            return self.ended(ended.status, f"exit status {ended.status}{gave_up}")
        # A service that is gone is not ready, whatever its status.
        how = (
            f"killed by signal {ended.signal_name}"
            if ended.signal_name
            else f"exited with status {ended.status}"
        )
        when = "after being ready" if was_ready else "before being ready"
        return self.ended(ended.status, f"{how} {when}{gave_up}")

    def ended(self, status: int, reason: str | None) -> int:
        """Complete the unit (no reason) or fail it; `status`, unless recording failed."""
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


def _run_owner(command: Sequence[str]) -> Owner | None:
    """`run` itself owns the run; it is named by the command it runs, which is what a
    person looking at `status` or at a lost run's reason recognises (bytes that are not
    UTF-8 escaped, as a shell takes them back: `/bin/echo $'\\xff'`)."""
    me = owner(os.getpid(), "run")
    if me is None:
        return None
    return msgspec.structs.replace(me, command=shortened(shell_line(command)))
