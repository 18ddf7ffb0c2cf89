"""`sync timeline`, `sync critical-chain`, `sync blame` (SPEC §9): fetch, build, print.

Loaded only when one of them runs. Everything they show is computed from `status`
(every unit's history) by the pure `timeline` model; this module only fetches, picks
the renderer for the output and the terminal, and prints.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Annotated, Literal

from cyclopts import Parameter

from unitsync.client import UnitsyncError
from unitsync.wire.errors import EXIT_USAGE
from unitsync.wire.protocol import UnitView

from ..app import SocketOption, cli_client, error_exit
from .model import Timeline, boots_in, build_timeline, by_run_time

TimelineOutput = Literal["table", "json", "svg"]
BootOption = Annotated[
    int | None,
    Parameter(help="Which boot (1, 2, ...); default: the latest one in the history."),
]


def timeline(
    *,
    boot: BootOption = None,
    output: Annotated[
        TimelineOutput | None,
        Parameter(
            alias="-o",
            help="table, json or svg; default: a chart on a terminal, a table otherwise.",
        ),
    ] = None,
    socket: SocketOption = None,
) -> int:
    """Show how the boot's start-up went: when each unit waited, started and ended."""
    try:
        model = _timeline(socket, boot)
    except UnitsyncError as exc:
        return error_exit(exc)
    if output == "json":
        from .text import to_json

        text = to_json(model)
    elif output == "svg":
        from .svg import render_svg

        text = render_svg(model)
    elif output is None and sys.stdout.isatty():
        from .gantt import render_chart

        text = render_chart(
            model, shutil.get_terminal_size().columns, colour=_colour(), unicode=_unicode()
        )
    else:
        from .text import render_table

        text = render_table(model)
    print(text)
    return 0


def critical_chain(
    unit: Annotated[
        str | None, Parameter(help="Default: the unit that completed last in the boot.")
    ] = None,
    /,
    *,
    boot: BootOption = None,
    socket: SocketOption = None,
) -> int:
    """Show the chain of dependencies that decided when UNIT could start."""
    from ..words import utf8_problem
    from .critical_chain import critical_chain as chain_of
    from .text import render_chain

    if problem := utf8_problem([("unit name", unit)]):
        print(f"unitsync: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        model = _timeline(socket, boot)
        chain = chain_of(model, unit)
    except UnitsyncError as exc:
        return error_exit(exc)
    print(render_chain(model, chain))
    return 0


def blame(*, boot: BootOption = None, socket: SocketOption = None) -> int:
    """List the units of the boot by how long they ran, longest first."""
    from .text import render_blame

    try:
        model = _timeline(socket, boot)
    except UnitsyncError as exc:
        return error_exit(exc)
    print(render_blame(by_run_time(model)))
    return 0


def _timeline(socket: SocketOption, boot: int | None) -> Timeline:
    """The timeline of `boot`; by default the agent's current boot (or, if nothing happened
    in it yet, the latest one in the histories)."""
    with cli_client(socket) as client:
        state = client.state()
    units: list[UnitView] = state.units
    if boot is None and state.boot in boots_in(units):
        boot = state.boot
    return build_timeline(units, time.time(), boot)


def _colour() -> bool:
    """Colour unless the user or the terminal says no (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _unicode() -> bool:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return encoding in ("utf8", "utf_8")
