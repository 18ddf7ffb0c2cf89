"""Small Unix facts both sides need: who is at the other end of a socket, is a path still
the file we hold, and a private datagram socket to hear sd_notify messages on (the client,
when it starts an agent; `run --notify`, from its service)."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import NamedTuple, Protocol

CREDENTIALS = struct.Struct("3i")
"""The kernel's `struct ucred`, as SO_PEERCRED and SCM_CREDENTIALS carry it."""


class Peer(NamedTuple):
    """The process at the other end of a Unix socket."""

    pid: int
    uid: int
    gid: int


class _Socket(Protocol):  # a socket.socket or a trio socket
    def getsockopt(self, level: int, option: int, size: int, /) -> bytes: ...


def peer_of(sock: _Socket) -> Peer:
    """The process at the other end of a connected Unix socket, from SO_PEERCRED: the
    kernel's word, fixed when the connection was made."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, CREDENTIALS.size)
    return Peer(*CREDENTIALS.unpack(creds))


def same_file(fd: int, path: Path) -> bool:
    """Is the file open as `fd` still the one at `path` (not removed, not replaced)?"""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def notify_receiver(label: str) -> tuple[socket.socket, str]:
    """A datagram socket only its creator knows the name of, for NOTIFY_SOCKET: bound in the
    abstract namespace (no file to leave behind or to guess), non-blocking, and passing its
    senders' credentials (SCM_CREDENTIALS), so a receiver can check who sent what.

    Returns the socket and its address as NOTIFY_SOCKET writes it (`@unitsync/...`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    name = f"unitsync/{label}/{os.getpid()}/{os.urandom(16).hex()}"
    sock.bind(f"\0{name}")
    return sock, f"@{name}"
