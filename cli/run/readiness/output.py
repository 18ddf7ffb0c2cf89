"""`--ready-log`: the service's output, copied to `run`'s own as it comes, searched for a line.

`run` reads each of the service's output streams and writes what it reads at once,
unchanged, to its own stream of the same name: each chunk as soon as it arrives, so
lines (and prompts that end none) appear as they are written and nothing within a
stream is reordered.

Where `run` writes to a terminal the service gets a pseudo-terminal instead of a
pipe, so it keeps its colours and its line buffering; when `run`'s stdout and stderr
are one terminal, one pty serves both, so their relative order is kept too, as
without `run`. The pty does no output processing (no `\\n` -> `\\r\\n`): bytes pass
unchanged. The service keeps `run`'s stdin and controlling terminal (Ctrl-C, job
control). Where `run` writes to a pipe or a file the service gets a pipe, and
`PYTHONUNBUFFERED=1` (unless set): a Python program would otherwise hold its lines
in an 8 KiB buffer and its ready line would come too late.

Until one line matches, each complete line is searched (`re.search`) with its line end
and terminal escape sequences (colours) removed; after that the output is only copied.

Resource rules: `LogReady` owns the reading ends (pty leaders, pipe read ends) and
closes them in `finish`; the service's ends are closed in `run` once it has them.
If `run`'s own stream is closed (EPIPE), that stream's reading end is closed too,
so the service meets the closed pipe itself, as it would without `run`.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import re
import select
import signal
import subprocess
import termios
from typing import Any

from ..children import Child, Exits
from ..reactor import Reactor
from .detector import Listener

READ_SIZE = 65536
DRAIN_LIMIT = 64
"""Chunks copied at most once the service has exited: what it left in the pipes, not
the output of a descendant that keeps writing."""
MAX_LINE = 65536
"""A line longer than this without a newline is searched as it is and not kept: `run`'s
memory stays bounded whatever the service writes."""
_ESCAPES = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
"""Terminal escape sequences (CSI such as colours, OSC such as titles, two-byte ones)."""


class _Stream:
    """One output stream of the service (or both, on one terminal) and where it goes."""

    def __init__(self, out: int, terminal: bool) -> None:
        self.out = out
        self.terminal = terminal
        self.read_fd, self.child_fd = _pty_copying(out) if terminal else os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self.partial = bytearray()
        """The line being written, while lines are searched."""
        self.open = True


class LogReady:
    """Ready on the first line of output that matches `pattern`."""

    def __init__(self, pattern: re.Pattern[str], stdout: int = 1, stderr: int = 2) -> None:
        self.pattern = pattern
        self.outs = (stdout, stderr)
        self.streams: list[_Stream] = []
        self.searching = True
        self.listener: Listener | None = None
        self.reactor: Reactor | None = None
        self._previous_winch: Any = None

    def child_options(self) -> dict[str, Any]:
        out, err = self.outs
        if os.isatty(out) and os.isatty(err) and os.path.sameopenfile(out, err):
            self.streams = [_Stream(out, terminal=True)]
            options: dict[str, Any] = {
                "stdout": self.streams[0].child_fd,
                "stderr": subprocess.STDOUT,
            }
        else:
            self.streams = [_Stream(out, os.isatty(out)), _Stream(err, os.isatty(err))]
            options = {"stdout": self.streams[0].child_fd, "stderr": self.streams[1].child_fd}
        if not all(s.terminal for s in self.streams) and "PYTHONUNBUFFERED" not in os.environ:
            options["env"] = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return options

    def begin(self, reactor: Reactor, exits: Exits, service: Child, listener: Listener) -> None:
        self.reactor, self.listener = reactor, listener
        for stream in self.streams:
            os.close(stream.child_fd)
            stream.child_fd = -1
            reactor.add_reader(stream.read_fd, functools.partial(self._copy, stream))
        if any(s.terminal for s in self.streams):
            self._previous_winch = signal.signal(signal.SIGWINCH, self._resized)

    def stop(self) -> None:
        self.searching = False
        for stream in self.streams:
            stream.partial.clear()

    def waiting_for(self) -> str:
        return f"no output line matched {self.pattern.pattern!r}"

    def finish(self) -> None:
        """Copy what the service left in its streams, then close them."""
        if self._previous_winch is not None:
            signal.signal(signal.SIGWINCH, self._previous_winch)
        for stream in self.streams:
            if stream.child_fd >= 0:  # the service never started
                os.close(stream.child_fd)
                stream.child_fd = -1
            for _ in range(DRAIN_LIMIT):
                if not (stream.open and self._copy(stream)):
                    break
            if self.searching and stream.partial:  # a last line with no newline
                self._search([bytes(stream.partial)])
            self._close(stream)

    # --- internals ------------------------------------------------------------------------

    def _copy(self, stream: _Stream) -> bool:
        """Copy one chunk; False when there is nothing more to read for now."""
        try:
            data = os.read(stream.read_fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: a pty whose every writer has gone
                raise
            data = b""
        if not data:
            self._close(stream)
            return False
        try:
            _write_all(stream.out, data)
        except BrokenPipeError:
            self._close(stream)
            return False
        if self.searching:
            stream.partial += data
            *lines, rest = stream.partial.split(b"\n")
            if len(rest) > MAX_LINE:
                lines.append(rest)
                rest = b""
            stream.partial[:] = rest
            self._search(lines)
        return True

    def _search(self, lines: list[bytes]) -> None:
        assert self.listener is not None
        for line in lines:
            text = _ESCAPES.sub(b"", line).rstrip(b"\r").decode("utf-8", "replace")
            if self.pattern.search(text):
                self.listener.ready(f"output matched {self.pattern.pattern!r}")
                return

    def _close(self, stream: _Stream) -> None:
        if stream.open:
            stream.open = False
            if self.reactor is not None:
                self.reactor.remove_reader(stream.read_fd)
            os.close(stream.read_fd)

    def _resized(self, _signum: int, _frame: object) -> None:
        for stream in self.streams:
            if stream.terminal and stream.open:
                _copy_size(stream.out, stream.read_fd)


def _pty_copying(out: int) -> tuple[int, int]:
    """A pty (leader, follower) that passes bytes unchanged and has `out`'s window size."""
    leader, follower = os.openpty()
    attrs = termios.tcgetattr(follower)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(follower, termios.TCSANOW, attrs)
    _copy_size(out, leader)
    return leader, follower


def _copy_size(terminal: int, pty: int) -> None:
    try:
        size = fcntl.ioctl(terminal, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(pty, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:  # `run`'s own stream was left non-blocking by someone
            select.select([], [fd], [])
