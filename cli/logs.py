"""`unitsync sync logs`: a unit's recorded output (SPEC §15), and its last lines for `status`.

The lines are the client's (`Client.logs`, which reads this host's log folder); this module
only prints them: as written (bytes unchanged) or as JSON lines, notes on stderr. Several
runs shown at once (`--all`, `--boot`, a follow that sees a new run begin) are separated
by a `-- run N ... --` line on stdout, in text only.

Exit codes: 0 (no recorded output is said, and is not an error; Ctrl-C ends a follow with
0), 1 for an unknown unit or a run that is not in the log, 2 for options that conflict,
3 with no agent.
"""

from __future__ import annotations

import datetime
import shutil
import sys
import time
from typing import Annotated, Literal

import msgspec
from cyclopts import Parameter

from unitsync.client import Client
from unitsync.wire.errors import EXIT_REFUSED, UnitsyncError
from unitsync.wire.runlog.reader import LogLine, LogNote
from unitsync.wire.timefmt import clock

from .app import SocketOption, _usage_error, cli_client, error_exit

FLUSH_PARTS = 8192
"""Lines (or their parts) gathered before one write to stdout."""
LAST_LINES = 5
"""Lines of a failed unit's output that `status UNIT` shows."""


def logs(
    unit: Annotated[str, Parameter(help="The unit whose output to show.")],
    /,
    *,
    follow: Annotated[
        bool,
        Parameter(
            name=["--follow", "-f"],
            negative=(),
            help="Go on showing output as it is written, next runs too, until Ctrl-C.",
        ),
    ] = False,
    run: Annotated[
        int | None, Parameter(metavar="N", help="Show run N (see `--all`) [default: the latest].")
    ] = None,
    boot: Annotated[
        int | None, Parameter(metavar="N", help="Show every run of boot N (see `sync ping`).")
    ] = None,
    all: Annotated[
        bool, Parameter(name="--all", negative=(), help="Show every run kept, oldest first.")
    ] = False,
    since: Annotated[
        str | None,
        Parameter(
            metavar="TIME",
            help="Only lines written since TIME: a duration ago (10m), a time of day "
            "(14:05, 14:05:30) or a date and time (2026-12-06T14:05).",
        ),
    ] = None,
    tail: Annotated[int | None, Parameter(metavar="N", help="Only the last N lines.")] = None,
    stream: Annotated[
        Literal["stdout", "stderr", "terminal"] | None,
        Parameter(help="Only the lines of one stream."),
    ] = None,
    timestamps: Annotated[
        bool, Parameter(negative=(), help="Begin each line with the time it was written.")
    ] = False,
    prefix: Annotated[
        bool, Parameter(negative=(), help="Mark the lines written to stderr (`stderr| `).")
    ] = False,
    output: Annotated[
        Literal["text", "json"],
        Parameter(alias="-o", help="text (as written), or json (one object per line)."),
    ] = "text",
    socket: SocketOption = None,
) -> int:
    """Show what UNIT's command printed: its latest run unless told otherwise."""
    if [run is not None, boot is not None, all].count(True) > 1:
        return _usage_error("logs", "choose one of --run, --boot and --all")
    if tail is not None and tail < 0:
        return _usage_error("logs", "--tail needs a number of lines, 0 or more")
    try:
        since_at = None if since is None else parse_since(since, time.time())
    except ValueError as exc:
        return _usage_error("logs", f"--since: {exc}")
    printer = Printer(output, timestamps=timestamps, prefix=prefix, headers=bool(all or boot))
    client = cli_client(socket)
    try:
        with client:
            batches = client.log_batches(
                unit,
                follow=follow,
                run=run,
                boot=boot,
                all=all,
                since=since_at,
                tail=tail,
                stream=stream,
            )
            for batch in batches:
                printer.show_all(batch)
                if follow:
                    printer.flush()
                    printer.headers = True
            printer.flush()
            if printer.lines or printer.runs:
                return 0
            return _nothing(client, unit, run, boot)
    except UnitsyncError as exc:
        printer.flush()
        return error_exit(exc)
    except KeyboardInterrupt:  # the way a follow ends
        printer.flush()
        return 0


def _nothing(client: Client, unit: str, run: int | None, boot: int | None) -> int:
    """Say why nothing was shown; the exit status."""
    [view] = client.status(unit)
    welcome = client.welcome
    here = f" on this host ({welcome.host})" if welcome and welcome.host else ""
    if welcome is not None and view.host and view.host != welcome.host:
        print(
            f"unitsync: {unit} has no recorded output{here}: its latest run ran on host "
            f"{view.host}, which keeps that run's output (`unitsync sync logs {unit}` there)",
            file=sys.stderr,
        )
        return 0
    if run is not None:
        print(f"unitsync: run {run} of {unit} is not in its log{here}", file=sys.stderr)
        return EXIT_REFUSED
    if boot is not None:
        print(f"unitsync: {unit} has no recorded output in boot {boot}{here}", file=sys.stderr)
        return 0
    print(f"{unit} has no recorded output{here}", file=sys.stderr)
    return 0


class Printer:
    """Writes lines and notes as the options say."""

    def __init__(self, output: str, *, timestamps: bool, prefix: bool, headers: bool) -> None:
        self.json = output == "json"
        self.timestamps = timestamps
        self.prefix = prefix
        self.headers = headers
        """Show where each run begins and ends (several runs may be shown)."""
        self.lines = 0
        self.runs = 0
        self._out: list[bytes] = []
        self.plain = not (self.json or timestamps or prefix)
        self._encoder = msgspec.json.Encoder()

    def show_all(self, events: list[LogLine | LogNote]) -> None:
        """Show a batch; plain text in one go (a full log is 100,000s of lines)."""
        if not self.plain:
            for event in events:
                self.show(event)
            return
        start = 0
        for index in [i for i, event in enumerate(events) if type(event) is LogNote]:
            self._plain(events[start:index])  # type: ignore[arg-type]
            self._note(events[index])  # type: ignore[arg-type]
            start = index + 1
        self._plain(events[start:])  # type: ignore[arg-type]

    def _plain(self, lines: list[LogLine]) -> None:  # type: ignore[type-arg]
        if lines:
            self.flush()
            self.lines += len(lines)
            out = sys.stdout.buffer
            out.write(b"\n".join([line.data for line in lines]))
            out.write(b"\n")
            out.flush()

    def show(self, event: LogLine | LogNote) -> None:
        if type(event) is LogNote:
            self._note(event)
            return
        self.lines += 1
        if self.plain:  # the common case, kept short: a full log is 100,000s of lines
            self._out += (event.data, b"\n")  # type: ignore[union-attr]
            if len(self._out) > FLUSH_PARTS:
                self.flush()
            return
        if self.json:
            record = {
                "time": event.time,
                "stream": event.stream,
                "run": event.run,
                "boot": event.boot,
                "text": event.text,
            }
            line = self._encoder.encode(record) + b"\n"
        else:
            line = event.data + b"\n"
            if self.prefix and event.stream == "stderr":
                line = b"stderr| " + line
            if self.timestamps:
                line = _stamp(event.time).encode() + b" " + line
        self._out.append(line)
        if len(self._out) > FLUSH_PARTS:
            self.flush()

    def _note(self, note: LogNote) -> None:
        if note.kind == "begin":
            self.runs += 1
        if note.kind in ("begin", "end"):
            if self.headers and not self.json:
                when = f" at {clock(note.time)}" if note.time else ""
                self._out.append(f"-- {note.message}{when} --\n".encode())
            return
        self.flush()
        print(f"unitsync: {note.message}", file=sys.stderr)

    def flush(self) -> None:
        if self._out:
            out = sys.stdout.buffer
            out.write(b"".join(self._out))
            out.flush()
            self._out.clear()


def _stamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).isoformat(sep=" ", timespec="milliseconds")


def parse_since(text: str, now: float) -> float:
    """`--since`: a duration ago, a time of today, or a date and time (local)."""
    from .durations import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError:
        pass
    else:
        return now - (seconds or 0.0)
    try:
        if len(text) <= 8 and ":" in text:
            today = datetime.date.fromtimestamp(now).isoformat()
            return datetime.datetime.fromisoformat(f"{today}T{text}").timestamp()
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (e.g. 10m for ten minutes ago, 14:05, 2026-12-06T14:05)"
        ) from None


def last_lines(client: Client, unit: str, count: int = LAST_LINES) -> list[str]:
    """The last `count` lines of `unit`'s latest run, as text cut to the terminal's width
    (for `status UNIT` of a failed unit); [] when none are recorded here."""
    width = shutil.get_terminal_size().columns - 2
    try:
        events = list(client.logs(unit, tail=count))
    except UnitsyncError:
        return []
    lines = []
    for event in events:
        if isinstance(event, LogLine):
            text = _printable(event.text)
            lines.append(text if len(text) <= width else text[: width - 1] + "…")
    return lines


def _printable(text: str) -> str:
    from .run.output import escapes

    plain = escapes().sub(b"", text.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in plain.rstrip("\r"))
