"""`run`'s restart policy: whether a command that ended is started again, and when (SPEC §8).

`--restart no|on-failure|always` says after which ends; `--restart-delay` how long to wait
first (doubled after each restart up to MAX_DELAY, back to the given delay once a run
stayed up for STEADY); `--restart-limit` restarts within `--restart-window` before `run`
gives up. `Restarts` keeps the count and decides; it is plain data and a clock, no I/O, so
`follow.py` asks it at each end and the tests ask it without processes.

A command that ended because `run` was told to end it (a signal `run` forwarded: Ctrl-C,
SIGTERM; a `sync stop`) is never restarted: the person who asked meant it.

Error rules: an option that makes no sense (a restart option without `--restart`, a limit
of 0, `always` for a plain command) raises `BadPolicy` naming it and what to do; `run` says
it in one line and exits 2 before anything is asked of the agent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from .children import Ended  # (not imported before `run`'s wait: see `command`)

When = Literal["no", "on-failure", "always"]
WHENS: tuple[When, ...] = ("no", "on-failure", "always")

DEFAULT_DELAY = 1.0
"""The first wait before a restart: a crash loop costs a process a second, and a server
that died of a passing cause (a port still in TIME_WAIT) is back within a second."""
MAX_DELAY = 60.0
"""The doubling stops here: a command that keeps crashing is tried once a minute."""
STEADY = 60.0
"""A run up this long (ready, for a service) was a good one: the next delay starts over."""
DEFAULT_LIMIT = 5
DEFAULT_WINDOW = 300.0
"""5 restarts in 5 minutes, then give up: compose's and systemd's order of magnitude."""


class BadPolicy(ValueError):
    """A restart option that makes no sense; the message says which and what to do."""


class Policy(msgspec.Struct, frozen=True):
    when: When = "no"
    delay: float = DEFAULT_DELAY
    limit: int = DEFAULT_LIMIT
    window: float = DEFAULT_WINDOW


NEVER = Policy()


def policy_from(
    when: str | None,
    delay: float | None,
    limit: int | None,
    window: float | None,
    *,
    service: bool,
) -> Policy:
    """The policy the options ask for; BadPolicy if they conflict."""
    given = [
        name
        for name, value in (
            ("--restart-delay", delay),
            ("--restart-limit", limit),
            ("--restart-window", window),
        )
        if value is not None
    ]
    if when is None or when == "no":
        if given:
            raise BadPolicy(
                f"{given[0]} is an option of a restart policy: add --restart on-failure (or always)"
            )
        return NEVER
    if when not in WHENS:
        raise BadPolicy(f"--restart is no, on-failure or always, not {when!r}")
    if when == "always" and not service:
        raise BadPolicy(
            "--restart always is for services (--ready-cmd, --ready-log, --notify): a plain "
            "command restarted after it succeeded would never complete its unit; use "
            "--restart on-failure"
        )
    if limit is not None and limit < 1:
        raise BadPolicy(
            f"--restart-limit must be 1 or more, not {limit}: for no restarts, leave out --restart"
        )
    if window is not None and window <= 0:
        raise BadPolicy("--restart-window must be above 0, e.g. 5m")
    return Policy(
        when,  # type: ignore[arg-type]
        DEFAULT_DELAY if delay is None else delay,
        DEFAULT_LIMIT if limit is None else limit,
        DEFAULT_WINDOW if window is None else window,
    )


class Restart(msgspec.Struct, frozen=True):
    """Start the command again after `delay` seconds; it is restart `number` of `limit`."""

    delay: float
    number: int
    limit: int
    after: str
    """How the command ended, for people: "exit status 1", "signal SIGKILL"."""

    @property
    def reason(self) -> str:
        count = f"restart {self.number} of {self.limit}"
        return f"restarting in {seconds(self.delay)} after {self.after} ({count})"


class GiveUp(msgspec.Struct, frozen=True):
    """The limit is reached: the unit fails with `reason`'s tail."""

    restarts: int
    window: float

    @property
    def reason(self) -> str:
        return f"gave up after {self.restarts} restarts in {seconds(self.window)}"


class Restarts:
    """One `run`'s restarts: the count in the window, the next delay."""

    def __init__(self, policy: Policy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._recent: deque[float] = deque()
        """When each restart of the policy happened, within the window."""
        self._delay = policy.delay
        self._up_since: float | None = None

    def up(self) -> None:
        """The command is up (a service: ready; a plain command: started)."""
        self._up_since = self.clock()

    def after(self, ended: Ended, *, told: bool) -> Restart | GiveUp | None:
        """What to do now that the command ended; `told`: `run` forwarded it a signal."""
        policy = self.policy
        if policy.when == "no" or told:
            return None
        if policy.when == "on-failure" and ended.returncode == 0:
            return None
        now = self.clock()
        if self._up_since is not None and now - self._up_since >= STEADY:
            self._delay = policy.delay  # it stayed up: start over
        self._up_since = None
        while self._recent and now - self._recent[0] > policy.window:
            self._recent.popleft()
        if len(self._recent) >= policy.limit:
            return GiveUp(len(self._recent), policy.window)
        self._recent.append(now)
        delay, self._delay = self._delay, min(self._delay * 2, MAX_DELAY)
        return Restart(delay, len(self._recent), policy.limit, how_it_ended(ended))


def how_it_ended(ended: Ended) -> str:
    return f"signal {ended.signal_name}" if ended.signal_name else f"exit status {ended.status}"


def seconds(value: float) -> str:
    """A delay or window as it was probably typed: 2s, 0.5s, 5m, 1m30s."""
    if value < 60:
        return f"{value:g}s"
    minutes, rest = divmod(value, 60)
    if rest == 0:
        return f"{minutes:g}m"
    return f"{minutes:g}m{rest:g}s"
