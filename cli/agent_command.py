"""`unitsync agent`, loaded only when used: it is the one command that needs trio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter

from unitsync.agent.holds import RECLAIM_GRACE
from unitsync.agent.limits import DEFAULT_MAX_CONNECTIONS
from unitsync.wire.paths import SOCKET_ENV, STATE_DIR_ENV, default_socket, default_state_dir

from .durations import duration_option

LogLevel = Literal["debug", "info", "warning", "error"]


def agent(
    *,
    socket: Annotated[Path | None, Parameter(env_var=SOCKET_ENV, help="Where to listen.")] = None,
    state_dir: Annotated[
        Path | None,
        Parameter(
            env_var=STATE_DIR_ENV, help="Where the journal lives (default: the user state dir)."
        ),
    ] = None,
    log_level: Annotated[LogLevel, Parameter(help="How much the agent logs (to stderr).")] = "info",
    salvage: Annotated[
        bool,
        Parameter(
            help="If the journal is damaged before its tail, keep the valid prefix and move "
            "the damaged file aside instead of refusing to start."
        ),
    ] = False,
    boot_id: Annotated[
        str | None,
        Parameter(
            env_var="UNITSYNC_BOOT_ID",
            help="This boot's identity, if the platform knows better than the kernel's boot "
            "id and PID 1's start time; a new one means the workspace restarted.",
        ),
    ] = None,
    reclaim_grace: Annotated[
        float | None,
        Parameter(
            converter=duration_option,
            metavar="DURATION",
            show_default=False,
            help="After an agent restart, how long a `run` that held a unit has to come back "
            "before the unit fails [default: 10s].",
        ),
    ] = RECLAIM_GRACE,
    max_connections: Annotated[
        int, Parameter(help="Most connections served at once; the rest are refused at once.")
    ] = DEFAULT_MAX_CONNECTIONS,
) -> int:
    """Run the agent in the foreground until SIGINT or SIGTERM."""
    from unitsync.agent.limits import Limits
    from unitsync.agent.main import main
    from unitsync.agent.server import AgentConfig

    config = AgentConfig(
        socket=socket or default_socket(),
        state_dir=state_dir or default_state_dir(),
        salvage=salvage,
        limits=Limits(max_connections=max_connections),
        boot_id=boot_id,
        reclaim_grace=reclaim_grace or 0.0,
    )
    return main(config, log_level)
