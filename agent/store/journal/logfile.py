"""The on-disk format of the journal and the snapshot. Pure: bytes in, records out.

    log file:  header  = b"USJ2" | generation u64 | graph id (16 bytes)
                         | crc32 of the 28 bytes before (u32)
               entries = length u32 | crc32(body) u32 | body (msgpack array of records)
               (format 1, b"USJ1" | generation | crc32, had no graph id: still read)
    snapshot:  b"USS3" | generation u64 | length u32 | crc32(body) u32
               | body ([boot, units, graph id])
               (b"USS2" held [boot, units]; b"USS1" the array of units alone, as boot 1:
               both still read)

One entry holds the records of one accepted command, so a command is all or
nothing on disk. Format 4 (SPEC §14) kept these headers and added a field at the end of
two types: an `edge` record's condition and a snapshot unit's non-`completed` conditions
(`records.Edge`, `records.UnitImage`); records and units of formats 1 to 3 read as
`completed` edges (`tests/fixtures/journal-v4` pins it).

The generation ties a log to the snapshot it continues. The graph id (SPEC §11) is made
once, when the state dir is created, and carried by every log header and snapshot from
then on, so it survives compaction and restarts. A state dir of an older format takes one
on its first open (the journal rewrites its log then).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from ...core.records import BootImage, Record, SnapshotBody, UnitImage

LOG_MAGIC = b"USJ2"
LOG_MAGIC_V1 = b"USJ1"
"""Written before graphs had ids (SPEC §11); read as a graph with no id yet."""
SNAPSHOT_MAGIC = b"USS3"
SNAPSHOT_MAGIC_V2 = b"USS2"
"""Written before graphs had ids: the boot and the units."""
SNAPSHOT_MAGIC_V1 = b"USS1"
"""Written by 0.1.0, before boots were recorded; read as boot 1 of an unknown identity."""
LOG_HEADER = struct.Struct(">4sQ16sI")
LOG_HEADER_V1 = struct.Struct(">4sQI")
ENTRY_HEADER = struct.Struct(">II")
SNAPSHOT_HEADER = struct.Struct(">4sQII")
MAX_ENTRY = 64 << 20
"""No entry is ever this large (one command's records, each under a frame): a header that
says otherwise is damage, not a long entry, so a scan never trusts an absurd length."""
_CHECKSUM = 4
"""The log header's checksum (its last 4 bytes) covers everything before it."""

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


@dataclass(frozen=True)
class LogHeader:
    generation: int
    graph: str
    """The graph's id; "" in a format-1 log (written before graphs had ids)."""
    size: int
    """Bytes of the header: the entries begin here."""


def log_header(generation: int, graph: str) -> bytes:
    head = struct.pack(">4sQ16s", LOG_MAGIC, generation, bytes.fromhex(graph))
    return head + struct.pack(">I", zlib.crc32(head))


def entry(records: list[Record]) -> bytes:
    body = _encoder.encode(records)
    return ENTRY_HEADER.pack(len(body), zlib.crc32(body)) + body


def snapshot(generation: int, boot: BootImage, images: list[UnitImage], graph: str) -> bytes:
    body = _encoder.encode(SnapshotBody(boot, images, graph))
    return SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, generation, len(body), zlib.crc32(body)) + body


@dataclass(frozen=True)
class Snapshot:
    generation: int
    boot: BootImage | None
    """None in a format-1 snapshot."""
    units: list[UnitImage]
    graph: str
    """The graph's id; "" in snapshots of formats 1 and 2."""


def read_snapshot(data: bytes) -> Snapshot:
    if len(data) < SNAPSHOT_HEADER.size:
        raise Damaged(0, "snapshot shorter than its header")
    magic, generation, length, crc = SNAPSHOT_HEADER.unpack_from(data)
    body = memoryview(data)[SNAPSHOT_HEADER.size :]
    if magic not in (SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_V2, SNAPSHOT_MAGIC_V1):
        raise Damaged(0, "not a unitsync snapshot (bad magic)")
    if len(body) != length or zlib.crc32(body) != crc:
        raise Damaged(SNAPSHOT_HEADER.size, "snapshot body fails its checksum")
    if magic == SNAPSHOT_MAGIC_V1:
        return Snapshot(generation, None, _snapshot_v1_decoder.decode(body), "")
    decoded = _snapshot_decoder.decode(body)
    if magic == SNAPSHOT_MAGIC and not decoded.graph:
        raise Damaged(SNAPSHOT_HEADER.size, "snapshot of format 3 without its graph id")
    return Snapshot(generation, decoded.boot, decoded.units, decoded.graph)


def read_log_header(data: bytes) -> LogHeader:
    """The header of either format; Damaged if it is neither."""
    magic = bytes(data[:4])
    header = LOG_HEADER_V1 if magic == LOG_MAGIC_V1 else LOG_HEADER
    if len(data) < header.size:
        raise Damaged(0, "journal shorter than its header")
    if magic not in (LOG_MAGIC, LOG_MAGIC_V1) or zlib.crc32(
        data[: header.size - _CHECKSUM]
    ) != int.from_bytes(data[header.size - _CHECKSUM : header.size], "big"):
        raise Damaged(0, "not a unitsync journal (bad header)")
    if magic == LOG_MAGIC_V1:
        _magic, generation, _crc = LOG_HEADER_V1.unpack_from(data)
        return LogHeader(generation, "", header.size)
    _magic, generation, graph, _crc = LOG_HEADER.unpack_from(data)
    return LogHeader(generation, graph.hex(), header.size)


@dataclass
class Scan:
    """Where the valid entries end, and why reading stopped there (None: clean end)."""

    end: int
    count: int = 0
    torn: str | None = None


def entries(data: bytes, scan: Scan) -> Iterator[list[Record]]:
    """Decode entries from `scan.end` (where the header ends) on, updating `scan`; raise
    Damaged for mid-file damage.

    A bad entry is a torn tail (a crash mid-write) when no valid entry follows it.
    """
    size, header_size = len(data), ENTRY_HEADER.size
    offset = scan.end
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
