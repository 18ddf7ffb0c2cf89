"""Bytes held for frames not yet whole, across every connection: one cap (SPEC §12).

A connection's receive buffer holds what has arrived of a frame until the frame is whole:
up to a frame's limit (1 MiB) for each peer that sends a big one slowly, or stops half way
(it is dropped after the frame timeout, 10 s). Many peers could make the agent hold as many
mebibytes (200 such connections took it from 38 to 245 MB). The buffers together may hold
at most `Limits.partial_frames` bytes: when a read takes them past it, the connection
holding the most is closed at once (it costs the most, and no client that sends its frames
whole and promptly holds much), told why with an error naming the cap; every other
connection is served as before.

`MeteredFrames` is the agent's frame stream: it reports its buffer's size to the shared
`PartialFrames` after every read, and before (a frame taken out leaves it smaller). The
size counted is the memory the buffer takes (`sys.getsizeof`: a growing buffer keeps room
to grow into), so the cap bounds memory, not only bytes received. The
meter owns no connection: closing one is cancelling its scope, which its task set when it
started (`serve_connection`), and the task itself then says why and closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import sys
from collections.abc import Iterator

import trio

from unitsync.agent.serve.frames import RECEIVE_SIZE, FrameStream
from unitsync.wire.framing import MAX_FRAME

log = logging.getLogger("unitsync.agent")

_EMPTY = sys.getsizeof(bytearray())
"""What a buffer takes holding nothing: not counted."""
GROWTH_ROOM = MAX_FRAME + RECEIVE_SIZE
"""Kept free under the cap: a buffer that grows may be copied to a larger block, the old
one freed only after, so for a moment it takes twice its size; and a read takes a chunk."""


class MeteredFrames(FrameStream):
    """A connection's frames, its buffered bytes counted against the agent-wide cap."""

    def __init__(self, stream: trio.SocketStream, meter: PartialFrames) -> None:
        super().__init__(stream)
        self.meter = meter
        self.held = 0
        """Bytes of its buffer the meter counts."""
        self.scope: trio.CancelScope | None = None
        """Cancelled to close the connection when it holds the most past the cap."""
        self.evicted = 0
        """Bytes it held when it was closed for them (0: it was not)."""

    async def read_more(self) -> bool:
        self.meter.update(self)  # a frame taken out since: fewer bytes held
        more = await super().read_more()
        self.meter.update(self)
        return more


class PartialFrames:
    """The bytes all connections' buffers hold, and the cap on them."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self.closed = 0
        """Connections closed for holding the most past the cap (for the log)."""
        self._streams: set[MeteredFrames] = set()

    @contextlib.contextmanager
    def counting(self, frames: MeteredFrames) -> Iterator[None]:
        """Count `frames` for as long as its connection is served."""
        self._streams.add(frames)
        try:
            yield
        finally:
            self._streams.discard(frames)
            self.total -= frames.held
            frames.held = 0

    def update(self, frames: MeteredFrames) -> None:
        """`frames`' buffer changed size; past the cap, close the largest holder."""
        if frames not in self._streams:
            return
        buffer = frames.buffer
        size = sys.getsizeof(buffer) - _EMPTY if buffer else 0  # its length, and room to grow
        self.total += size - frames.held
        frames.held = size
        while self.total > self.cap - GROWTH_ROOM:
            self._close(max(self._streams, key=lambda each: each.held))

    def _close(self, victim: MeteredFrames) -> None:
        """Drop what `victim` holds now (the memory goes at once) and end its connection."""
        self.total -= victim.held
        victim.evicted, victim.held = max(victim.held, 1), 0
        victim.buffer = bytearray()
        self._streams.discard(victim)
        if victim.scope is not None:
            victim.scope.cancel()
        self.closed += 1
        if self.closed in (1, 10, 100) or self.closed % 1000 == 0:
            log.warning(
                "closed a connection holding %d bytes of a frame not yet whole: frames in "
                "progress held more than the cap of %d bytes across connections (%d closed "
                "so far)",
                victim.evicted,
                self.cap,
                self.closed,
            )

    def message(self, frames: MeteredFrames) -> str:
        """What a closed connection is told."""
        return (
            f"closing the connection: frames not yet whole held more than the agent's cap "
            f"of {self.cap} bytes across all connections, and this one held the most "
            f"({frames.evicted} bytes); send each frame whole and promptly, and retry"
        )


M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter: the size from which an allocation is a mapping of its own."""
BIG_BUFFER = 128 * 1024
"""glibc's own default threshold, made fixed."""


def return_big_buffers() -> None:
    """Make every buffer of BIG_BUFFER bytes or more a mapping of its own, given back to the
    system the moment it is freed (glibc only; elsewhere nothing changes).

    That is glibc's default, except that left alone it raises the threshold as soon as such
    a buffer is freed, and later ones come from the heap, which keeps what it had: 200
    connections sending a frame each, closed for the cap as they went, left the agent 3 MB
    above what their buffers ever held at once. With the threshold fixed, the cap bounds
    the memory, not only the bytes counted.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, BIG_BUFFER)
