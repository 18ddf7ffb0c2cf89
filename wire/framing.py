"""Frames as bytes: a 4-byte big-endian length, then a msgpack body (SPEC §3).

Both sides read with `take_frame` (one splitter for the agent, both clients and the
bench's load generator) and decode with `decode_request` / `decode_reply`, which turn
every way a body can be wrong (bad msgpack, a truncated or overlong body, invalid UTF-8,
an unknown tag, a wrong type) into one `ProtocolError` that says what was wrong. Nothing
a peer sends can make decoding raise anything else.
"""

from __future__ import annotations

import struct

import msgspec

from .errors import ProtocolError
from .protocol import Error, Ok, Order, Pong, Reply, Request, Started, UnitView, Waiting, Welcome

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20
"""Largest frame body either side accepts (1 MiB): far above any real request, and a bound
on what one peer can make the other buffer."""
CHUNK_BUDGET = MAX_FRAME // 2
"""Bytes of unit views per frame, leaving ample room for the rest of the frame."""

_encoder = msgspec.msgpack.Encoder()


_decoders: dict[str, msgspec.msgpack.Decoder] = {}  # type: ignore[type-arg]
"""Built on first use (1-1.5 ms each, paid by every call of the CLI if built at import): a
client decodes only replies, the agent only requests."""
SHORT_REPLY = Welcome | Pong | Ok | Waiting | Started | Error | Order
"""The replies (and events) of the calls a script makes: decoded first, by a decoder half
as costly to build as the whole `Reply`'s (0.5 ms of each call), which is built only for
the others (`status`, `watch`, `timeline`)."""


class FrameTooLarge(ProtocolError):
    """A header announced more than MAX_FRAME bytes: the frame boundary is lost."""

    def __init__(self, size: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
        self.size = size


def encode(message: msgspec.Struct) -> bytes:
    """Encode one message as a complete frame (header and body)."""
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(len(body))
    return HEADER.pack(len(body)) + body


def take_frame(buffer: bytearray) -> bytes | None:
    """Remove the first whole frame from `buffer` and return its body; None until one is in.

    Raises FrameTooLarge as soon as a header announces more than MAX_FRAME bytes.
    """
    if len(buffer) < HEADER.size:
        return None
    (size,) = HEADER.unpack_from(buffer)
    if size > MAX_FRAME:
        raise FrameTooLarge(size)
    end = HEADER.size + size
    if len(buffer) < end:
        return None
    body = bytes(buffer[HEADER.size : end])
    del buffer[:end]
    return body


def decode_request(body: bytes) -> Request:
    """The request in a frame body; ProtocolError naming the problem if it is not one."""
    decoder = _decoders.get("request") or _decoders.setdefault(
        "request", msgspec.msgpack.Decoder(Request)
    )
    return _decode(decoder, body, "request")


def decode_reply(body: bytes) -> Reply:
    """The reply or event in a frame body; ProtocolError naming the problem if it is not one."""
    short = _decoders.get("short reply") or _decoders.setdefault(
        "short reply", msgspec.msgpack.Decoder(SHORT_REPLY)
    )
    try:
        return short.decode(body)
    except (msgspec.DecodeError, ValueError, OverflowError, RecursionError):
        pass  # another reply, or none: the whole union decides, and names the problem
    decoder = _decoders.get("reply") or _decoders.setdefault(
        "reply", msgspec.msgpack.Decoder(Reply)
    )
    return _decode(decoder, body, "reply")


def _decode(decoder: msgspec.msgpack.Decoder, body: bytes, what: str):  # type: ignore[no-untyped-def]
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # includes ValidationError: wrong type, unknown tag
        raise ProtocolError(f"invalid {what}: {exc}") from None
    except UnicodeDecodeError:  # msgspec raises it for a str that is not UTF-8
        raise ProtocolError(f"invalid {what}: a string in it is not valid UTF-8") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # belt and braces
        raise ProtocolError(f"invalid {what}: {exc}") from None


def chunked(views: list[UnitView]) -> list[list[UnitView]]:
    """Split views into lists whose frames stay under the limit (always at least one list)."""
    chunks: list[list[UnitView]] = [[]]
    size = 0
    for view in views:
        cost = len(_encoder.encode(view))
        if chunks[-1] and size + cost > CHUNK_BUDGET:
            chunks.append([])
            size = 0
        chunks[-1].append(view)
        size += cost
    return chunks
