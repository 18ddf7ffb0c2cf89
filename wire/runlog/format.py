"""The records of a run's log file, and reading them back past damage.

A log file is a sequence of records, each framed as `MAGIC`, the body's length and the
body's CRC-32, then the body: one kind byte and its payload. Output records carry the
bytes the command wrote, unchanged (binary or not UTF-8 alike), with the time `run` read
them and the stream; the other records are small msgspec structs (`Section`, `End`, `Gap`).

Error rules: `scan` never raises on what it reads. A record whose frame or checksum is
wrong is damage: the bytes up to the next `MAGIC` that starts a good record are reported
as one `Skipped` (offset, length), and reading goes on from there. An incomplete record at
the end is `Skipped` too when the file is whole (`final`), and left for later otherwise (a
live file whose writer is mid-record).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import msgspec

MAGIC = b"\xffUL\x01"
"""Starts every record: a reader that meets damage looks for the next one."""
HEAD = struct.Struct("<4sII")
"""MAGIC, body length, CRC-32 of the body."""
OUTPUT_HEAD = struct.Struct("<cdB")
"""An output record's body before its bytes: kind, Unix time, stream."""
MAX_BODY = 4 * 1024 * 1024
"""No record is longer (the writer splits output past it): a length beyond is damage, not
a reason to read gigabytes."""

OUTPUT, SECTION, END, GAP = b"o", b"s", b"e", b"g"
STREAMS = ("stdout", "stderr", "both")
"""Stream numbers on disk. `both`: `run`'s stdout and stderr were one terminal or file, so
the command got one pseudo-terminal or pipe for both, which keeps their order (as without
`run`), not which was which."""


class Section(msgspec.Struct, array_like=True):
    """Begins every file: which run this is, and where its output stood when the file began."""

    unit: str
    run: int
    """1, 2, 3...: the unit's runs recorded in this state dir."""
    boot: int
    started: float
    segment: int
    """0 for a run's first file, 1, 2... for the next ones."""
    first_line: int
    """Lines of this run's output before this file (what went before it was dropped when
    this is the oldest file kept); -1 once output was dropped uncounted (`Gap`)."""
    first_byte: int
    pid: int = 0
    command: str = ""
    host: str = ""
    limit: int = 0
    open_lines: list[int] = []
    """Streams whose line was not ended when this file began: if what went before was
    dropped, the file begins with the rest of a line, not shown."""


class End(msgspec.Struct, frozen=True, array_like=True):
    """The run's end, as `run` reported it."""

    at: float
    status: int
    reason: str = ""
    """"" when the unit completed; the failed unit's reason otherwise."""


class Gap(msgspec.Struct, frozen=True, array_like=True):
    """Output dropped here to stay within the limit (it came faster than it could be kept)."""

    lines: int
    """-1: not counted (what is dropped before it is written is not looked at)."""
    bytes: int
    open_lines: list[int] = []
    """Streams whose dropped part ended mid-line: what follows is the rest of a line."""


class Output(msgspec.Struct, frozen=True, gc=False):
    time: float
    stream: str
    data: bytes


class Skipped(msgspec.Struct, frozen=True, gc=False):
    """Bytes that hold no readable record (damage, or a record cut short)."""

    offset: int
    length: int


Record = Output | Section | End | Gap
_ENCODER = msgspec.msgpack.Encoder()
_DECODERS = {
    SECTION: msgspec.msgpack.Decoder(Section),
    END: msgspec.msgpack.Decoder(End),
    GAP: msgspec.msgpack.Decoder(Gap),
}


def output_parts(time: float, stream: int, data: bytes) -> list[bytes]:
    """An output record as the parts to write (`os.writev`): `data` is never copied."""
    prefix = OUTPUT_HEAD.pack(OUTPUT, time, stream)
    crc = zlib.crc32(data, zlib.crc32(prefix))
    return [HEAD.pack(MAGIC, len(prefix) + len(data), crc), prefix, data]


def other_record(record: Section | End | Gap) -> bytes:
    kind = SECTION if isinstance(record, Section) else END if isinstance(record, End) else GAP
    body = kind + _ENCODER.encode(record)
    return HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body


def scan(data: bytes, start: int = 0, *, final: bool = True) -> tuple[list[Record | Skipped], int]:
    """The records of `data` from `start`, and where reading stopped (the end, or the start
    of an incomplete record left for later when not `final`)."""
    found: list[Record | Skipped] = []
    pos, end = start, len(data)
    view = memoryview(data)
    damaged_from = -1
    while pos < end:
        record, length = _one(data, view, pos)
        if record is None and length == 0 and not final:
            break  # a record still being written
        if record is None:
            if damaged_from < 0:
                damaged_from = pos
            nxt = data.find(MAGIC, pos + 1)
            pos = end if nxt < 0 else nxt
            continue
        if damaged_from >= 0:
            found.append(Skipped(damaged_from, pos - damaged_from))
            damaged_from = -1
        found.append(record)
        pos += length
    if damaged_from >= 0:
        found.append(Skipped(damaged_from, pos - damaged_from))
    return found, pos


def _one(data: bytes, view: memoryview, pos: int) -> tuple[Record | None, int]:
    """The record at `pos` and its length; (None, 0) if it is incomplete, (None, -1) if it
    is damaged."""
    end = len(data)
    if end - pos < HEAD.size:
        return (None, 0) if MAGIC.startswith(data[pos : pos + 4]) else (None, -1)
    magic, length, crc = HEAD.unpack_from(data, pos)
    if magic != MAGIC or length > MAX_BODY or length < 1:
        return None, -1
    body_at = pos + HEAD.size
    if body_at + length > end:
        return None, 0
    body = view[body_at : body_at + length]
    if zlib.crc32(body) != crc:
        return None, -1
    kind = bytes(body[:1])
    try:
        if kind == OUTPUT:
            _kind, time, stream = OUTPUT_HEAD.unpack_from(body)
            record: Record = Output(time, STREAMS[stream], bytes(body[OUTPUT_HEAD.size :]))
        else:
            record = _DECODERS[kind].decode(body[1:])
    except (KeyError, IndexError, struct.error, msgspec.DecodeError):
        return None, -1
    return record, HEAD.size + length


def records(data: bytes) -> Iterator[Record | Skipped]:
    """Every record of a whole file."""
    yield from scan(data)[0]
