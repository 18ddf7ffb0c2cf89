"""The agent's nursery tree.

    run_agent
    ├── journal writer  (shielded; cancelled last, so every accepted change is flushed)
    └── serve_listeners
        └── one task per connection

Shutdown is cancellation of `run_agent`: connections stop first (a waiting
`start` is told why), then the journal flushes, then the socket file goes.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .connection import Limits, refuse_busy, serve_connection
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
    limits: Limits = dataclasses.field(default_factory=Limits)


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
        gc.freeze()  # what was loaded lives as long as the agent: stop rescanning it
        try:
            service = Service(graph, journal, socket=config.socket, state_dir=config.state_dir)
            log.info(
                "listening on %s (state in %s, %d units)",
                config.socket,
                config.state_dir,
                len(graph.units),
            )
            limits = _fit_to_open_file_limit(config.limits)
            await _serve(service, journal, trio.SocketListener(sock), limits, task_status)
        finally:
            journal.close()


async def _serve(
    service: Service,
    journal: Journal,
    listener: trio.SocketListener,
    limits: Limits,
    task_status: trio.TaskStatus[Service],
) -> None:
    gate = _Gate(limits)
    async with trio.open_nursery() as nursery:
        journal_scope = trio.CancelScope(shield=True)
        nursery.start_soon(_run_in, journal_scope, journal.run)
        try:
            await trio.serve_listeners(
                lambda stream: gate.serve(service, stream),
                [listener],
                task_status=_Relay(task_status, service),
            )
        finally:
            journal_scope.cancel()


async def _run_in(scope: trio.CancelScope, fn: Any) -> None:
    with scope:
        await fn()


class _Gate:
    """Counts connections and turns away those past the cap."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0

    async def serve(self, service: Service, stream: trio.SocketStream) -> None:
        if self.open >= self.limits.max_connections:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warning(
                    "refused a connection: %d open is the limit (%d refused so far)",
                    self.open,
                    self.refused,
                )
            await refuse_busy(stream, self.limits)
            return
        self.open += 1
        try:
            await serve_connection(service, stream, self.limits)
        except Exception:
            # A bug in serving one client must not take the agent down for everyone.
            log.exception("error while serving a connection; it was closed")
        finally:
            self.open -= 1


RESERVED_FILES = 64
"""Descriptors kept for the journal, the listener and refusing connections politely."""


def _fit_to_open_file_limit(limits: Limits) -> Limits:
    """Raise the soft open-file limit to the hard one; cap connections below it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("raised the open-file limit from %d to %d", soft, hard)
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    room = soft - RESERVED_FILES
    if room < limits.max_connections:
        log.info("serving at most %d connections (open-file limit %d)", room, soft)
        return dataclasses.replace(limits, max_connections=max(room, 1))
    return limits


class _Relay:
    """Report the service (not the listeners) once serve_listeners is accepting."""

    def __init__(self, task_status: trio.TaskStatus[Service], service: Service) -> None:
        self.task_status = task_status
        self.service = service

    def started(self, _value: object = None) -> None:
        self.task_status.started(self.service)
