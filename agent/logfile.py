"""The on-disk format of the journal and the snapshot. Pure: bytes in, records out.

    log file:  header  = b"USJ1" | generation u64 | crc32 of the 12 bytes before (u32)
               entries = length u32 | crc32(body) u32 | body (msgpack array of records)
    snapshot:  b"USS2" | generation u64 | length u32 | crc32(body) u32 | body ([boot, units])
               (format 1, b"USS1", held the array of units alone: still read, as boot 1)

One entry holds the records of one accepted command, so a command is all or
nothing on disk. The generation ties a log to the snapshot it continues.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from .records import BootImage, Record, SnapshotBody, UnitImage

LOG_MAGIC = b"USJ1"
SNAPSHOT_MAGIC = b"USS2"
SNAPSHOT_MAGIC_V1 = b"USS1"
"""Written by 0.1.0, before boots were recorded; read as boot 1 of an unknown identity."""
LOG_HEADER = struct.Struct(">4sQI")
ENTRY_HEADER = struct.Struct(">II")
SNAPSHOT_HEADER = struct.Struct(">4sQII")
MAX_ENTRY = 64 << 20
"""No entry is ever this large (one command's records, each under a frame): a header that
says otherwise is damage, not a long entry, so a scan never trusts an absurd length."""
_LOG_HEADER_CHECKED = LOG_HEADER.size - 4
"""The log header's checksum covers everything before it."""

_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(list[Record])
_decode_entry = _entry_decoder.decode
_unpack_header = ENTRY_HEADER.unpack_from
_crc32 = zlib.crc32
_snapshot_decoder = msgspec.msgpack.Decoder(SnapshotBody)
_snapshot_v1_decoder = msgspec.msgpack.Decoder(list[UnitImage])


class Damaged(Exception):
    """Bytes that a crash cannot explain: a bad entry with valid data after it."""

    def __init__(self, offset: int, why: str) -> None:
        super().__init__(f"{why} at byte offset {offset}")
        self.offset = offset
        self.why = why


def log_header(generation: int) -> bytes:
    head = struct.pack(">4sQ", LOG_MAGIC, generation)
    return head + struct.pack(">I", zlib.crc32(head))


def entry(records: list[Record]) -> bytes:
    body = _encoder.encode(records)
    return ENTRY_HEADER.pack(len(body), zlib.crc32(body)) + body


def snapshot(generation: int, boot: BootImage, images: list[UnitImage]) -> bytes:
    body = _encoder.encode(SnapshotBody(boot, images))
    return SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, generation, len(body), zlib.crc32(body)) + body


def read_snapshot(data: bytes) -> tuple[int, BootImage | None, list[UnitImage]]:
    """The generation, the boot (None in a format-1 snapshot) and the units."""
    if len(data) < SNAPSHOT_HEADER.size:
        raise Damaged(0, "snapshot shorter than its header")
    magic, generation, length, crc = SNAPSHOT_HEADER.unpack_from(data)
    body = memoryview(data)[SNAPSHOT_HEADER.size :]
    if magic not in (SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_V1):
        raise Damaged(0, "not a unitsync snapshot (bad magic)")
    if len(body) != length or zlib.crc32(body) != crc:
        raise Damaged(SNAPSHOT_HEADER.size, "snapshot body fails its checksum")
    if magic == SNAPSHOT_MAGIC_V1:
        return generation, None, _snapshot_v1_decoder.decode(body)
    decoded = _snapshot_decoder.decode(body)
    return generation, decoded.boot, decoded.units


def read_log_header(data: bytes) -> int:
    if len(data) < LOG_HEADER.size:
        raise Damaged(0, "journal shorter than its header")
    magic, generation, crc = LOG_HEADER.unpack_from(data)
    if magic != LOG_MAGIC or zlib.crc32(data[:_LOG_HEADER_CHECKED]) != crc:
        raise Damaged(0, "not a unitsync journal (bad header)")
    return generation


@dataclass
class Scan:
    """Where the valid entries end, and why reading stopped there (None: clean end)."""

    end: int
    count: int = 0
    torn: str | None = None


def entries(data: bytes, scan: Scan) -> Iterator[list[Record]]:
    """Decode entries after the header, updating `scan`; raise Damaged for mid-file damage.

    A bad entry is a torn tail (a crash mid-write) when no valid entry follows it.
    """
    size, header_size = len(data), ENTRY_HEADER.size
    offset = LOG_HEADER.size
    while offset < size:
        # `_intact`, inlined: replay runs this once per entry, a million times at start-up
        # (and slicing bytes costs less than slicing a memoryview, for bodies this small).
        start = offset + header_size
        if start <= size:
            length, crc = _unpack_header(data, offset)
            end = start + length
            body = data[start:end]
            if 0 < length <= MAX_ENTRY and end <= size and _crc32(body) == crc:
                try:
                    records = _decode_entry(body)
                except msgspec.DecodeError:
                    pass
                else:
                    offset = scan.end = end
                    scan.count += len(records)
                    yield records
                    continue
        _stop(memoryview(data), offset, scan)
        return


def _stop(view: memoryview, offset: int, scan: Scan) -> None:
    """A bad entry at `offset`: a torn tail if nothing valid follows, damage otherwise."""
    why = _what_is_wrong(view, offset)
    if _valid_entry_after(view, offset + 1):
        raise Damaged(offset, why)
    scan.torn = f"{why} at byte offset {offset} ({len(view) - offset} bytes cut off)"


def _what_is_wrong(view: memoryview, offset: int) -> str:
    """Why the entry at `offset` is not intact, in words for the operator."""
    start = offset + ENTRY_HEADER.size
    if start > len(view):
        return "incomplete entry header"
    length, crc = _unpack_header(view, offset)
    if not 0 < length <= MAX_ENTRY:
        return f"impossible entry length {length}"
    if start + length > len(view):
        return "entry runs past the end of the file"
    if _crc32(view[start : start + length]) != crc:
        return "entry fails its checksum"
    return "entry passes its checksum but does not decode"


def _intact(view: memoryview, offset: int) -> bool:
    """Does an intact entry start at `offset`? The slow twin of the loop in `entries`."""
    start = offset + ENTRY_HEADER.size
    if start > len(view):
        return False
    length, crc = _unpack_header(view, offset)
    body = view[start : start + length]
    if not 0 < length <= MAX_ENTRY or len(body) != length or _crc32(body) != crc:
        return False
    try:
        _decode_entry(body)
    except msgspec.DecodeError:
        return False
    return True


def _valid_entry_after(view: memoryview, offset: int) -> bool:
    """Is there any intact entry after `offset`? Only run on the (rare) error path."""
    return any(_intact(view, at) for at in range(offset, len(view)))
