"""The command's output, passed through `run` as it comes: to `run`'s own streams, unchanged,
and to whoever reads along (the recorder, `--ready-log`'s search).

`run` reads each of the command's output streams and writes what it reads at once,
unchanged, to its own stream of the same name: each chunk as soon as it arrives, so
lines (and prompts that end none) appear as they are written and nothing within a
stream is reordered.

Where `run` writes to a terminal the command gets a pseudo-terminal instead of a
pipe, so it keeps its colours and its line buffering. When `run`'s stdout and stderr
are one terminal or one file (`>log 2>&1`), one pty or pipe serves both, so their
relative order is kept too, as without `run`; the readers are then told the stream
`both` (which was which is not known). The pty does no output processing (no
`\\n` -> `\\r\\n`): bytes pass unchanged, and it has the terminal's window size, kept when
it changes (SIGWINCH). The command keeps `run`'s stdin and controlling terminal (Ctrl-C,
job control). Where `run` writes to a pipe or a file the command gets a pipe (made large:
fewer, larger reads).

Resource rules: `Relay` owns the reading ends (pty leaders, pipe read ends) and closes
them in `finish`; the command's ends are closed in `begin`, once it has them. If `run`'s
own stream is closed (EPIPE), that stream's reading end is closed too, so the command
meets the closed pipe itself, as it would without `run`; if it cannot be written at all
(closed before `run` began, a terminal hung up), the output still reaches the readers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import re
import select
import signal
import termios
from collections.abc import Callable
from typing import Any

from .children import SAME_AS_STDOUT
from .reactor import Reactor

READ_SIZE = 1024 * 1024
"""As much as a pipe holds (PIPE_SIZE): a fast writer is read in few, large chunks, into
one buffer kept for the whole run (a fresh 1 MiB per read costs its pages' faults: a
command printing 200 MB made `run` twice as slow)."""
FIRST_READ_SIZE = 64 * 1024
"""The buffer until a read fills it (then READ_SIZE's): most commands print little, and 1 MiB
zeroed is 0.4 ms of every `run` and 1 MiB of its memory for as long as it runs."""
DRAIN_LIMIT = 64
"""Chunks copied at most once the command has exited: what it left in the pipes, not
the output of a descendant that keeps writing."""
PIPE_SIZE = 1024 * 1024
"""The pipes' capacity (Linux's default is 64 KiB): a fast writer fills it while `run`
copies, and each read takes more."""
STDOUT, STDERR, BOTH = 0, 1, 2
"""Stream numbers, as `unitsync.wire.runlog.format.STREAMS` names them."""

ESCAPES = rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]"
"""Terminal escape sequences (CSI such as colours, OSC such as titles, two-byte ones): what
a line is searched or shown without (`escapes()`)."""


@functools.cache
def escapes() -> re.Pattern[bytes]:
    """ESCAPES compiled, once it is needed (not at every `run`'s start)."""
    return re.compile(ESCAPES)


Tap = Callable[[int, bytes], None]
"""Told each chunk: its stream number and its bytes (after it was passed through)."""


class _Stream:
    """One output stream of the command (or both, to one place) and where it goes."""

    def __init__(self, out: int, number: int, terminal: bool) -> None:
        self.out = out
        self.number = number
        self.terminal = terminal
        self.read_fd, self.child_fd = _pty_copying(out) if terminal else _pipe()
        os.set_blocking(self.read_fd, False)
        self.open = True


class Relay:
    """Passes the command's stdout and stderr through, telling `taps` each chunk."""

    def __init__(self, stdout: int = 1, stderr: int = 2) -> None:
        self.outs = (stdout, stderr)
        self.streams: list[_Stream] = []
        self.taps: list[Tap] = []
        self.reactor: Reactor | None = None
        self._previous_winch: Any = None
        self._buffer = memoryview(bytearray(FIRST_READ_SIZE))

    def child_options(self) -> dict[str, Any]:
        """`spawn`'s stdout and stderr for the command."""
        out, err = self.outs
        if _same(out, err):
            self.streams = [_Stream(out, BOTH, os.isatty(out))]
            return {"stdout": self.streams[0].child_fd, "stderr": SAME_AS_STDOUT}
        self.streams = [
            _Stream(out, STDOUT, os.isatty(out)),
            _Stream(err, STDERR, os.isatty(err)),
        ]
        return {"stdout": self.streams[0].child_fd, "stderr": self.streams[1].child_fd}

    def begin(self, reactor: Reactor) -> None:
        """The command runs (it has its ends): copy as output comes."""
        self.reactor = reactor
        for stream in self.streams:
            os.close(stream.child_fd)
            stream.child_fd = -1
            reactor.add_reader(stream.read_fd, functools.partial(self._copy, stream))
        if any(s.terminal for s in self.streams):
            self._previous_winch = signal.signal(signal.SIGWINCH, self._resized)

    def finish(self) -> None:
        """Copy what the command left in its streams, then close them."""
        if self._previous_winch is not None:
            signal.signal(signal.SIGWINCH, self._previous_winch)
            self._previous_winch = None
        for stream in self.streams:
            if stream.child_fd >= 0:  # the command never started
                os.close(stream.child_fd)
                stream.child_fd = -1
            for _ in range(DRAIN_LIMIT):
                if not (stream.open and self._copy(stream)):
                    break
            self._close(stream)

    # --- internals ------------------------------------------------------------------------

    def _copy(self, stream: _Stream) -> bool:
        """Copy one chunk; False when there is nothing more to read for now."""
        try:
            size = os.readv(stream.read_fd, [self._buffer])
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: a pty whose every writer has gone
                raise
            size = 0
        if not size:
            self._close(stream)
            return False
        chunk = self._buffer[:size]
        try:
            if stream.out >= 0:
                _write_all(stream.out, chunk)
        except BrokenPipeError:
            self._close(stream)
            return False
        except OSError:  # `run`'s own stream is closed (EBADF) or gone (EIO): readers only
            stream.out = -1
        if self.taps:
            data = chunk.tobytes()  # the readers may keep it; the buffer is read into again
            for tap in self.taps:
                tap(stream.number, data)
        if size == len(self._buffer) < READ_SIZE:  # a fast writer: read it in larger chunks
            self._buffer = memoryview(bytearray(READ_SIZE))
        return True

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


def _same(out: int, err: int) -> bool:
    """Are `run`'s stdout and stderr one terminal or file (so one stream keeps their order)?"""
    try:
        return os.path.sameopenfile(out, err)
    except OSError:
        return False


def _pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError, AttributeError):  # past pipe-max-size, or not Linux
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_fd, write_fd


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


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:  # `run`'s own stream was left non-blocking by someone
            select.select([], [fd], [])
