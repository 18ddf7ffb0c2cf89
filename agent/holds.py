"""Runs held by `unitsync sync run` connections (SPEC §7, owners).

A `run` keeps its connection open for as long as its command runs. While it does, the
unit's run is *held* by that connection: if the connection ends before the run's end
is reported (the `run` process was SIGKILLed, OOM-killed), the unit fails at once
instead of leaving its waiters hanging until their timeouts.

After an agent restart no connection holds anything yet: the runs that were held are
*unclaimed* until their `run` reconnects and takes them back (a `start` with the same
token), for at most RECLAIM_GRACE; then they fail the same way.

A held run that a newer run of its unit supersedes (SPEC §11) is released, and its
connection is told (`Holder.push`, an `Order`): from then on nothing of it counts. `sync
stop` and `sync restart` reach a held run the same way (orders that leave it held: its
`run` reports what became of its command).

Pure bookkeeping: no I/O, no trio. The service acts on what it says; the connection
delivers what is pushed.
"""

from __future__ import annotations

from collections.abc import Callable

from unitsync.wire.protocol import Order

RECLAIM_GRACE = 10.0
"""How long after an agent restart a `run` has to come back: it notices the agent's
connection closing at once and reconnects with a backoff of at most a second."""


class Holder:
    """One connection's side: the units it holds, by the token of their run, and how to
    tell its peer something unasked (`push`: the connection sends it between replies)."""

    def __init__(self, push: Callable[[Order], None] = lambda _order: None) -> None:
        self.units: dict[str, str] = {}
        self.push = push
        self.unrecorded: dict[str, str | None] = {}
        """Ends its `run` reported that a shared store could not take (etcd unreachable):
        a failure's reason, or None for completed; recorded once the connection ends."""

    def __bool__(self) -> bool:
        return bool(self.units)


class Holds:
    def __init__(self, unclaimed: dict[str, str] | None = None) -> None:
        self._by_unit: dict[str, tuple[str, Holder]] = {}
        self.unclaimed: dict[str, str] = dict(unclaimed or {})
        """Unit -> run token, for runs held before the agent restarted and not yet back."""

    def take(self, unit: str, token: str, holder: Holder) -> None:
        """`holder` holds `unit`'s run `token` (a new run, or one taken back)."""
        self.release(unit)
        self._by_unit[unit] = (token, holder)
        holder.units[unit] = token
        self.unclaimed.pop(unit, None)

    def release(self, unit: str) -> None:
        """Nobody holds `unit` any more (its run's end was reported, or it was lost)."""
        held = self._by_unit.pop(unit, None)
        if held is not None:
            held[1].units.pop(unit, None)
        self.unclaimed.pop(unit, None)

    def held(self, unit: str) -> tuple[str, Holder | None] | None:
        """The token of `unit`'s held run and the holder (None: not yet back after a
        restart); None if no run of it is held."""
        if unit in self._by_unit:
            return self._by_unit[unit]
        if unit in self.unclaimed:
            return self.unclaimed[unit], None
        return None

    def is_held(self, unit: str) -> bool:
        """Held by a connection now, or waiting for its `run` to come back."""
        return unit in self._by_unit or unit in self.unclaimed

    def dropped(self, holder: Holder) -> dict[str, str]:
        """`holder`'s connection ended: what it held (unit -> token), now held by nobody."""
        lost = dict(holder.units)
        for unit in lost:
            self.release(unit)
        return lost
