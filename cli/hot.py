"""The hot commands' bodies: `ping`, `want`, `start`, `complete`, `fail`, `run`.

A workspace's scripts call these dozens of times at start-up, so each is written once here,
with no command-line library: the cyclopts command of the same name in `app.py` (the
definition of the command line: help, completion, usage errors, every form) calls it with
its parsed arguments, and so does `shortcut` for the plain forms it recognises before
cyclopts is imported. Each body takes exactly its cyclopts command's parameters, with the
same defaults (`tests/test_shortcut.py` checks both).

Importing this module loads the blocking client and msgspec, never cyclopts, rich or trio
(`tests/test_shortcut.py`); what only one command needs is imported by that command.

Error rules: every `UnitsyncError` is said on stderr (`unitsync: ...`) and becomes its exit
status; a command line that cannot be right is a usage error (exit 2) with the command's
usage line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from unitsync.client import Client
from unitsync.wire.errors import EXIT_INTERRUPTED, EXIT_USAGE, UnitsyncError

from .durations import DEFAULT_TIMEOUT
from .sizes import LOG_LIMIT
from .usage import TAKE_UNITS, USAGE, command_options

if TYPE_CHECKING:
    from typing import TypeAlias

    from unitsync.client.autostart import Autostarted
    from unitsync.wire.protocol import Condition, Ok

    SocketPath: TypeAlias = str | os.PathLike[str] | None
    """`--socket`: a `str` from the shortcut, a `Path` from cyclopts; the client takes both."""

_typed: list[str] = []
"""The words being parsed: cyclopts hands `run` its COMMAND from before `--` and after it
alike, and only the words after `--` are the command."""


def typed(argv: list[str]) -> None:
    """Remember the command line being answered (for `run`'s check of stray words)."""
    global _typed
    _typed = argv


def cli_client(socket: SocketPath) -> Client:
    """The CLI's client: when it had to start the agent, it says so (once, on stderr). Made
    once the command line has parsed: a warning about it is said here, before any output."""
    _warn_of_options_taken_as_names(_typed)
    return Client(socket, name="cli", on_autostart=_say_started)


def _warn_of_options_taken_as_names(argv: list[str]) -> None:
    """A unit name after `--` that is one of the command's options (`want -- a --once`) is
    a name, as `--` says; but more likely a misplaced option: say so on stderr."""
    if len(argv) < 3 or argv[0] != "sync" or argv[1] not in TAKE_UNITS or "--" not in argv:
        return
    options = {*command_options(argv[1]), "--socket"}
    for word in argv[argv.index("--") + 1 :]:
        if word in options:
            print(
                f"unitsync: warning: {word!r} after `--` is taken as a unit name, not as the "
                f"option {word}; options go before `--`",
                file=sys.stderr,
            )


def _say_started(agent: Autostarted) -> None:
    why = f"{agent.because}; " if agent.because else ""
    print(
        f"unitsync: {why}started an agent (pid {agent.pid}) at {agent.socket}; "
        f"its log: {agent.log}",
        file=sys.stderr,
    )


def error_exit(exc: UnitsyncError) -> int:
    """Say what went wrong (`unitsync: ...` on stderr); the exit status it calls for."""
    print(f"unitsync: {exc}", file=sys.stderr)
    return exc.exit_code


def usage_error(command: str, message: str) -> int:
    """A command line that cannot be right: what is wrong, the usage line, exit 2."""
    print(f"unitsync: {message}", file=sys.stderr)
    print(f"usage: {USAGE[command]}", file=sys.stderr)
    return EXIT_USAGE


def change(socket: SocketPath, call: Callable[[Client], Ok]) -> int:
    """Send one change; print what the agent said (notes on stderr), exit as SPEC §2 says."""
    try:
        with cli_client(socket) as client:
            reply = call(client)
    except UnitsyncError as exc:
        return error_exit(exc)
    if reply.message:
        print(reply.message)
    for note in reply.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def ping(*, socket: SocketPath = None) -> int:
    from unitsync.wire.timefmt import duration as format_duration

    try:
        with cli_client(socket) as client:
            pong = client.ping()
    except UnitsyncError as exc:
        return error_exit(exc)
    from unitsync.wire.graph_id import short
    from unitsync.wire.timefmt import clock

    print(
        f"unitsync agent {pong.agent} (pid {pong.pid}) at {pong.socket}, graph "
        f"{short(pong.graph)}, up {format_duration(pong.uptime)}, boot {pong.boot} since "
        f"{clock(pong.boot_since)}"
    )
    return 0


def want(
    unit: str,
    dep: str,
    /,
    *more: str,
    on: Condition | None = None,
    once: bool = False,
    socket: SocketPath = None,
) -> int:
    return change(socket, lambda client: client.want(unit, dep, *more, once=once, on=on))


def start(
    unit: str,
    /,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    rerun: bool = False,
    once: bool = False,
    owner: int | None = None,
    socket: SocketPath = None,
) -> int:
    from unitsync.client.owners import owner as owner_of
    from unitsync.wire.host.processes import calling_script

    from .progress import StartProgress

    described = owner_of(owner if owner is not None else calling_script(os.getppid()), "start")
    if owner is not None and described is None and (owner <= 0 or os.path.exists("/proc/self")):
        return usage_error(
            "start",
            f"--owner {owner}: no process has that pid; give the pid of the script this run "
            "belongs to (in a shell script: --owner $$)",
        )
    progress = StartProgress(unit, sys.stderr)
    try:
        with cli_client(socket) as client:
            started = client.start(
                unit,
                rerun=rerun,
                timeout=timeout,
                on_progress=progress.update,
                tick=progress.tick,
                once=once,
                owner=described,
            )
    except UnitsyncError as exc:
        progress.clear()
        return error_exit(exc)
    except KeyboardInterrupt:
        progress.interrupted()
        return EXIT_INTERRUPTED
    progress.done(started)
    return 0


def complete(
    unit: str, /, *, force: bool = False, once: bool = False, socket: SocketPath = None
) -> int:
    return change(socket, lambda client: client.complete(unit, force=force, once=once))


def fail(unit: str, /, *, reason: str = "", force: bool = False, socket: SocketPath = None) -> int:
    return change(socket, lambda client: client.fail(unit, reason, force=force))


def run(
    unit: str,
    /,
    *command: str,
    want: tuple[str, ...] = (),
    timeout: float | None = DEFAULT_TIMEOUT,
    ready_cmd: str | None = None,
    ready_interval: float | None = None,
    ready_log: str | None = None,
    notify: bool = False,
    ready_timeout: float | None = None,
    once: bool = False,
    rerun: bool = False,
    log_limit: int = LOG_LIMIT,
    restart: str | None = None,
    restart_delay: float | None = None,
    restart_limit: int | None = None,
    restart_window: float | None = None,
    socket: SocketPath = None,
) -> int:
    if _unit_after_dashes(command):  # `run [OPTIONS] -- -x -- COMMAND`
        if command[:1] != ("--",):
            import shlex

            return usage_error(
                "run",
                f"run: a UNIT given after `--` ({unit}) needs a second `--` before the command: "
                f"unitsync sync run [OPTIONS] -- {shlex.quote(unit)} -- COMMAND",
            )
        command = command[1:]
    elif stray := _before_dashes(command):
        import shlex

        return usage_error(
            "run",
            f"run: {shlex.join(stray)} before `--` is neither UNIT nor an option's value (a "
            "duration is one word: --timeout 5m); the command goes after `--`",
        )
    if not command:
        return usage_error("run", "run needs a command after `--`")
    from .words import utf8_problem

    if problem := utf8_problem((("--ready-cmd", ready_cmd), ("--ready-log", ready_log))):
        print(f"unitsync: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from .run.command import run_unit
    from .run.readiness.options import BadOption, ReadyOptions, detector_for

    readiness = ReadyOptions(ready_cmd, ready_interval, ready_log, notify, ready_timeout)
    try:
        detector_for(readiness, once=once)  # a usage error, said before the agent is asked
    except BadOption as exc:
        return usage_error("run", f"run: {exc}")
    from .run.policy import BadPolicy, policy_from

    service = ready_cmd is not None or ready_log is not None or notify
    try:
        policy = policy_from(restart, restart_delay, restart_limit, restart_window, service=service)
    except BadPolicy as exc:
        print(f"unitsync: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with cli_client(socket) as client:
        return run_unit(
            client,
            unit,
            command,
            want,
            timeout,
            readiness,
            once=once,
            rerun=rerun,
            log_limit=log_limit,
            policy=policy,
        )


def _before_dashes(command: tuple[str, ...]) -> tuple[str, ...]:
    """The words of COMMAND that came before `--` when there is one (stray words: `--timeout
    5 minutes -- make` would otherwise run `minutes make`)."""
    if "--" not in _typed:
        return ()
    after = len(_typed) - _typed.index("--") - 1
    return command[: len(command) - after]


def _unit_after_dashes(command: tuple[str, ...]) -> bool:
    """Did UNIT come after the first `--` (`run -- -x -- echo hi`, the way to name a unit
    that begins with `-`)? Then every positional word is after it: UNIT, then COMMAND's."""
    if "--" not in _typed:
        return False
    return len(_typed) - _typed.index("--") - 1 == len(command) + 1
