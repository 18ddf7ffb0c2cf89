"""`unitsync agent`: run the agent in the foreground until SIGINT or SIGTERM.

What the process inherits from whoever started it is read here, once: a listening
socket (systemd socket activation, `activation.py`) and where to say it is ready
(`NOTIFY_SOCKET`, `wire.host.notify`): `READY=1` once the agent serves, `STOPPING=1` when a
signal stops it in order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from unitsync.wire.host.notify import Notifier

from .files import SetupError
from .serve.activation import listening_socket, take_listen_fds
from .serve.partial_frames import return_big_buffers
from .serve.server import AgentConfig, run_agent
from .serve.socket_keeper import Displaced
from .service import Service
from .store.journal.writer import JournalError

log = logging.getLogger("unitsync.agent")


def main(config: AgentConfig, log_level: str = "info") -> int:
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return_big_buffers()  # so the cap on frames in progress bounds memory (partial_frames.py)
    notifier = Notifier.from_environ()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else a line per request to etcd
    try:
        trio.run(_until_signalled, _adopt_passed_socket(config), notifier)
    except (SetupError, JournalError, Displaced, BaseExceptionGroup) as exc:
        reason = _setup_failure(exc)
        if reason is None:
            raise
        if isinstance(reason, Displaced):  # an orderly stop, leaving the path to its holder
            log.warning("%s", reason)
            log.info("stopped")
            return 0
        print(f"unitsync agent: {reason}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def _setup_failure(exc: BaseException) -> BaseException | None:
    """The setup error inside `exc` (nurseries wrap it in groups), if that is all it is."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, SetupError | JournalError | Displaced) else None


def _adopt_passed_socket(config: AgentConfig) -> AgentConfig:
    """Serve the socket systemd passed, if any, instead of binding `config.socket`."""
    fds = take_listen_fds()
    if not fds:
        return config
    sock = listening_socket(fds)
    path = Path(sock.getsockname())
    if path != config.socket:
        log.info("serving %s, the socket systemd passed, instead of %s", path, config.socket)
    return dataclasses.replace(config, socket=path, inherited=sock)


async def _until_signalled(config: AgentConfig, notifier: Notifier) -> None:
    """Run the agent; the first SIGINT/SIGTERM stops it in order, a second one forces exit."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            agent_scope = trio.CancelScope()

            async def agent() -> None:
                with agent_scope:
                    async with trio.open_nursery() as serving:
                        service: Service = await serving.start(run_agent, config)
                        notifier.ready(
                            f"serving {len(service.graph.units)} units at {config.socket}"
                        )
                nursery.cancel_scope.cancel()

            # Not `nursery.start`: signals must stop an agent still starting up (one waiting
            # for its etcd cluster, say) as well as one serving.
            nursery.start_soon(agent)
            async for signum in signals:
                name = signal.Signals(signum).name
                if agent_scope.cancel_called:
                    log.warning("second %s: exiting at once", name)
                    os._exit(128 + signum)
                log.info("%s received: shutting down", name)
                notifier.stopping(f"stopping on {name}")
                agent_scope.cancel()
