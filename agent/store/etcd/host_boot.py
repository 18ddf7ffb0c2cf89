"""A host's own boot, kept in its agent's state dir, when several hosts share a graph.

With the local journal the boot is a record of the journal itself (`records.Boot`). In a
graph shared through etcd each host restarts on its own (SPEC §10): its boot number and
identity are its own, so they live in its agent's state dir, written durably like the
snapshot. Each agent locks its state dir, so one agent writes this file.

Blocking file work: the etcd store calls these in a worker thread, at start-up. A file that
cannot be read or written raises its OSError.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from ...core.records import BootImage
from ..journal.disk import REAL_DISK, write_durably

BOOT_NAME = "boot"

_decoder = msgspec.msgpack.Decoder(BootImage)


def load(state_dir: Path) -> BootImage | None:
    """The boot this host's agent last recorded; None if it never did."""
    try:
        data = (state_dir / BOOT_NAME).read_bytes()
    except FileNotFoundError:
        return None
    return _decoder.decode(data)


def save(state_dir: Path, boot: BootImage) -> None:
    """Record `boot` durably (temp file, fsync, rename, fsync of the folder)."""
    write_durably(REAL_DISK, state_dir / BOOT_NAME, msgspec.msgpack.encode(boot))
