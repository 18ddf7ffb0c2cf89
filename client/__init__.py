"""unitsync's clients: one source, two worlds, around one I/O-free session.

    Client       the blocking client (plain sockets; what the CLI uses; never imports trio)
    AsyncClient  the trio client: the same calls, awaited (imported on first use: it
                 imports trio, so `import unitsync.client` and the CLI never do)

    _async/      the trio client: the one hand-written source of both
    _sync/       the blocking client, generated from `_async/` (`unasync`)
    _backends/   what differs: I/O, default bounds, callbacks, starting an agent
    unasync      the generator: `python -m unitsync.client.unasync [--check]`
    retry        what a call does across connections: start tokens, backoff, grace
    autostart    start an agent for a blocking client that found none (loaded only then)
    owners       who owns a run: a process of this host as the wire's `Owner`

The protocol's rules (trust, hello, replies, errors, one graph) are the session's
(`unitsync.wire.session`); the errors, with their exit codes, are `unitsync.wire.errors`'s,
and the ones a script meets most are named here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unitsync.wire.errors import (
    AgentGone,
    AgentUnavailable,
    DependencyFailed,
    GraphChanged,
    NoAgent,
    Refused,
    UnitsyncError,
    WaitTimeout,
)

from ._sync.client import Client

if TYPE_CHECKING:
    from ._async.client import AsyncClient

__all__ = [
    "AgentGone",
    "AgentUnavailable",
    "AsyncClient",
    "Client",
    "DependencyFailed",
    "GraphChanged",
    "NoAgent",
    "Refused",
    "UnitsyncError",
    "WaitTimeout",
]


def __getattr__(name: str) -> object:
    """`AsyncClient`, imported when first asked for (it imports trio)."""
    if name == "AsyncClient":
        from ._async.client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
