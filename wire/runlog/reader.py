"""A unit's log read back as lines: the runs chosen, what was dropped or damaged said, and
what comes next followed.

`LogReader.read` returns what is new since its last call, without waiting: the first call
everything of the runs chosen, each later one (when following) what was written since,
including runs that began meanwhile. Between calls a follower waits on `changes`
(`wire.host.inotify`, or a short poll where there is none): how it waits is its own
(blocking for the CLI and the blocking client, trio for the trio client).

Lines are built per stream (a line written in several chunks is one line), carry the time
of the chunk they began in, and keep their bytes as written; `LogLine.text` is them as
text, bytes that are not UTF-8 as `\\xNN`. A run's last line without a newline is a line.

Error rules: nothing here raises on what a log holds. Damage is skipped and told as a
`LogNote` (`skipped`) naming the file, the offset and the bytes; output dropped for the
limit is told as `dropped`; a folder that is not ours raises `layout.Untrusted`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from .format import STREAMS, End, Gap, Output, Section, Skipped, scan
from .layout import check_private, log_files

NoteKind = Literal["begin", "end", "dropped", "skipped"]


class LogLine(msgspec.Struct, frozen=True, gc=False):
    """One line of a run's output."""

    time: float
    """When `run` read it (Unix time)."""
    stream: str
    """stdout, stderr, or both (one pipe or pseudo-terminal carried both: `format.STREAMS`)."""
    run: int
    boot: int
    data: bytes
    """As the command wrote it, without its newline."""

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "backslashreplace")


class LogNote(msgspec.Struct, frozen=True):
    """Something about the log that is not a line: a run began or ended, output was dropped
    for the limit, damage was skipped."""

    kind: NoteKind
    run: int
    message: str
    time: float = 0.0
    boot: int = 0
    status: int | None = None
    """For `end`: the command's status."""


Event = LogLine | LogNote


@dataclass
class _Run:
    number: int
    section: Section | None = None
    ended: End | None = None
    partial: dict[str, tuple[float, bytearray]] = field(default_factory=dict)
    bytes_seen: int = 0
    """Bytes of the run's output accounted for so far, to tell what was dropped."""
    cut: set[str] = field(default_factory=set)
    """Streams whose first bytes kept end a line whose start was dropped: not shown."""


@dataclass
class _File:
    run: int
    segment: int
    path: str
    offset: int = 0


@dataclass(frozen=True)
class Selection:
    """Which runs: the latest (all None/False), one (`run`), a boot's, or all."""

    run: int | None = None
    boot: int | None = None
    all: bool = False


class LogReader:
    """Reads one unit's log folder (see module docstring)."""

    def __init__(self, folder: str, selection: Selection = Selection(), *, follow: bool = False):
        self.folder = folder
        self.selection = selection
        self.follow = follow
        self._runs: dict[int, _Run] = {}
        self._done: set[str] = set()
        self._current: _File | None = None
        self._first = True
        self._after = 0
        """When following: runs numbered above this are new, and shown."""
        self.chosen: list[int] = []
        """The runs the first read chose (for "no such run" messages)."""
        self.present: list[int] = []
        """The runs with a file in the folder at the first read."""

    def read(self) -> list[Event]:
        """What is new (see module docstring)."""
        if self._first:
            check_private(os.path.dirname(self.folder))
            check_private(self.folder)
        files = log_files(self.folder)
        if self._first:
            self._first = False
            self.present = sorted({run for run, _segment, _path in files})
            self.chosen = self._choose(files)
            self._after = max(self.present, default=0)
            wanted = set(self.chosen)
        else:
            wanted = {run for run, _s, _p in files if run > self._after or run in self._runs}
            wanted |= set(self.chosen)
        events: list[Event] = []
        newest = files[-1][2] if files else None
        for run, segment, path in files:
            if run not in wanted or path in self._done:
                continue
            self._after = max(self._after, run)
            live = self.follow and path == newest
            events.extend(self._read_file(_File(run, segment, path), live))
        if not self.follow:
            for run in self._runs.values():
                events.extend(self._flush_partial(run))
        return events

    # --- internals ------------------------------------------------------------------------

    def _choose(self, files: list[tuple[int, int, str]]) -> list[int]:
        runs = sorted({run for run, _segment, _path in files})
        selection = self.selection
        if selection.all:
            return runs
        if selection.run is not None:
            return [selection.run] if selection.run in runs else []
        if selection.boot is not None:
            return [run for run in runs if self._boot_of(run, files) == selection.boot]
        return runs[-1:]

    def _boot_of(self, run: int, files: list[tuple[int, int, str]]) -> int | None:
        for number, _segment, path in files:
            if number == run:
                try:
                    with open(path, "rb") as f:
                        head = f.read(4096)
                except OSError:
                    continue
                for record in scan(head, final=False)[0]:
                    if isinstance(record, Section):
                        return record.boot
        return None

    def _read_file(self, file: _File, live: bool) -> list[Event]:
        current = self._current
        if current is not None and current.path == file.path:
            file = current
        try:
            with open(file.path, "rb") as f:
                f.seek(file.offset)
                data = f.read()
        except FileNotFoundError:  # dropped for the limit meanwhile
            self._done.add(file.path)
            return []
        found, used = scan(data, final=not live)
        start = file.offset
        file.offset += used
        if live:
            self._current = file
        else:
            self._done.add(file.path)
            if current is not None and current.path == file.path:
                self._current = None
        run = self._runs.setdefault(file.run, _Run(file.run))
        events: list[Event] = []
        for record in found:
            if type(record) is Output:  # most records: their lines, in one list each
                events += self._lines(run, record)
            else:
                events += self._events(run, file, record, start)
        return events

    def _events(self, run: _Run, file: _File, record: object, start: int) -> Iterable[Event]:
        """What a record other than output says."""
        if isinstance(record, Section):
            yield from self._section(run, record)
        elif isinstance(record, Gap):
            run.bytes_seen += record.bytes
            yield from self._flush_partial(run)  # lines whose end was dropped
            run.cut = {STREAMS[i] for i in record.open_lines if i < len(STREAMS)}
            yield LogNote(
                "dropped",
                run.number,
                f"{_size(record.bytes)} of run {run.number}'s output dropped here: it came "
                f"faster than the log limit ({_size(run.section.limit if run.section else 0)})"
                " could keep",
            )
        elif isinstance(record, End):
            yield from self._flush_partial(run)
            run.ended = record
            how = record.reason or "completed"
            yield LogNote(
                "end",
                run.number,
                f"run {run.number} ended: {how}",
                record.at,
                run.section.boot if run.section else 0,
                record.status,
            )
        elif isinstance(record, Skipped):
            yield LogNote(
                "skipped",
                run.number,
                f"skipped {_size(record.length)} that hold no readable record at offset "
                f"{start + record.offset} of {file.path} (a damaged or cut log)",
            )

    def _section(self, run: _Run, section: Section) -> Iterable[Event]:
        first = run.section is None
        run.section = section
        if section.first_byte > run.bytes_seen:
            run.partial.clear()
            run.cut = {STREAMS[i] for i in section.open_lines if i < len(STREAMS)}
            if first and section.first_line >= 0:  # counted: say it in lines
                what = _lines(section.first_line + len(run.cut))
            else:
                what = _size(section.first_byte - run.bytes_seen)
            yield LogNote(
                "dropped",
                run.number,
                f"the first {what} of run {run.number} were dropped to keep the log within "
                f"its limit ({_size(section.limit)})"
                if first
                else f"{what} of run {run.number}'s output dropped here to keep the log "
                f"within its limit ({_size(section.limit)})",
            )
        run.bytes_seen = section.first_byte
        if first:
            command = f": {section.command}" if section.command else ""
            yield LogNote(
                "begin",
                run.number,
                f"run {run.number} (boot {section.boot}), pid {section.pid}{command}",
                section.started,
                section.boot,
            )

    def _lines(self, run: _Run, record: Output) -> list[LogLine]:
        boot = run.section.boot if run.section else 0
        stream = record.stream
        data = record.data
        run.bytes_seen += len(data)
        if stream in run.cut:  # the rest of a line whose start was dropped
            end = data.find(b"\n")
            if end < 0:
                return []
            run.cut.discard(stream)
            data = data[end + 1 :]
            if not data:
                return []
        pieces = data.split(b"\n")
        held = run.partial.pop(stream, None)
        at, number = record.time, run.number
        began = at
        if held is not None:
            began, buffer = held
            buffer += pieces[0]
            pieces[0] = bytes(buffer)
        rest = pieces.pop()
        if rest:
            run.partial[stream] = (began if not pieces else at, bytearray(rest))
        if not pieces:
            return []
        lines = [LogLine(at, stream, number, boot, line) for line in pieces]
        if began != at:  # the first line began in an earlier chunk
            lines[0] = LogLine(began, stream, number, boot, pieces[0])
        return lines

    def _flush_partial(self, run: _Run) -> list[Event]:
        boot = run.section.boot if run.section else 0
        events: list[Event] = [
            LogLine(began, stream, run.number, boot, bytes(buffer))
            for stream, (began, buffer) in run.partial.items()
        ]
        run.partial.clear()
        return events


def _lines(count: int) -> str:
    return f"{count:,} line" + ("" if count == 1 else "s")


def _size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


def folder_exists(folder: str) -> bool:
    return os.path.isdir(folder)


def filtered(events: list[Event], since: float | None, stream: str | None) -> list[Event]:
    """Lines at or after `since` (Unix time) of `stream` (None: any), and every note."""
    if since is None and stream is None:
        return events
    return [
        event
        for event in events
        if not isinstance(event, LogLine)
        or ((since is None or event.time >= since) and (stream is None or event.stream == stream))
    ]


def tailed(events: list[Event], count: int) -> list[Event]:
    """The last `count` lines, the notes of their runs, and every note of damage or drops."""
    seen = 0
    for index in range(len(events) - 1, -1, -1):
        if isinstance(events[index], LogLine):
            seen += 1
            if seen > count:
                before, after = events[: index + 1], events[index + 1 :]
                runs = {e.run for e in after if isinstance(e, LogLine)}
                return [
                    e
                    for e in before
                    if _is(e, "dropped", "skipped") or (_is(e, "begin") and e.run in runs)
                ] + [e for e in after if e.run in runs or _is(e, "dropped", "skipped")]
    return events


def _is(event: Event, *kinds: str) -> bool:
    return isinstance(event, LogNote) and event.kind in kinds
