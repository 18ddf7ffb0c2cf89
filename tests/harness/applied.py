"""A graph whose commands apply what they decide, for tests that chain commands on a graph
with no store around it.

The graph's commands only decide (`agent/core/graph.py`): the store applies their records
(the journal as it appends them). `AppliedGraph` does what the journal does, at once, so a
test can say `graph.want(...)`, then `graph.start(...)`, and look at the result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from unitsync.agent.core.graph import Graph

COMMANDS = (
    "begin_boot",
    "restart_host",
    "want",
    "declare_once",
    "admit",
    "start",
    "complete",
    "fail",
    "set_reason",
    "restarting",
    "stopped",
    "ask",
    "reset",
    "reset_all",
    "forget",
)
"""The graph's commands: each returns its records (`want` and `reset_all` with a second
value)."""


class AppliedGraph(Graph):
    """A `Graph` whose every command's records are applied as soon as they are decided."""


def _applying(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def decide_and_apply(graph: Graph, *args: Any, **kwargs: Any) -> Any:
        result = command(graph, *args, **kwargs)
        for record in result[0] if isinstance(result, tuple) else result:
            graph.apply(record)
        return result

    return decide_and_apply


for _name in COMMANDS:
    setattr(AppliedGraph, _name, _applying(getattr(Graph, _name)))
