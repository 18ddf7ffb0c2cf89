"""What a call does across connections, the same in both clients, with no I/O.

A waiting `start` and a watch outlive an agent restart: the client reconnects with
backoff and asks again. A `start` asks with the same token every time, so a start
the old agent acknowledged just before it died is recognised, not repeated. A client
that may start agents (the blocking one) gives a cleanly stopped agent's supervisor
RESTART_GRACE to bring it back first.
"""

from __future__ import annotations

import os

import msgspec

from unitsync.wire.errors import WaitTimeout
from unitsync.wire.host import backoff
from unitsync.wire.protocol import Owner, Start, Waiting

DEFAULT_WAIT = 300.0
"""How long a `start` waits for its dependencies unless told (5 minutes, `None`: forever):
a script whose dependency never comes should end saying so, not hang unseen."""
BACKLOG_FULL_DELAYS = (0.001, 0.05)
"""First and longest pause before connecting again when the agent's listen backlog is full:
connect() to a Unix socket then fails with EAGAIN (where TCP would say "in progress"; mio,
asio and pacemaker met the same), and a blocking connect would simply have waited for room."""
RESTART_GRACE = 2.0
"""How long a client that lost a cleanly stopped agent waits before starting one itself:
a supervisor restarts it sooner (systemd's default RestartSec is 100 ms, and the agent
serves about 0.3 s after it is started), and its agent must win, or it would find ours
holding the socket and the state dir. Two seconds more is all a stall costs otherwise."""


def start_request(
    unit: str,
    rerun: bool = False,
    *,
    once: bool = False,
    owner: Owner | None = None,
    hold: bool = False,
    token: str = "",
) -> Start:
    """A `start` with a fresh token (unless given): one token per call, reused by every
    retry of it; it names the run the start begins, in that run's reports."""
    token = token or new_token()
    return Start(unit, rerun, token=token, once=once, owner=owner, hold=hold)


def new_token() -> str:
    """A run's token: random, so no two runs (of any agent, any boot) share one."""
    return os.urandom(8).hex()


class WaitClock:
    """How long a `start` has been blocked on its dependencies, on the client's clock.

    From the first `Waiting` (less what the agent had counted when it sent it), never from
    the call: connecting, an agent the client had to start, and reconnecting before any
    wait are not waiting. It is what a new connection says it `waited_before`."""

    def __init__(self) -> None:
        self.began: float | None = None

    def seen(self, event: Waiting, now: float) -> None:
        if self.began is None:
            self.began = now - event.waited

    def waited(self, now: float) -> float:
        return 0.0 if self.began is None else now - self.began


def asked_again(request: Start, waited: float) -> Start:
    """The same `start` (same token) for another connection, saying how long it has waited
    already (`waited` seconds), so the wait reported is the whole wait."""
    return msgspec.structs.replace(request, waited_before=waited)


def timed_out(unit: str, timeout: float | None, *, unreachable: bool = False) -> WaitTimeout:
    why = " (the agent was unreachable)" if unreachable else ""
    return WaitTimeout(f"timed out after {timeout:g}s waiting to start {unit!r}{why}")


class Backoff(backoff.Backoff):
    """Backoff for reconnecting to the agent (`wire.host.backoff`'s defaults) that
    ends a wait whose time is up with WaitTimeout."""

    def next_delay(self, remaining: float | None, unit: str, timeout: float | None) -> float:
        """How long to sleep before the next try; WaitTimeout if no time is left."""
        if remaining is not None and remaining <= 0:
            raise timed_out(unit, timeout, unreachable=True)
        return self.next(remaining)
