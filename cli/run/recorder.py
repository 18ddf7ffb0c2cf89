"""Keeping a unit's output: `run` writes what its command prints to the unit's log (SPEC §15).

The supervisor feeds a `Recorder`: `begin` at each run of the command (a new section:
run number, boot, owner, start), `output` with each chunk as it passes it through, `end`
with the status and reason the unit got. The files are `unitsync.wire.runlog`'s
(`layout`, `format`); `run` writes them itself, never through the agent.

Chunks wait in memory and are written together FLUSH_DELAY after the first of them (later
while output pours in: BUSY), so a command that prints fast costs one write per batch;
a batch past the limit is cut from its front before it is written (a `Gap` record says how
much was dropped), so a command that prints far more than the limit costs little more than
passing it through. Lines are counted in what is written, not in what is dropped.

Bounded: the unit's files stay within `limit` bytes. Each run's output is written in files
of a `limit // SEGMENTS`th; when the folder would pass the limit, the oldest file goes, which
drops the oldest runs first, then the oldest part of the current run (each file begins with
a `Section` saying how many lines of its run went before it, which `logs` says were dropped).

Error rules: recording never stops the command nor changes its output. A folder that is
not ours (`layout.Untrusted`) means nothing is recorded, said once; a write that fails (the
disk is full, EIO) stops the recording, said once on `run`'s stderr, with the file cut back
to its last whole record; the command goes on. Nothing is fsynced: the log survives `run`,
the agent and the workspace restarting, not a power loss in its last seconds.

Resource rules: the recorder owns its open file, closed by `end` (or `close`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable

from unitsync.wire.runlog.format import End, Gap, Section, other_record, output_parts
from unitsync.wire.runlog.layout import Untrusted, file_name, log_files, make_private, unit_folder

from ..sizes import LOG_LIMIT
from .output import escapes

SEGMENTS = 8
"""Files a full log is cut into: dropping the oldest loses at most an eighth of it."""
FLUSH_DELAY = 0.01
"""Seconds output waits to be written with what follows it: `logs -f` shows it within
50 ms (SPEC §15's figure), and a fast command pays one write per batch, not per chunk."""
BUSY = 1024 * 1024
FLUSH_BUSY = 0.25
MAX_DEFER = 1.0
"""While BUSY bytes or more wait at a flush, it waits FLUSH_BUSY more, as long as the last
write is less than MAX_DEFER ago: output that comes that fast is not read live line by
line, and what passes the limit meanwhile is dropped in memory, never written (a command
printing 200 MB costs about one write of the limit, not 200 MB)."""
MAX_RECORD = 1024 * 1024
"""Output bytes per record at most (`format.MAX_BODY` is the reader's bound)."""
RECORD_ROOM = 256
"""Bytes of a file kept for a record's frame and a file's header, past its output."""
LAST_LINE = 200
"""Characters of the command's last stderr line kept for a failed unit's reason."""

Schedule = Callable[[float, Callable[[], None]], object]


class Recorder:
    """One unit's log, written by the `run` that runs it."""

    def __init__(
        self,
        logs: str,
        unit: str,
        *,
        limit: int = LOG_LIMIT,
        boot: int = 0,
        pid: int = 0,
        command: str = "",
        host: str = "",
        warn: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.logs = logs
        self.unit = unit
        self.folder = unit_folder(logs, unit)
        self.limit = limit
        self.segment_size = max(limit // SEGMENTS, 4096)
        self.boot, self.pid, self.command, self.host = boot, pid, command, host
        self.warn = warn
        self.clock = clock
        self.schedule: Schedule | None = None
        """How to call `flush` later (the reactor's `call_later`); None: write at once."""
        self.recording = True
        self.run = 0
        self._fd = -1
        self._segment = 0
        self._written = 0
        """Bytes of the open file."""
        self._total = 0
        """Bytes of the unit's files, the open one included."""
        self._lines = 0
        self._bytes = 0
        """Lines and bytes of this run's output so far, dropped or kept (lines: -1 once output
        was dropped uncounted)."""
        self._started = 0.0
        self._pending: deque[tuple[float, int, bytes]] = deque()
        self._pending_bytes = 0
        self._dropped_bytes = 0
        self._gap_open: set[int] = set()
        """Streams whose dropped output ended mid-line (what follows a gap is its rest)."""
        self._last_write = time.monotonic()
        self._flush_due = False
        self._stderr_tail = b""
        """The end of what the command wrote to stderr: its last line is a failure's reason."""
        self._open_lines: set[int] = set()
        """Streams whose last byte written was not a newline."""

    # --- what the supervisor calls ---------------------------------------------------------

    def begin(self) -> None:
        """A new run of the command: a new section, with the next run number."""
        if not self.recording:
            return
        self._close_file()
        try:
            make_private(self.logs)
            make_private(self.folder)
            files = log_files(self.folder)
            self._total = sum(_size(path) for _run, _segment, path in files)
            self.run = (files[-1][0] if files else 0) + 1
            self._started = self.clock()
            self._lines = self._bytes = 0
            self._stderr_tail = b""
            self._open_lines.clear()
            self._last_write = time.monotonic()
            while True:
                try:
                    self._open(0)
                    break
                except FileExistsError:  # another `run` of the unit took this number
                    self.run += 1
        except Untrusted as exc:
            self._stop(f"not recording {self.unit}'s output: {exc}")
        except OSError as exc:
            self._stop(f"not recording {self.unit}'s output: {_said(exc)}")

    def output(self, stream: int, data: bytes) -> None:
        """A chunk the command wrote to `stream` (an index of `format.STREAMS`)."""
        if stream == 1 or stream == 2:  # stderr, or one pipe or terminal for both
            self._stderr_tail = (self._stderr_tail + data[-4096:])[-4096:]
        if not self.recording or self._fd < 0:
            return
        self._pending.append((self.clock(), stream, data))
        self._pending_bytes += len(data)
        while self._pending_bytes > self.limit and len(self._pending) > 1:
            _when, dropped_stream, dropped = self._pending.popleft()
            self._pending_bytes -= len(dropped)
            self._dropped_bytes += len(dropped)  # (its lines are not counted: too costly)
            if dropped.endswith(b"\n"):
                self._gap_open.discard(dropped_stream)
            else:
                self._gap_open.add(dropped_stream)
        if self.schedule is None:
            self.flush()
        elif not self._flush_due:
            self._flush_due = True
            self.schedule(FLUSH_DELAY, self.flush)

    def flush(self, *, final: bool = False) -> None:
        """Write what waits; while output pours in (not `final`), wait longer instead, up to
        MAX_DEFER: what passes the limit meanwhile is dropped in memory, never written."""
        self._flush_due = False
        if not self._pending or self._fd < 0:
            return
        now = time.monotonic()
        pouring = self._pending_bytes >= BUSY and now - self._last_write < MAX_DEFER
        if not final and pouring and self.schedule is not None:
            self._flush_due = True
            self.schedule(FLUSH_BUSY, self.flush)
            return
        self._last_write = now
        pending, self._pending, self._pending_bytes = self._pending, deque(), 0
        if self._dropped_bytes:
            gap = Gap(-1, self._dropped_bytes, sorted(self._gap_open))
            self._lines = -1  # from here on this run's lines are not counted
            self._bytes += gap.bytes
            self._dropped_bytes = 0
            self._gap_open.clear()
            self._append([other_record(gap)], 0)
        most = min(MAX_RECORD, self.segment_size - RECORD_ROOM)  # so a file holds several
        for when, stream, data in pending:
            for at in range(0, len(data), most):
                part = data[at : at + most] if len(data) > most else data
                if self._fd < 0:
                    return
                self._append(output_parts(when, stream, part), part.count(b"\n"), len(part))
                if part.endswith(b"\n"):
                    self._open_lines.discard(stream)
                else:
                    self._open_lines.add(stream)

    def end(self, status: int, reason: str | None) -> None:
        """The run is over: write what waits and how it ended, and close the file."""
        self.flush(final=True)
        if self._fd >= 0:
            self._append([other_record(End(self.clock(), status, reason or ""))], 0)
        self._close_file()

    def close(self) -> None:
        """`run` is going away (its end may not have been recorded): keep what was written."""
        self.flush(final=True)
        self._close_file()

    def last_error_line(self) -> str:
        """The last line the command wrote to stderr (or to its terminal), for people: no
        colours, cut to LAST_LINE characters; "" if none."""
        lines = escapes().sub(b"", self._stderr_tail).replace(b"\r", b"\n").split(b"\n")
        for line in reversed(lines):
            text = line.decode("utf-8", "replace").strip()
            if text:
                return text if len(text) <= LAST_LINE else text[: LAST_LINE - 1] + "…"
        return ""

    # --- internals ------------------------------------------------------------------------

    def _open(self, segment: int) -> None:
        path = os.path.join(self.folder, file_name(self.run, segment))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._fd, self._segment, self._written = fd, segment, 0
        header = Section(
            self.unit,
            self.run,
            self.boot,
            self._started,
            segment,
            self._lines,
            self._bytes,
            self.pid,
            self.command,
            self.host,
            self.limit,
            sorted(self._open_lines),
        )
        self._append([other_record(header)], 0)

    def _append(self, parts: list[bytes], lines: int, size: int = 0) -> None:
        """Write one record (its parts); roll to the next file, drop the oldest, as needed."""
        length = sum(len(part) for part in parts)
        if self._written and self._written + length > self.segment_size:
            self._roll()
            if self._fd < 0:
                return
        try:
            written = os.writev(self._fd, parts)
            if written != length:  # the disk filled up half way: the rest says why
                rest = b"".join(parts)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
        except OSError as exc:
            self._cut_back()
            self._stop(
                f"{self.unit}'s output is no longer recorded: writing {self.folder} failed: "
                f"{_said(exc)}; the command goes on, its output still passed through"
            )
            return
        self._written += length
        self._total += length
        if self._lines >= 0:
            self._lines += lines
        self._bytes += size
        if self._total > self.limit:
            self._drop_oldest()

    def _roll(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1
        try:
            self._open(self._segment + 1)
        except OSError as exc:
            self._stop(
                f"{self.unit}'s output is no longer recorded: {_said(exc)}; the command goes on"
            )

    def _drop_oldest(self) -> None:
        current = file_name(self.run, self._segment)
        for _run, _segment, path in log_files(self.folder):
            if self._total <= self.limit or os.path.basename(path) == current:
                return
            size = _size(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                self._total -= size

    def _cut_back(self) -> None:
        """Leave no partial record behind a failed write."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._written)

    def _stop(self, message: str) -> None:
        if self.recording:
            self.warn(f"unitsync: {message}")
        self.recording = False
        self._pending.clear()
        self._pending_bytes = 0
        self._close_file()

    def _close_file(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _said(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
