"""The `unitsync` command line: a thin face on the blocking client.

Start-up time is a feature (scripts call this many times): this module imports
cyclopts, msgspec and the client only. The agent command and the renderers are
loaded when used.
"""

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import App, Parameter

from unitsync.client.client import Client, UnitsyncError
from unitsync.wire import __version__
from unitsync.wire.paths import SOCKET_ENV
from unitsync.wire.protocol import Ok

from .durations import parse_duration
from .progress import StartProgress

app = App(
    name="unitsync",
    help="Start the scripts of a workspace in the right order.",
    version=__version__,
    help_format="plaintext",
)
sync = App(name="sync", help="Declare, wait for and report units (talks to the agent).")
app.command(sync)
app.command(
    "unitsync.cli.agent_command:agent",
    name="agent",
    help="Run the agent in the foreground until SIGINT or SIGTERM.",
)
app.command(
    "unitsync.cli.completion:install_completion",
    name="--install-completion",
    help="Install shell completion for unitsync (bash, zsh or fish).",
)

SocketOption = Annotated[
    Path | None,
    Parameter(name="--socket", env_var=SOCKET_ENV, help="The agent's socket."),
]
Output = Literal["table", "json", "dot", "mermaid"]


def _fail(exc: UnitsyncError) -> int:
    print(f"unitsync: {exc}", file=sys.stderr)
    return exc.exit_code


def _change(socket: Path | None, call: Callable[[Client], Ok]) -> int:
    """Send one change; print what the agent said (notes on stderr), exit as SPEC §2 says."""
    try:
        with Client(socket, name="cli") as client:
            reply = call(client)
    except UnitsyncError as exc:
        return _fail(exc)
    if reply.message:
        print(reply.message)
    for note in reply.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


@sync.command
def ping(*, socket: SocketOption = None) -> int:
    """Check that the agent answers; print its version and uptime."""
    from unitsync.wire.timefmt import duration as format_duration

    try:
        with Client(socket, name="cli") as client:
            pong = client.ping()
    except UnitsyncError as exc:
        return _fail(exc)
    print(
        f"unitsync agent {pong.agent} (pid {pong.pid}) at {pong.socket}, "
        f"up {format_duration(pong.uptime)}"
    )
    return 0


@sync.command
def want(unit: str, dep: str, *deps: str, socket: SocketOption = None) -> int:
    """Declare that UNIT may start only after every DEP is completed."""
    return _change(socket, lambda client: client.want(unit, dep, *deps))


@sync.command
def start(
    unit: str,
    *,
    timeout: Annotated[
        str, Parameter(metavar="DURATION", help="How long to wait: 30s, 5m, 1h30m; 0 forever.")
    ] = "5m",
    rerun: Annotated[bool, Parameter(help="Start a new run even if UNIT is started.")] = False,
    socket: SocketOption = None,
) -> int:
    """Wait until every dependency of UNIT is completed, then mark UNIT started."""
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        print(f"unitsync: --timeout: {exc}", file=sys.stderr)
        return 2
    progress = StartProgress(unit, sys.stderr)
    try:
        with Client(socket, name="cli") as client:
            started = client.start(
                unit,
                rerun=rerun,
                timeout=seconds,
                on_progress=progress.update,
                tick=1.0 if progress.live else None,
            )
    except UnitsyncError as exc:
        progress.clear()
        return _fail(exc)
    progress.done(started)
    return 0


@sync.command
def complete(
    unit: str,
    *,
    force: Annotated[bool, Parameter(help="Complete UNIT even if it was never started.")] = False,
    socket: SocketOption = None,
) -> int:
    """Mark UNIT completed, releasing every unit that waits for it."""
    return _change(socket, lambda client: client.complete(unit, force=force))


@sync.command
def fail(
    unit: str,
    *,
    reason: Annotated[str, Parameter(help="Why it failed (shown to waiters).")] = "",
    socket: SocketOption = None,
) -> int:
    """Mark UNIT failed; every start waiting on it ends with an error."""
    return _change(socket, lambda client: client.fail(unit, reason))


@sync.command
def reset(
    unit: str | None = None,
    *,
    all: Annotated[bool, Parameter(name="--all", help="Reset every unit.")] = False,
    socket: SocketOption = None,
) -> int:
    """Put UNIT (or, with --all, every unit) back to pending; dependencies are kept."""
    if (unit is None) == (not all):
        print("unitsync: reset needs a UNIT or --all (not both)", file=sys.stderr)
        return 2
    return _change(socket, lambda client: client.reset(unit))


@sync.command
def status(
    unit: str | None = None,
    *,
    output: Annotated[Output | None, Parameter(alias="-o", help="Output format.")] = None,
    watch: Annotated[bool, Parameter(help="Keep the view live until Ctrl-C.")] = False,
    socket: SocketOption = None,
) -> int:
    """Show UNIT in detail, or every unit when none is named."""
    client = Client(socket, name="cli")
    if watch:
        from .watch import follow

        if output not in (None, "table", "json"):
            print("unitsync: --watch shows a table or JSON lines, not graphs", file=sys.stderr)
            return 2
        return follow(client, unit, live=output != "json" and sys.stdout.isatty())
    try:
        with client:
            units = client.status(unit)
    except UnitsyncError as exc:
        return _fail(exc)
    print(_render(units, unit, output or "table").rstrip("\n"))
    return 0


def _render(units: list, unit: str | None, output: Output) -> str:
    from . import render

    if output == "json":
        return render.to_json_one(units[0]) if unit is not None else render.to_json(units)
    if output == "dot":
        return render.render_dot(units)
    if output == "mermaid":
        return render.render_mermaid(units)
    if unit is not None:
        return render.render_unit(units[0], time.time())
    return render.render_table(units, time.time())


@sync.command(
    usage="Usage: unitsync sync run UNIT [--want DEP]... [--timeout D] "
    "[--ready-cmd CMD [--ready-interval D] | --ready-log REGEX | --notify] [--ready-timeout D] "
    "-- COMMAND..."
)
def run(
    unit: str,
    *command: str,
    want: Annotated[
        tuple[str, ...],
        Parameter(negative=(), metavar="DEP", help="A dependency (repeat for more)."),
    ] = (),
    timeout: Annotated[
        str, Parameter(metavar="DURATION", help="How long to wait: 30s, 5m, 1h30m; 0 forever.")
    ] = "5m",
    ready_cmd: Annotated[
        str | None,
        Parameter(metavar="CMD", help="A service: ready once this shell command exits 0."),
    ] = None,
    ready_interval: Annotated[
        str | None,
        Parameter(metavar="DURATION", help="How often --ready-cmd runs, each bounded by it (1s)."),
    ] = None,
    ready_log: Annotated[
        str | None,
        Parameter(metavar="REGEX", help="A service: ready on the first output line matching it."),
    ] = None,
    notify: Annotated[
        bool,
        Parameter(negative=(), help="A service: ready on READY=1 at $NOTIFY_SOCKET (sd_notify)."),
    ] = False,
    ready_timeout: Annotated[
        str | None,
        Parameter(metavar="DURATION", help="Not ready by then: fail UNIT, stop it, exit 5."),
    ] = None,
    socket: SocketOption = None,
) -> int:
    """Wait for UNIT's dependencies, run COMMAND as UNIT, then complete or fail it.

    Exits with COMMAND's status. If a dependency fails or the wait times out, COMMAND does not run.
    With --ready-cmd, --ready-log or --notify, COMMAND is a service: UNIT is completed when it
    is ready, and failed when it exits.
    """
    if not command:
        print("unitsync: run needs a command after `--`", file=sys.stderr)
        return 2
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        print(f"unitsync: --timeout: {exc}", file=sys.stderr)
        return 2
    from .run import ReadyOptions, run_unit

    readiness = ReadyOptions(ready_cmd, ready_interval, ready_log, notify, ready_timeout)
    with Client(socket, name="cli") as client:
        return run_unit(client, unit, command, want, seconds, readiness)


def main() -> None:
    try:
        code = app(result_action="return_value")
    except SystemExit as exc:
        code = exc.code
    _exit_now(code)


def _exit_now(code: object) -> None:
    """Exit without interpreter teardown: ~15 ms of a ~100 ms run, paid by every call.

    Only stdout and stderr hold anything to write, so flush them and go.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
    status = code if isinstance(code, int) and not isinstance(code, bool) else int(bool(code))
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # e.g. `unitsync sync status | head -1`
        status = status or 1
    os._exit(status)
