"""The agent's nursery tree.

    run_agent
    ├── journal writer  (shielded; cancelled last, so every accepted change is flushed)
    └── serve_listeners
        └── one task per connection

Shutdown is cancellation of `run_agent`: connections stop first (a waiting
`start` is told why), then the journal flushes, then the socket file goes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .connection import serve_connection
from .files import ensure_private_dir, exclusive_lock
from .journal import Journal
from .listener import bound_socket
from .service import Service

log = logging.getLogger("unitsync.agent")


@dataclass(frozen=True)
class AgentConfig:
    socket: Path
    state_dir: Path
    salvage: bool = False
    """Keep the valid prefix of a damaged journal instead of refusing to start."""


async def run_agent(
    config: AgentConfig, *, task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled. Setup errors are raised before `task_status.started`."""
    ensure_private_dir(config.socket.parent)
    lock_path = config.socket.with_name(config.socket.name + ".lock")
    with (
        exclusive_lock(lock_path, f"the socket {config.socket}"),
        bound_socket(config.socket) as sock,
    ):
        # Bound before the journal loads: clients that connect meanwhile wait in the backlog.
        journal, graph = Journal.open(config.state_dir, salvage=config.salvage)
        try:
            service = Service(graph, journal, socket=config.socket, state_dir=config.state_dir)
            log.info(
                "listening on %s (state in %s, %d units)",
                config.socket,
                config.state_dir,
                len(graph.units),
            )
            await _serve(service, journal, trio.SocketListener(sock), task_status)
        finally:
            journal.close()


async def _serve(
    service: Service,
    journal: Journal,
    listener: trio.SocketListener,
    task_status: trio.TaskStatus[Service],
) -> None:
    async with trio.open_nursery() as nursery:
        journal_scope = trio.CancelScope(shield=True)
        nursery.start_soon(_run_in, journal_scope, journal.run)
        try:
            await trio.serve_listeners(
                lambda stream: _connection(service, stream),
                [listener],
                task_status=_Relay(task_status, service),
            )
        finally:
            journal_scope.cancel()


async def _run_in(scope: trio.CancelScope, fn: Any) -> None:
    with scope:
        await fn()


async def _connection(service: Service, stream: trio.SocketStream) -> None:
    try:
        await serve_connection(service, stream)
    except Exception:
        # A bug in serving one client must not take the agent down for everyone.
        log.exception("error while serving a connection; it was closed")


class _Relay:
    """Report the service (not the listeners) once serve_listeners is accepting."""

    def __init__(self, task_status: trio.TaskStatus[Service], service: Service) -> None:
        self.task_status = task_status
        self.service = service

    def started(self, _value: object = None) -> None:
        self.task_status.started(self.service)
