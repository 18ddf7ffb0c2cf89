"""`unitsync agent`: run the agent in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys

import trio

from .files import SetupError
from .journal import JournalError
from .server import AgentConfig, run_agent

log = logging.getLogger("unitsync.agent")


def main(config: AgentConfig, log_level: str = "info") -> int:
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else a line per request to etcd
    try:
        trio.run(_until_signalled, config)
    except (SetupError, JournalError, BaseExceptionGroup) as exc:
        reason = _setup_failure(exc)
        if reason is None:
            raise
        print(f"unitsync agent: {reason}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def _setup_failure(exc: BaseException) -> BaseException | None:
    """The setup error inside `exc` (nurseries wrap it in groups), if that is all it is."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, SetupError | JournalError) else None


async def _until_signalled(config: AgentConfig) -> None:
    """Run the agent; the first SIGINT/SIGTERM stops it in order, a second one forces exit."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            agent_scope = trio.CancelScope()

            async def agent() -> None:
                with agent_scope:
                    await run_agent(config)
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
                agent_scope.cancel()
