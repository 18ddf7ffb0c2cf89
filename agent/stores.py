"""Opening the store the agent was configured with: the local journal or etcd.

The journal is opened (locked and recovered) in the state dir; etcd is connected to and
its graph listed (`etcd_store`, imported only then: it brings httpx).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

from .graph import Graph
from .journal import Journal
from .service import Store
from .store_config import EtcdConfig


class RunningStore(Store, Protocol):
    """A store as the agent holds it: its graph, and the task that keeps it going."""

    graph: Graph

    def run(self) -> Awaitable[None]:
        """Run until cancelled (the journal's writer; etcd's watch and compaction)."""


@asynccontextmanager
async def open_store(
    state_dir: Path, salvage: bool, etcd: EtcdConfig | None
) -> AsyncIterator[RunningStore]:
    if etcd is None:
        with Journal.open(state_dir, salvage=salvage) as journal:
            yield journal
        return
    from .etcd_store import EtcdStore

    async with EtcdStore.open(etcd) as store:
        yield store
