"""One `run`'s command through its restarts: what each of its ends leads to (SPEC §8).

`Follower` reads the command's events (`supervisor.ServiceRun`) and turns them into the
agent calls of `started.UnitAgent`, one run of the command after another:

- Restart policy (`policy.py`): a command that ended is started again by the same `run`,
  which first reports the unit `started` with why and when (`restarting in 2s after exit
  status 1 (restart 3 of 5)`), so dependents wait instead of failing; past the limit the
  unit fails and `run` exits with the command's status. A signal `run` passed on never
  triggers it; one that arrives while `run` waits to restart ends `run` (the unit fails).
- The agent's orders, on the connection that holds the run: `sync stop` (the group is
  stopped and gone, the unit is reported `pending`, `run` exits EXIT_STOPPED) and `sync
  restart` (reported `started` first, then stopped and started again at once). Neither
  triggers the policy.
- A newer run superseding this one (`--rerun`, `reset --force`: SPEC §11): the command is
  stopped the documented way (or the restart awaited is called off), nothing more is
  reported (the unit is the newer run's), and `run` exits EXIT_SUPERSEDED.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from unitsync.wire.errors import EXIT_TIMED_OUT
from unitsync.wire.protocol import Order
from unitsync.wire.timefmt import duration

from ..say import say
from .children import Ended
from .policy import GiveUp, Restart, Restarts
from .readiness.detector import Detector
from .supervisor import (
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

if TYPE_CHECKING:
    from .started import UnitAgent

EXIT_SUPERSEDED = 0
"""`run`'s status once a newer run superseded its run and it stopped its command: as after
systemd's `stop`, the command ended because it was asked to, not because it failed; and what
the unit becomes is the newer run's business, not this one's."""
EXIT_STOPPED = 0
"""`run`'s status once `sync stop` stopped its command: it ended as it was asked to."""
RESTART_REASON = "restarting (sync restart)"
"""The unit's reason while `sync restart` has its command started again."""


def _seconds(seconds: float) -> str:
    """A duration as it was probably typed: 30s, 1.5s; 5m00s past a minute."""
    return f"{seconds:g}s" if seconds < 60 else duration(seconds)


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
        not_ready = ""
        for event in service.events():
            if agent.superseded and isinstance(event, Exited | CalledOff | Interrupted):
                if isinstance(event, Exited):
                    agent.record_end(event.ended.status, "stopped: a newer run superseded it")
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
                    not_ready = f"not ready within {_seconds(within)}: {waiting_for}"
                    agent.not_ready(not_ready)
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

    def _ended(self, ended: Ended, was_ready: bool, told: bool, not_ready: str) -> int | None:
        service, agent = self.service, self.agent
        if self.stopping is not None:
            agent.record_end(ended.status, f"stopped by {self.stopping}")
            service.end_group()  # `stop` returns once the group is gone
            return self._stopped()
        if self.restarting_now:  # (reported `started` when the order came)
            agent.record_end(ended.status, RESTART_REASON)
            self.restarting_now = False
            service.restart_after(0.0, self.new_detector())
            return None
        decision = self.restarts.after(ended, told=told)
        if isinstance(decision, Restart):
            agent.record_end(ended.status, decision.reason)
            say(f"{agent.unit}: {decision.reason}")
            agent.restarting(decision.reason)
            # An order may have come with the reply (`UnitAgent._tell` obeys it at once).
            if agent.superseded:
                return EXIT_SUPERSEDED
            if self.stopping is not None:
                service.end_group()
                return self._stopped()
            delay = 0.0 if self.restarting_now else decision.delay  # `sync restart`: now
            self.restarting_now = False
            service.restart_after(delay, self.new_detector())
            return None
        if not_ready and not isinstance(decision, GiveUp):
            agent.record_end(ended.status, not_ready)
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
            elif self.service.restart_pending:  # waiting out the policy's delay: now
                self.service.cancel_restart()
                self.service.restart_after(0.0, self.new_detector())
            else:  # its end is being decided (`_ended`): there, without the delay
                self.restarting_now = True
