"""`run` keeps its unit's run through agent restarts (SPEC §7, owners).

The connection on which `run` started its unit holds the run: the agent fails the unit at
once if that connection ends before `run` reports how its command ended. When the agent
itself goes away (restarted, upgraded), the connection closes: `run` notices at once (its
socket turns readable in the same event loop as its command's events: no polling),
reconnects with backoff and takes the run back (the same start, same token), well within
the agent's grace period. The command never notices. If the agent crashed, the first
reconnection starts another (as every client that lost its agent does: `Client._connect`);
if it was stopped, `run` waits for whoever stopped it to start it again.

Resource rules: a `RunHold` watches the client's current connection in the service's
reactor and owns nothing else; `close` stops the watching. If the agent gave the run up
(the grace period passed), `run` says so once and stops trying: the command goes on, and
its end is still reported (the agent records it as a late report).
"""

from __future__ import annotations

from unitsync.client.client import Client
from unitsync.client.retry import Backoff
from unitsync.wire.errors import AgentUnavailable, UnitsyncError

from .reactor import Reactor, Timer
from .say import say


class RunHold:
    def __init__(self, client: Client, reactor: Reactor, unit: str) -> None:
        self.client = client
        self.reactor = reactor
        self.unit = unit
        self._fd: int | None = None
        self._retry: Timer | None = None
        self._backoff = Backoff()
        self.given_up = False
        """The agent gave this run up (after its grace period): its end is not reported."""
        self._watch()

    def _watch(self) -> None:
        self._fd = self.client.fileno()
        if self._fd is not None:
            self.reactor.add_reader(self._fd, self._readable)

    def _unwatch(self) -> None:
        if self._fd is not None:
            self.reactor.remove_reader(self._fd)
            self._fd = None

    def _readable(self) -> None:
        """The agent sends nothing unasked: a readable connection is a closed one."""
        if not self.client.closed_by_agent():
            return
        self._unwatch()
        self.client.close()
        say(f"unitsync: {self.unit}: the agent went away; taking the run back")
        self._take_back()

    def _take_back(self) -> None:
        self._retry = None
        try:
            self.client.take_back(self.unit)
        except AgentUnavailable as exc:
            if not exc.passing:
                say(f"unitsync: {self.unit}: {exc}")
                self.given_up = True
                return
            self._retry = self.reactor.call_later(
                self._backoff.next_delay(None, self.unit, None), self._take_back
            )
            return
        except UnitsyncError as exc:
            say(f"unitsync: {self.unit}: {exc}")
            self.given_up = True
            return
        self._backoff = Backoff()
        say(f"unitsync: {self.unit}: took the run back")
        self._watch()

    def ensure(self) -> None:
        """Before a report: if the run is not held right now (the agent is back but the
        backoff has not fired yet), take it back first, so the report goes on the holding
        connection."""
        if self._fd is None and self._retry is not None:
            self._retry.cancel()
            self._take_back()

    def close(self) -> None:
        """Stop watching: `run` is about to report its end (on a connection of its own)."""
        self._unwatch()
        if self._retry is not None:
            self._retry.cancel()
