"""In-memory journal: state lives only as long as the agent (the durable journal replaces it)."""

from __future__ import annotations

from pathlib import Path

import trio

from .graph import Graph
from .records import Record


class JournalError(Exception):
    pass


class Journal:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.seq = 0

    @classmethod
    def open(cls, state_dir: Path, *, salvage: bool = False) -> tuple[Journal, Graph]:
        graph = Graph()
        return cls(graph), graph

    def append(self, records: list[Record]) -> int:
        self.seq += 1
        return self.seq

    async def durable(self, seq: int) -> None:
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def close(self) -> None:
        pass
