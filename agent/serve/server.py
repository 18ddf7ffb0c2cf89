"""The agent's nursery tree.

    run_agent
    ├── the store's task: the journal's writer (shielded; cancelled last, so every
    │   accepted change is flushed), or etcd's watch feeding the replica
    ├── expire_unclaimed  (after a restart: fails held runs whose `run` did not come back)
    ├── socket keeper   (accepts; binds the socket again if its file is removed)
    └── one task per connection (here, not under the keeper: a new socket drops none)

Before the listeners start, a new boot is made durable by the store (SPEC §7,
`Store.begin_boot`): nobody is served a state from before a workspace restart.

A bug tripped while serving one connection closes that connection only, and is logged
rate-limited (`log_fault`).

Locks, in order: the state dir's, then the socket path's (`socket_keeper`). With socket
activation, an agent that bound this very path itself (when the socket unit had failed)
may still hold them: it steps aside within seconds of finding systemd's socket in its
place, and systemd's agent waits for it, bounded (`_await_handover`), rather than fail and
be restarted into systemd's start limit.

Shutdown is cancellation of `run_agent`: accepting and connections stop first (a
waiting `start` is told why), then the journal flushes, then the socket file goes, and
only then does the socket stop listening (`socket_keeper`): a file that refuses
connections means a crash, which clients that lose their agent act on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import platform
import resource
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from unitsync.wire.framing import encode
from unitsync.wire.graph_id import short
from unitsync.wire.host.lockfile import holder_of
from unitsync.wire.host.peer import lock_holder, socket_lock_name
from unitsync.wire.serving import cannot_start

from ..boots import boot_identity
from ..files import SetupError
from ..holds import RECLAIM_GRACE
from ..log_throttle import Throttle
from ..service import Service
from ..store.base import Store
from ..store.etcd.config import EtcdConfig
from ..store.journal.writer import LOCK_NAME, JournalError, lock_state_dir
from ..store.open import open_store
from .connection import refuse_busy, serve_connection
from .limits import Limits
from .partial_frames import PartialFrames
from .socket_keeper import RECHECK_INTERVAL, SocketKeeper

log = logging.getLogger("unitsync.agent")

HANDOVER_WAIT = 3 * RECHECK_INTERVAL
"""With socket activation, how long to wait for an agent that served this very path to step
aside: it notices systemd's socket within RECHECK_INTERVAL and then stops in order."""
HANDOVER_POLL = 0.1
"""How often the lock holders are looked at meanwhile (a few dozen looks, once in a while)."""


@dataclass(frozen=True)
class AgentConfig:
    socket: Path
    state_dir: Path
    salvage: bool = False
    """Keep the valid prefix of a damaged journal instead of refusing to start."""
    limits: Limits = dataclasses.field(default_factory=Limits)
    boot_id: str | None = None
    """The boot's identity if the platform knows it (`--boot-id`); else read off the kernel."""
    reclaim_grace: float = RECLAIM_GRACE
    """After a restart, how long a `run` has to come back before its unit fails."""
    host_id: str = ""
    """This agent's host, among several sharing a graph (default: the host name)."""
    inherited: socket.socket | None = None
    """A listening socket to serve instead of binding `socket` (systemd socket activation);
    `socket` is then its path."""
    etcd: EtcdConfig | None = None
    """Share the graph through etcd (SPEC §10) instead of keeping it in the state dir."""


async def run_agent(
    config: AgentConfig, *, task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled. Setup errors are raised before `task_status.started`."""
    # The state dir first: a second agent on it is turned away before it touches any socket.
    # Bound before the state loads: clients that connect meanwhile wait in the backlog.
    await _await_handover(config)
    with (
        lock_state_dir(config.state_dir, config.socket.absolute()) as state_lock,
        SocketKeeper(config.socket, config.inherited) as keeper,
    ):
        async with (
            _telling_waiting_clients(keeper, config),
            open_store(
                config.state_dir, config.salvage, config.etcd, state_lock.pop_all()
            ) as store,
        ):
            gc.freeze()  # what was loaded lives as long as the agent: stop rescanning it
            service = Service(
                store,
                socket=config.socket,
                state_dir=config.state_dir,
                host=config.host_id or platform.node(),
            )
            log.info(
                "listening on %s (state in %s, graph %s, %d units)",
                config.socket,
                store.location,
                short(store.graph_id),
                len(store.graph.units),
            )
            limits = _fit_to_open_file_limit(config.limits)
            await _serve(service, store, keeper, limits, config, task_status)


@contextlib.asynccontextmanager
async def _telling_waiting_clients(
    keeper: SocketKeeper, config: AgentConfig
) -> AsyncIterator[None]:
    """If the agent cannot start (its journal is damaged, its state dir unusable), the
    clients already queued at its socket are told why (`start_failed`, exit 3, naming
    `--salvage` where it applies) before it exits, rather than finding their connection
    reset: under socket activation the connection that started the agent is one of them."""
    try:
        yield
    except* (JournalError, SetupError) as group:
        if not keeper.serving:
            reason = str(group.exceptions[0])
            told = keeper.turn_away(encode(cannot_start(str(config.socket), reason)))
            if told:
                log.info("told %d waiting client(s) that the agent cannot start", told)
        raise


async def _serve(
    service: Service,
    store: Store,
    keeper: SocketKeeper,
    limits: Limits,
    config: AgentConfig,
    task_status: trio.TaskStatus[Service],
) -> None:
    gate = _Gate(limits)
    async with trio.open_nursery() as nursery:
        store_scope = trio.CancelScope(shield=True)
        nursery.start_soon(_run_in, store_scope, store.run)
        try:
            await _begin_boot(service, config.boot_id)  # before serving anyone (SPEC §7)
            nursery.start_soon(service.expire_unclaimed, config.reclaim_grace)
            nursery.start_soon(service.remove_forgotten_logs)
            await nursery.start(keeper.serve, lambda stream: gate.serve(service, stream), nursery)
            task_status.started(service)  # accepting: report the service, not the listeners
            await trio.sleep_forever()
        finally:
            store_scope.cancel()


async def _await_handover(config: AgentConfig) -> None:
    """With socket activation: while an agent that served this same path holds the socket's
    lock or the state dir's, wait for it to step aside (up to HANDOVER_WAIT); then take the
    locks as usual, which names it if it is still there."""
    if config.inherited is None:
        return
    deadline = trio.current_time() + HANDOVER_WAIT
    told = False
    while trio.current_time() < deadline:
        holder = await trio.to_thread.run_sync(_agent_on_this_path, config)
        if holder is None:
            return
        if not told:
            log.info(
                "the agent (pid %d) that served %s before systemd's socket still runs; "
                "waiting up to %gs for it to step aside",
                holder,
                config.socket,
                HANDOVER_WAIT,
            )
            told = True
        await trio.sleep(HANDOVER_POLL)


def _agent_on_this_path(config: AgentConfig) -> int | None:
    """The pid of a live agent holding this socket path's lock, or the state dir's lock
    while serving this same path; None if there is none."""
    holder = lock_holder(socket_lock_name(config.socket))
    if holder is not None and holder.pid > 0 and holder.uid == os.getuid():
        return holder.pid
    record = holder_of(config.state_dir / LOCK_NAME)  # (a crash leaves the file behind)
    if (
        record is not None
        and record.pid != os.getpid()
        and record.serving == str(config.socket.absolute())
    ):
        return record.pid
    return None


async def _begin_boot(service: Service, boot_id: str | None) -> None:
    before = service.graph.boot
    number = await service.begin_boot(boot_identity(boot_id))
    if before and number != before:
        log.info("boot %d: the workspace restarted; every unit starts over", number)
    elif number != before:
        log.info("boot %d begins", number)


async def _run_in(scope: trio.CancelScope, fn: Any) -> None:
    with scope:
        await fn()


class _Gate:
    """Counts connections and turns away those past the cap."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self.faults = Throttle(FAULT_LOG_INTERVAL)
        self.partial = PartialFrames(limits.partial_frames)

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
            await serve_connection(service, stream, self.limits, self.partial)
        except Exception as exc:
            # A bug in serving one client must not take the agent down for everyone, nor
            # may a peer that triggers it fill the log: one line, rate-limited.
            log_fault(self.faults, exc)
        finally:
            self.open -= 1


FAULT_LOG_INTERVAL = 60.0
"""At most one line per minute about connections that failed unexpectedly (plus a count)."""


def log_fault(faults: Throttle, exc: Exception) -> None:
    """Log an unexpected error while serving a connection: the first with its traceback,
    then one line a minute at most, counting the rest, so no peer can flood the log."""
    held_back = faults.passes()
    if held_back is None:
        return
    more = f" ({held_back} more since the last report)" if held_back else ""
    log.error(
        "a connection failed unexpectedly and was closed: %s: %s%s",
        type(exc).__name__,
        exc,
        more,
        exc_info=exc if faults.passed == 1 else None,
    )


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
