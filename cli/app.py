"""The `unitsync` command line: a thin face on the blocking client.

This app is the definition of the command line (help, completion, usage errors, every
form). The hot commands' bodies (`ping`, `want`, `start`, `complete`, `fail`, `run`) live in
`hot`, called from here with the parsed arguments and by the entry point's shortcut for
their plain forms (`main`, `shortcut`): give a hot command's new option to its body too.

Start-up time is a feature (scripts call this many times): this module imports
cyclopts, msgspec and the client only. The agent command and the renderers are
loaded when used.

Exit codes: `main`'s docstring.
"""

import sys
import time
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

from unitsync.client import Client
from unitsync.wire import __version__
from unitsync.wire.errors import EXIT_INTERRUPTED, EXIT_REFUSED, EXIT_USAGE, UnitsyncError
from unitsync.wire.host.paths import SOCKET_ENV
from unitsync.wire.protocol import StatusReply

from . import hot
from .durations import (
    DEFAULT_TIMEOUT,
    LONGEST,
    delay_option,
    duration_option,
    interval_option,
)
from .hot import cli_client, error_exit
from .hot import usage_error as _usage_error
from .main import main as main  # the entry point, also reachable here
from .main import may_print_help, stdout_gone
from .sizes import LOG_LIMIT, log_limit_option
from .usage import USAGE, describe

app = App(
    name="unitsync",
    help="Start the scripts of a workspace in the right order.",
    version=__version__,
    help_format="plaintext",
)
sync = App(
    name="sync",
    help="Declare, wait for and report units (talks to the agent).",
    usage="Usage: unitsync sync COMMAND [ARGS...]",
)
app.command(sync)
app.command(
    "unitsync.cli.agent_command:agent",
    name="agent",
    help="Run the agent in the foreground until SIGINT or SIGTERM.",
    usage=f"Usage: {USAGE['agent']}",
)
for _name, _help in (
    ("timeline", "Show how the boot's start-up went: when each unit waited, started and ended."),
    ("critical-chain", "Show the chain of dependencies that decided when UNIT could start."),
    ("blame", "List the units of the boot by how long they ran, longest first."),
):  # SPEC §9, loaded only when used
    sync.command(
        f"unitsync.cli.timeline.command:{_name.replace('-', '_')}",
        name=_name,
        help=_help,
        usage=f"Usage: {USAGE[_name]}",
    )
sync.command(
    "unitsync.cli.logs:logs",
    name="logs",
    help="Show what UNIT's command printed (`run` keeps it): the latest run, or others.",
    usage=f"Usage: {USAGE['logs']}",
)
app.command(
    "unitsync.cli.completion:install_completion",
    name="--install-completion",
    help="Install shell completion (bash, zsh or fish).",
)


@app.default
def _no_command() -> int:
    """`unitsync` alone is a usage error (exit 2), as for other tools."""
    app.help_print(console=_stderr_console())
    return EXIT_USAGE


@sync.default
def _no_sync_command() -> int:
    sync.help_print(console=_stderr_console())
    return EXIT_USAGE


SocketOption = Annotated[
    Path | None,
    Parameter(name="--socket", env_var=SOCKET_ENV, help="The agent's socket."),
]
Unit = Annotated[str, Parameter(help="The unit's name (any UTF-8 text up to 255 bytes).")]
Output = Literal["table", "json", "dot", "mermaid"]
OnceOption = Annotated[
    bool,
    Parameter(
        negative=(),
        help="A one-time unit: once completed, it stays completed when the workspace restarts.",
    ),
]
TimeoutOption = Annotated[
    float | None,
    Parameter(
        name="--timeout",
        converter=duration_option,
        metavar="DURATION",
        show_default=False,
        help="How long to wait for the dependencies: 30s, 5m, 1h30m; 0 waits forever "
        "[default: 5m]. The agent itself never times out a wait.",
    ),
]


@sync.command(usage=f"Usage: {USAGE['ping']}")
def ping(*, socket: SocketOption = None) -> int:
    """Check that the agent answers; print its version, graph and uptime."""
    return hot.ping(socket=socket)


@sync.command(usage=f"Usage: {USAGE['want']}")
def want(
    unit: Annotated[str, Parameter(help="The unit that waits.")],
    dep: Annotated[str, Parameter(help="A unit it waits for (it must be completed first).")],
    /,
    *more: Annotated[str, Parameter(name="DEP...", help="More units it waits for.")],
    on: Annotated[
        Literal["completed", "started", "finished"] | None,
        Parameter(
            name="--on",
            help="What UNIT needs of each DEP: completed (ready); started (started or "
            "completed: ordering only, UNIT may run beside it); finished (completed or "
            "failed: a DEP that fails does not fail UNIT) [default: completed; an edge that "
            "exists keeps its condition unless --on is given, which changes it].",
            show_default=False,
        ),
    ] = None,
    once: OnceOption = False,
    socket: SocketOption = None,
) -> int:
    """Declare that UNIT may start only after every DEP is completed (or --on started,
    finished)."""
    return hot.want(unit, dep, *more, on=on, once=once, socket=socket)


@sync.command(usage=f"Usage: {USAGE['start']}")
def start(
    unit: Unit,
    /,
    *,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    rerun: Annotated[
        bool,
        Parameter(
            negative=(),
            help="Start a new run even if UNIT's run goes on (a `run` owning it then stops its "
            "command), or if it is a done one-time unit.",
        ),
    ] = False,
    once: OnceOption = False,
    owner: Annotated[
        int | None,
        Parameter(
            metavar="PID",
            help="The process this run belongs to [default: the script that called unitsync, "
            "past wrappers such as timeout or nice]; "
            "while it runs, a second start is refused; once it is gone, one proceeds.",
        ),
    ] = None,
    socket: SocketOption = None,
) -> int:
    """Wait until every dependency of UNIT is completed, then mark it started.

    Exits 7 if UNIT is a completed one-time unit and --once is given (nothing to do).
    """
    return hot.start(unit, timeout=timeout, rerun=rerun, once=once, owner=owner, socket=socket)


@sync.command(usage=f"Usage: {USAGE['complete']}")
def complete(
    unit: Unit,
    /,
    *,
    force: Annotated[
        bool, Parameter(negative=(), help="Complete UNIT even if it was never started.")
    ] = False,
    once: OnceOption = False,
    socket: SocketOption = None,
) -> int:
    """Mark UNIT completed, releasing every unit that waits for it."""
    return hot.complete(unit, force=force, once=once, socket=socket)


@sync.command(usage=f"Usage: {USAGE['fail']}")
def fail(
    unit: Unit,
    /,
    *,
    reason: Annotated[str, Parameter(help="Why it failed (shown to waiters).")] = "",
    force: Annotated[
        bool, Parameter(negative=(), help="Fail UNIT even if the agent does not know it.")
    ] = False,
    socket: SocketOption = None,
) -> int:
    """Mark UNIT failed; every start waiting on it fails too (exit 4)."""
    return hot.fail(unit, reason=reason, force=force, socket=socket)


@sync.command(usage=f"Usage: {USAGE['reset']}")
def reset(
    unit: Annotated[str | None, Parameter(help="The unit to reset.")] = None,
    /,
    *,
    all: Annotated[bool, Parameter(name="--all", negative=(), help="Reset every unit.")] = False,
    failed: Annotated[
        bool,
        Parameter(name="--failed", negative=(), help="Reset every failed unit (to retry them)."),
    ] = False,
    force: Annotated[
        bool,
        Parameter(
            negative=(),
            help="Reset units whose run's owner still runs too; a `run` owning one stops its "
            "command.",
        ),
    ] = False,
    socket: SocketOption = None,
) -> int:
    """Put UNIT (or every unit, or every failed one) back to pending; dependencies are kept.

    A unit whose run's owner still runs (a started unit's script, a service's `run`) is left
    alone, named, and the exit status is 1, unless --force.
    """
    if [unit is not None, all, failed].count(True) != 1:
        return _usage_error("reset", "reset needs one of UNIT, --all or --failed")
    try:
        with cli_client(socket) as client:
            reply = client.reset(unit, force=force, failed=failed)
    except UnitsyncError as exc:
        return error_exit(exc)
    print(reply.message)
    for note in reply.notes:  # why each unit was left alone
        print(f"unitsync: left alone: {note}", file=sys.stderr)
    return EXIT_REFUSED if reply.left_alone else 0


@sync.command(usage=f"Usage: {USAGE['forget']}")
def forget(unit: Unit, /, *, socket: SocketOption = None) -> int:
    """Remove UNIT and its history (refused while it is wanted or started)."""
    return hot.change(socket, lambda client: client.forget(unit))


StopTimeout = Annotated[
    float | None,
    Parameter(
        name="--timeout",
        converter=duration_option,
        metavar="DURATION",
        show_default=False,
        help="How long to wait for UNIT's `run`: 10s, 1m; 0 waits forever [default: 10s].",
    ),
]


@sync.command(usage=f"Usage: {USAGE['stop']}")
def stop(unit: Unit, /, *, timeout: StopTimeout = 10.0, socket: SocketOption = None) -> int:
    """Have UNIT's `run` stop its command (SIGTERM to its group, SIGKILL 10s later).

    Returns once the command's group is gone: UNIT is then pending (its dependents' next
    starts wait for its next run) and its `run` exits 0. Exit 5 past --timeout (the `run`
    goes on stopping it); exit 1 if no live `run` holds UNIT (`reset` is the way for a unit
    whose owner is gone).
    """
    wait = LONGEST if timeout is None else timeout
    return hot.change(socket, lambda client: client.stop(unit, timeout=wait))


@sync.command(usage=f"Usage: {USAGE['restart']}")
def restart(unit: Unit, /, *, timeout: StopTimeout = 10.0, socket: SocketOption = None) -> int:
    """Have UNIT's `run` stop its command and start it again, with the same readiness.

    UNIT is started (`restarting (sync restart)`) meanwhile, so dependents that start wait
    for it; dependents already running are not touched. Returns once UNIT is ready again:
    exit 0; 4 if it failed instead; 5 past --timeout; 1 if no live `run` holds UNIT.
    """
    wait = LONGEST if timeout is None else timeout
    return hot.change(socket, lambda client: client.restart(unit, timeout=wait))


@sync.command(usage=f"Usage: {USAGE['status']}")
def status(
    unit: Annotated[
        str | None, Parameter(help="Show this unit in detail (default: every unit).")
    ] = None,
    /,
    *,
    output: Annotated[
        Output | None,
        Parameter(alias="-o", help="table (default), json, dot (Graphviz) or mermaid."),
    ] = None,
    watch: Annotated[bool, Parameter(negative=(), help="Keep the view live until Ctrl-C.")] = False,
    socket: SocketOption = None,
) -> int:
    """Show UNIT in detail, or every unit when none is named."""
    client = cli_client(socket)
    if watch:
        from .watch import follow

        if output not in (None, "table", "json"):
            return _usage_error("status", "--watch shows a table or JSON lines, not graphs")
        return follow(client, unit, live=output != "json" and sys.stdout.isatty())
    try:
        with client:
            state = client.state(unit)
    except UnitsyncError as exc:
        return error_exit(exc)
    print(_render(state, unit, output or "table").rstrip("\n"))
    if unit is not None and output in (None, "table") and state.units[0].status == "failed":
        _last_output(client, unit)
    return 0


def _last_output(client: Client, unit: str) -> None:
    """A failed unit's last lines of output, under its status (SPEC §15)."""
    from .logs import last_lines

    with client:
        lines = last_lines(client, unit)
    if lines:
        print("\nlast output:")
        print("\n".join(f"  {line}" for line in lines))


def _render(state: StatusReply, unit: str | None, output: Output) -> str:
    from . import render

    units = state.units
    if output == "json":
        if unit is not None:
            return render.to_json_one(units[0])
        return render.to_json(units, state.boot, state.boot_since, state.replica_behind_since)
    if output == "dot":
        return render.render_dot(units)
    if output == "mermaid":
        return render.render_mermaid(units)
    behind = state.replica_behind_since
    if unit is not None:
        return render.render_unit(units[0], time.time(), behind)
    return render.render_table(units, time.time(), state.boot, state.boot_since, behind)


@sync.command(usage=f"Usage: {USAGE['run']}")
def run(
    unit: Unit,
    /,
    *command: Annotated[
        str, Parameter(name="COMMAND", help="The command to run as UNIT, after `--`.")
    ],
    want: Annotated[
        tuple[str, ...],
        Parameter(negative=(), metavar="DEP", help="A dependency (repeat for more)."),
    ] = (),
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    ready_cmd: Annotated[
        str | None,
        Parameter(metavar="CMD", help="A service: ready once this shell command exits 0."),
    ] = None,
    ready_interval: Annotated[
        float | None,
        Parameter(
            converter=interval_option,
            metavar="DURATION",
            show_default=False,
            help="How often --ready-cmd runs, each run bounded by it [default: 1s].",
        ),
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
        float | None,
        Parameter(
            converter=duration_option,
            metavar="DURATION",
            show_default=False,
            help="Not ready by then: fail UNIT, stop the service, exit 5 [default: no limit].",
        ),
    ] = None,
    once: Annotated[
        bool,
        Parameter(
            negative=(),
            help="A one-time unit: if it is completed (in any boot), do not run COMMAND; exit 0.",
        ),
    ] = False,
    rerun: Annotated[
        bool,
        Parameter(
            negative=(),
            help="Start a new run even if UNIT's run goes on (its `run` then stops its "
            "command and exits 0).",
        ),
    ] = False,
    log_limit: Annotated[
        int,
        Parameter(
            converter=log_limit_option,
            metavar="SIZE",
            show_default=False,
            help="Keep at most this much of UNIT's output (`sync logs`), oldest runs dropped "
            "first: 512K, 8M, 1G; 0 records nothing [default: 8M].",
        ),
    ] = LOG_LIMIT,
    restart: Annotated[
        Literal["no", "on-failure", "always"] | None,
        Parameter(
            show_default=False,
            help="Start COMMAND again when it ends: on-failure (a non-zero status or a "
            "signal `run` did not pass on) or always (services only) [default: no].",
        ),
    ] = None,
    restart_delay: Annotated[
        float | None,
        Parameter(
            converter=delay_option,
            metavar="DURATION",
            show_default=False,
            help="Wait before a restart, doubled each time up to 1m, back once a run stayed "
            "up 1m [default: 1s].",
        ),
    ] = None,
    restart_limit: Annotated[
        int | None,
        Parameter(
            metavar="N",
            show_default=False,
            help="Give up (fail UNIT) after N restarts within --restart-window [default: 5].",
        ),
    ] = None,
    restart_window: Annotated[
        float | None,
        Parameter(
            converter=duration_option,
            metavar="DURATION",
            show_default=False,
            help="The window --restart-limit counts restarts in [default: 5m].",
        ),
    ] = None,
    socket: SocketOption = None,
) -> int:
    """Wait for UNIT's dependencies, run COMMAND as UNIT, complete or fail it.

    Exits with COMMAND's status. If a dependency fails or the wait times out, COMMAND does not run.
    With --ready-cmd, --ready-log or --notify, COMMAND is a service: UNIT is completed when it
    is ready, and failed when it exits. `run` holds the unit while COMMAND runs: if `run` is
    killed, the unit fails at once. While UNIT's run goes on (started, or a service still
    running), another `run` is refused (exit 1) unless --rerun. With --restart, COMMAND is
    started again when it ends (UNIT is started meanwhile: dependents wait, they do not fail).
    """
    return hot.run(
        unit,
        *command,
        want=want,
        timeout=timeout,
        ready_cmd=ready_cmd,
        ready_interval=ready_interval,
        ready_log=ready_log,
        notify=notify,
        ready_timeout=ready_timeout,
        once=once,
        rerun=rerun,
        log_limit=log_limit,
        restart=restart,
        restart_delay=restart_delay,
        restart_limit=restart_limit,
        restart_window=restart_window,
        socket=socket,
    )


def _main(argv: list[str]) -> int:
    """The command line by cyclopts (the entry point `main.main` calls it for what its
    shortcut declines)."""
    if may_print_help(argv):  # a man page's plain text, on a terminal or not
        from .help_format import ManPageFormatter

        app.help_formatter = sync.help_formatter = ManPageFormatter()
    try:
        code = app(argv, exit_on_error=False, print_error=False, result_action="return_value")
    except CycloptsError as exc:
        message, usage = describe(exc, argv)
        print(f"unitsync: {message}", file=sys.stderr)
        if usage:
            print(f"usage: {usage}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nunitsync: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return stdout_gone()
    except SystemExit as exc:  # --help and --version exit through here
        if exc.code == 1 and may_print_help(argv):  # rich's own answer to a closed stdout
            return stdout_gone()
        code = exc.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        return 1
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _stderr_console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(file=sys.stderr)
