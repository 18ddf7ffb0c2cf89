"""Length-prefixed frames over a trio socket: shared by the agent and the trio client.

Reads and writes go straight to the socket's file descriptor, waiting with
`trio.lowlevel.wait_readable`/`wait_writable` only when it would block: trio's
stream wrappers were a quarter of the agent's time per request (docs/performance.md).
The stream still owns the socket and closes it.

Importing this module imports trio; the blocking client and the CLI never do.
"""

from __future__ import annotations

import os

import msgspec
import trio

from unitsync.wire.framing import encode, take_frame

RECEIVE_SIZE = 65536


class PeerGone(Exception):
    """The other end closed (or vanished) in the middle of a frame."""


class FrameStream:
    """Frames over a trio socket stream, with one read-ahead buffer.

    One task may send while another reads, as with any trio stream; two tasks doing the
    same at once get `trio.BusyResourceError` instead of interleaved bytes.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self._reading = self._sending = False

    async def receive(self) -> bytes | None:
        """The next frame's body, or None when the peer closed between frames.

        Raises FrameTooLarge when the header announces more than MAX_FRAME bytes.
        """
        while (body := take_frame(self.buffer)) is None:
            if not await self.read_more():
                if self.buffer:
                    raise PeerGone("closed in the middle of a frame")
                return None
        return body

    async def read_more(self) -> bool:
        """Read whatever arrives next into the buffer; False at end of stream.

        Always a checkpoint, so a peer that keeps the socket full cannot starve the others.
        """
        if self._reading:
            raise trio.BusyResourceError("another task is already reading this connection")
        fd, self._reading = self._fd(), True
        try:
            while True:
                try:
                    chunk = os.read(fd, RECEIVE_SIZE)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(fd)
                    continue
                except OSError as exc:
                    raise trio.BrokenResourceError(exc) from exc
                self.buffer += chunk
                await trio.lowlevel.checkpoint()
                return bool(chunk)
        finally:
            self._reading = False

    async def send(self, message: msgspec.Struct) -> None:
        """Send one frame; a checkpoint only when the socket is full (`read_more` always is)."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        fd, self._sending = self._fd(), True
        try:
            data = memoryview(encode(message))
            while data:
                try:
                    data = data[os.write(fd, data) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(fd)
                except OSError as exc:
                    raise trio.BrokenResourceError(exc) from exc
        finally:
            self._sending = False

    def _fd(self) -> int:
        fd = self.stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the connection is closed")
        return fd
