"""Wake-ups for blocked `start`s: push-based, keyed by the unit whose change matters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import trio


class Waiters:
    """Each blocked `start` registers one cancel scope under every unit it depends on.

    A change to a unit cancels exactly the scopes registered under it, so one
    completion wakes its waiters at once without scanning anybody else. A scope
    cancelled before its waiter enters it fires on entry: no wake-up is lost.
    """

    def __init__(self) -> None:
        self._by_unit: dict[str, set[trio.CancelScope]] = {}

    @contextlib.contextmanager
    def watching(self, units: Iterable[str]) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope()
        units = list(units)
        for unit in units:
            self._by_unit.setdefault(unit, set()).add(scope)
        try:
            yield scope
        finally:
            for unit in units:
                scopes = self._by_unit[unit]
                scopes.discard(scope)
                if not scopes:
                    del self._by_unit[unit]

    def notify(self, units: Iterable[str]) -> None:
        for unit in units:
            for scope in self._by_unit.get(unit, ()):
                scope.cancel()

    def notify_all(self) -> None:
        """Wake every blocked start (the graph was rebuilt: each re-checks its readiness)."""
        for scopes in self._by_unit.values():
            for scope in scopes:
                scope.cancel()
