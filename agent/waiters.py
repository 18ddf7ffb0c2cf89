"""Wake-ups for blocked `start`s: push-based, keyed by the unit whose change matters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import trio


class Waiters:
    """Each blocked `start` registers one Event under every unit it depends on.

    A change to a unit sets exactly the Events registered under it, so one
    completion wakes its waiters at once without scanning anybody else.
    """

    def __init__(self) -> None:
        self._by_unit: dict[str, set[trio.Event]] = {}

    @contextlib.contextmanager
    def watching(self, units: Iterable[str]) -> Iterator[trio.Event]:
        event = trio.Event()
        units = list(units)
        for unit in units:
            self._by_unit.setdefault(unit, set()).add(event)
        try:
            yield event
        finally:
            for unit in units:
                events = self._by_unit[unit]
                events.discard(event)
                if not events:
                    del self._by_unit[unit]

    def notify(self, units: Iterable[str]) -> None:
        for unit in units:
            for event in self._by_unit.get(unit, ()):
                event.set()
