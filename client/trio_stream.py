"""Length-prefixed frames over a trio stream: shared by the agent and the trio client.

Importing this module imports trio; the blocking client and the CLI never do.
"""

from __future__ import annotations

import msgspec
import trio

from .protocol import HEADER, body_length, encode

RECEIVE_SIZE = 65536


class PeerGone(Exception):
    """The other end closed (or vanished) in the middle of a frame."""


class FrameStream:
    """Frames over a trio stream, with one read-ahead buffer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def receive(self) -> bytes | None:
        """The next frame's body, or None when the peer closed between frames.

        Raises FrameTooLarge when the header announces more than MAX_FRAME bytes.
        """
        if not await self._fill(HEADER.size):
            if self.buffer:
                raise PeerGone("closed in the middle of a frame header")
            return None
        size = body_length(bytes(self.buffer[: HEADER.size]))
        if not await self._fill(HEADER.size + size):
            raise PeerGone("closed in the middle of a frame")
        body = bytes(self.buffer[HEADER.size : HEADER.size + size])
        del self.buffer[: HEADER.size + size]
        return body

    def holds_frame(self) -> bool:
        """Is a whole frame already buffered? Raises FrameTooLarge like `receive`."""
        if len(self.buffer) < HEADER.size:
            return False
        return len(self.buffer) >= HEADER.size + body_length(bytes(self.buffer[: HEADER.size]))

    async def read_more(self) -> bool:
        """Read whatever arrives next into the buffer; False at end of stream."""
        chunk = await self.stream.receive_some(RECEIVE_SIZE)
        self.buffer += chunk
        return bool(chunk)

    async def send(self, message: msgspec.Struct) -> None:
        await self.stream.send_all(encode(message))

    async def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            if not await self.read_more():
                return False
        return True
