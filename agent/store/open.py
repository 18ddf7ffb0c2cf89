"""Opening the store the agent was configured with: the local journal or etcd.

The journal is opened (locked and recovered) in the state dir; etcd is connected to and
its graph listed (`etcd_store`, imported only then: it brings httpx).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

from ..core.graph import Graph
from ..service import Store
from .etcd.config import EtcdConfig
from .journal.writer import Journal


class RunningStore(Store, Protocol):
    """A store as the agent holds it: its graph, and the task that keeps it going."""

    graph: Graph

    def run(self) -> Awaitable[None]:
        """Run until cancelled (the journal's writer; etcd's watch and compaction)."""


@asynccontextmanager
async def open_store(
    state_dir: Path, salvage: bool, etcd: EtcdConfig | None, locked: contextlib.ExitStack
) -> AsyncIterator[RunningStore]:
    """The store, holding `locked` (the state dir's lock) for as long as it is open: with
    etcd too, the state dir is this agent's own (its boot, its log)."""
    if etcd is None:
        with Journal.open(state_dir, salvage=salvage, locked=locked) as journal:
            yield journal
        return
    from .etcd.store import EtcdStore

    with locked:
        async with EtcdStore.open(etcd) as store:
            yield store
