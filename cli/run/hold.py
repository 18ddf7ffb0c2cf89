"""`run` keeps its unit's run through agent restarts (SPEC §7, owners).

The connection on which `run` started its unit holds the run: the agent fails the unit at
once if that connection ends before `run` reports how its command ended. When the agent
itself goes away (restarted, upgraded), the connection closes: `run` notices at once (its
socket turns readable in the same event loop as its command's events: no polling),
reconnects with backoff and takes the run back (the same start, same token), well within
the agent's grace period. The command never notices. If no agent comes back, the
reconnection starts one as every client that lost its agent does (`Client._connect`): at
once after a crash, after a short grace after a clean stop (a supervisor's restart wins).

The agent may also push an order on that connection (SPEC §11): a newer run of the unit
superseded this one (`--rerun`, `reset --force`). The connection then turns readable with
a frame, not an end: `RunHold` hands the order to `on_superseded` (which stops the command)
and from then on reports nothing. Orders that leave the run this `run`'s (`sync stop`,
`sync restart`) go to `on_order`. A `run` away while it was superseded (the agent
restarted) learns it when it takes the run back.

Resource rules: a `RunHold` watches the client's current connection in the service's
reactor and owns nothing else; `close` stops the watching. If the agent gave the run up
(the grace period passed), `run` says so once and stops trying: the command goes on, and
its end is not reported.
"""

from __future__ import annotations

from collections.abc import Callable

from unitsync.client import Client
from unitsync.wire.errors import AgentUnavailable, Superseded, UnitsyncError
from unitsync.wire.host.backoff import Backoff
from unitsync.wire.protocol import Order

from ..say import say
from .reactor import Reactor, Timer

Superseding = Callable[[str], None]
"""Told, once, that a newer run superseded this one: by whom ("a new run (pid 4242)")."""
Ordered = Callable[[Order], None]
"""Told of an order for this run that leaves it this run's (`stop`, `restart`)."""


class RunHold:
    def __init__(
        self,
        client: Client,
        reactor: Reactor,
        unit: str,
        on_superseded: Superseding = lambda _by: None,
        on_order: Ordered = lambda _order: None,
    ) -> None:
        self.client = client
        self.reactor = reactor
        self.unit = unit
        self.on_superseded = on_superseded
        self.on_order = on_order
        self._fd: int | None = None
        self._retry: Timer | None = None
        self._backoff = Backoff()
        self.given_up = False
        """The agent gave this run up (after its grace period, or for a newer run): its end
        is not reported."""
        self.superseded = False
        """A newer run of the unit superseded this one: its command is being stopped."""
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
        """An order pushed by the agent, or the connection's end (the agent went away)."""
        try:
            orders = self.client.take_orders()
        except AgentUnavailable:
            self._unwatch()
            self.client.close()
            say(f"unitsync: {self.unit}: the agent went away; taking the run back")
            self._take_back()
            return
        for order in orders:
            self._obey(order)

    def _obey(self, order: Order) -> None:
        held = self.client.holding.get(self.unit)
        if order.unit != self.unit or held is None or order.token != held.token:
            return  # not about this run (a client holding several, an old order)
        if order.what == "supersede":
            self._give_up_superseded(order.by)
        elif not self.superseded:
            self.on_order(order)

    def _give_up_superseded(self, by: str) -> None:
        if self.superseded:
            return
        self.superseded = self.given_up = True
        self.close()
        self.client.close()  # nothing more to say to the agent about this run
        self.on_superseded(by)

    def _take_back(self) -> None:
        self._retry = None
        try:
            self.client.take_back(self.unit)
        except Superseded as exc:
            self._give_up_superseded(f"{exc.by or 'a newer run'} while the agent restarted")
            return
        except AgentUnavailable as exc:
            if not exc.passing:
                say(f"unitsync: {self.unit}: {exc}")
                self.given_up = True
                return
            self._retry = self.reactor.call_later(self._backoff.next(), self._take_back)
            return
        except UnitsyncError as exc:
            say(f"unitsync: {self.unit}: {exc}")
            self.given_up = True
            return
        self._backoff.reset()
        say(f"unitsync: {self.unit}: took the run back")
        self._watch()

    def after_call(self) -> None:
        """A call on the holding connection may have read an order along with its reply
        (the socket is then no longer readable for it): obey it now."""
        if self._fd is not None:
            self._readable()

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
