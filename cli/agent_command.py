"""`unitsync agent`, loaded only when used: it is the one command that needs trio."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter

from unitsync.agent.holds import RECLAIM_GRACE
from unitsync.agent.serve.limits import DEFAULT_MAX_CONNECTIONS
from unitsync.agent.store.etcd.config import EtcdConfig, parse_store
from unitsync.wire.errors import EXIT_USAGE
from unitsync.wire.host.paths import SOCKET_ENV, STATE_DIR_ENV, default_socket, default_state_dir

from .durations import duration_option, parse_duration

LogLevel = Literal["debug", "info", "warning", "error"]
STORE_ENV = "UNITSYNC_STORE"


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
    host_id: Annotated[
        str | None,
        Parameter(
            env_var="UNITSYNC_HOST_ID",
            help="This host's name among agents sharing a graph through --store "
            "[default: the host name].",
        ),
    ] = None,
    reclaim_grace: Annotated[
        float | None,
        Parameter(
            converter=duration_option,
            metavar="DURATION",
            show_default=False,
            help="After an agent restart, how long a `run` that held a unit has to come back "
            "before the unit fails; 0 waits forever [default: 10s].",
        ),
    ] = RECLAIM_GRACE,
    max_connections: Annotated[
        int, Parameter(help="Most connections served at once; the rest are refused at once.")
    ] = DEFAULT_MAX_CONNECTIONS,
    store: Annotated[
        str | None,
        Parameter(
            env_var=STORE_ENV,
            help="Where the graph lives: 'file:' (the journal in the state dir; the default) "
            "or etcd://HOST:PORT[,HOST:PORT...]/PREFIX, one graph shared by every agent "
            "using that etcd cluster and prefix.",
        ),
    ] = None,
    etcd_ca: Annotated[
        Path | None, Parameter(help="CA certificate for etcd's members (turns TLS on).")
    ] = None,
    etcd_cert: Annotated[
        Path | None, Parameter(help="Client certificate for etcd (turns TLS on).")
    ] = None,
    etcd_key: Annotated[Path | None, Parameter(help="The client certificate's key.")] = None,
    etcd_user: Annotated[
        str | None, Parameter(env_var="UNITSYNC_ETCD_USER", help="etcd user to log in as.")
    ] = None,
    etcd_password_file: Annotated[
        Path | None,
        Parameter(env_var="UNITSYNC_ETCD_PASSWORD_FILE", help="File holding that password."),
    ] = None,
    etcd_timeout: Annotated[
        str,
        Parameter(
            metavar="DURATION", help="How long a change waits for etcd before failing (exit 6)."
        ),
    ] = "10s",
    etcd_watch_silence: Annotated[
        str,
        Parameter(
            metavar="DURATION",
            help="Reopen a watch that shows nothing this long, not even etcd's progress "
            "notifications (about twice etcd's --experimental-watch-progress-notify-interval).",
        ),
    ] = "15m",
) -> int:
    """Run the agent in the foreground until SIGINT or SIGTERM."""
    from unitsync.agent.main import main
    from unitsync.agent.serve.limits import Limits
    from unitsync.agent.serve.server import AgentConfig

    from .words import utf8_problem

    texts = (("--boot-id", boot_id), ("--host-id", host_id), ("--store", store))
    if problem := utf8_problem((*texts, ("--etcd-user", etcd_user))):
        print(f"unitsync agent: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if max_connections < 1:
        print(
            f"unitsync agent: --max-connections {max_connections} would refuse every "
            f"client; give 1 or more [default: {DEFAULT_MAX_CONNECTIONS}]",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        etcd = _etcd_config(
            store,
            ca=etcd_ca,
            cert=etcd_cert,
            key=etcd_key,
            user=etcd_user,
            password_file=etcd_password_file,
            timeout=etcd_timeout,
            watch_silence=etcd_watch_silence,
        )
    except ValueError as exc:
        print(f"unitsync agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = AgentConfig(
        socket=socket or Path(default_socket()),
        state_dir=state_dir or default_state_dir(),
        salvage=salvage,
        limits=Limits(max_connections=max_connections),
        boot_id=boot_id,
        reclaim_grace=math.inf if reclaim_grace is None else reclaim_grace,
        host_id=host_id or "",
        etcd=etcd,
    )
    return main(config, log_level)


def _etcd_config(
    store: str | None,
    *,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    user: str | None,
    password_file: Path | None,
    timeout: str,
    watch_silence: str,
) -> EtcdConfig | None:
    """The etcd store the options describe, or None for the journal; ValueError if wrong."""
    config = parse_store(store)
    given = [name for name, value in (("--etcd-ca", ca), ("--etcd-cert", cert),
             ("--etcd-key", key), ("--etcd-user", user), ("--etcd-password-file", password_file))
             if value is not None]  # fmt: skip
    if config is None:
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --store etcd://...")
        return None
    if (cert is None) != (key is None):
        raise ValueError("--etcd-cert and --etcd-key go together: give both or neither")
    if (user is None) != (password_file is None):
        raise ValueError("--etcd-user and --etcd-password-file go together: give both or neither")
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text().rstrip("\n")
        except OSError as exc:
            raise ValueError(f"cannot read the etcd password file: {exc}") from None
    return dataclasses.replace(
        config,
        ca=ca,
        cert=cert,
        key=key,
        user=user,
        password=password,
        timeout=_positive(timeout, "--etcd-timeout"),
        watch_silence=_positive(watch_silence, "--etcd-watch-silence"),
    )


def _positive(text: str, option: str) -> float:
    """A duration above 0 (these are kept as text: their defaults hold until a store is given)."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"invalid value {text!r} for {option}: {exc}") from None
    if seconds is None:
        raise ValueError(f"{option} must be more than 0")
    return seconds
