"""What the service asks of a store, and what a store tells it back.

A store owns the graph: it is the only one that applies records to it. The service hands
it each command as a `Decide` (the graph's rule with its arguments bound, which only
decides: it returns records and changes nothing); the store runs it against its graph,
makes the records durable, applies them, and reports every change it applies, this
agent's or another's, to `Changes`. A store that rebuilds its graph (the journal after
refused changes, etcd after listing afresh) replaces the graph object and says so
(`Changes.replaced`): whoever reads the graph reads `store.graph` each time.

Two stores implement it: the local journal (`journal.writer.Journal`) and etcd
(`etcd.store.EtcdStore`, where several agents share the graph). Everything that differs
between them is a member here, so the service never asks which one it has.

Errors: `commit` raises `Refused` (the command's own refusal) or `NotDurable` (the store
could not make the change durable: `recovers_unaided` says whether waiting helps), as
`MaybeMade` when an attempt reached the store and its answer was lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from unitsync.wire.errors import NotDurable

from ..core.graph import Graph
from ..core.records import Record

Decide = Callable[[], list[Record]]
"""A command bound to its arguments: the records it makes against the store's graph as it
stands now (none when there is nothing to do), or `Refused`. It changes nothing."""


class MaybeMade(NotDurable):
    """Not known to be durable, and not known not to be: an attempt reached the store and its
    answer was lost, so the change may have been made after all. Whoever tries it again must
    first be able to tell that it was not (a start recognises its own run by its token)."""


class Changes(Protocol):
    """What a store tells about the changes it applies to its graph (the service)."""

    def applied(self, records: list[Record], seq: int) -> None:
        """`records` were applied to the graph, as change number `seq`."""

    def replaced(self, seq: int) -> None:
        """The store rebuilt its graph (`store.graph` is another object) at `seq`."""


class Store(Protocol):
    """Owns the graph: makes changes durable and applies them to it, in one order."""

    location: str
    """Where the graph is kept, for the log."""
    graph_id: str
    """The graph's identity (SPEC §11): made once when the graph was created, kept for good."""
    graph: Graph
    """The graph as the store holds it; replaced whole when the store rebuilds it."""
    recovers_unaided: bool
    """Whether a change this store could not make durable may go through a moment later
    with nobody doing anything (etcd was unreachable: a ready start waits on and tries
    again), or only once someone acts (the disk is full: a start fails at once, saying so)."""
    replica_behind_since: float | None
    """Unix time since which the graph is not known to hold every change made elsewhere (an
    etcd agent cut off from etcd: `status` says so); None when it is current."""

    @property
    def applied_seq(self) -> int:
        """The sequence number of the last change applied to the graph."""

    @property
    def durable_seq(self) -> int:
        """Every change up to this sequence number is durable."""

    def listen(self, changes: Changes) -> None:
        """Report every change applied from now on to `changes`."""

    async def commit(
        self, decide: Decide, about: Sequence[str] | None, *, confirm_noop: bool = True
    ) -> list[Record]:
        """Decide a change, make it durable, apply it; return its records once all is done.

        `about` names the units whose state the command's outcome rests on (None: every
        unit): a shared store checks that none changed meanwhile, and confirms against the
        store an outcome that changes nothing (a refusal, "already so") before returning
        it, unless `confirm_noop` is false (a step that merely found nothing to do).
        """

    async def settle(self) -> None:
        """Return once everything the graph shows is durable (before showing it)."""

    async def begin_boot(self, identity: str, *, now: float, host: str) -> int:
        """Before serving anyone: make boot `identity` durable if it is a new one, and
        start over what a workspace restart starts over (SPEC §7); the boot's number.
        `host`: this agent's host, among several sharing a graph."""

    def run(self) -> Awaitable[None]:
        """Run until cancelled (the journal's writer; etcd's watch and compaction)."""
