"""Opening the store the agent was configured with: the local journal or etcd.

The journal is opened (locked and recovered) in the state dir; etcd is connected to and
its graph listed (`etcd.store`, imported only then: it brings httpx). Setup errors are
raised as the store's own (`JournalError`, `SetupError`) before anything is yielded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from .base import Store
from .etcd.config import EtcdConfig
from .journal.writer import Journal


@asynccontextmanager
async def open_store(
    state_dir: Path, salvage: bool, etcd: EtcdConfig | None, locked: contextlib.ExitStack
) -> AsyncIterator[Store]:
    """The store, holding `locked` (the state dir's lock) for as long as it is open: with
    etcd too, the state dir is this agent's own (its boot, its log)."""
    if etcd is None:
        with Journal.open(state_dir, salvage=salvage, locked=locked) as journal:
            yield journal
        return
    from .etcd.store import EtcdStore

    with locked:
        async with EtcdStore.open(etcd, state_dir) as store:
            yield store
