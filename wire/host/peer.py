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


SOCKET_LOCK_PREFIX = "unitsync/socket-lock"
"""The abstract name of the lock an agent holds on its socket path (`socket_lock_name`)."""
LOCK_PROBE_TIMEOUT = 1.0
"""A holder accepts (and drops) a probe at once; a connect that takes longer is past its
backlog, which still says that someone holds the name."""


def socket_lock_name(path: Path) -> str:
    """The abstract-namespace name (leading NUL) an agent binds for as long as it serves
    `path`: the user's uid and a hash of the path's real location. The kernel releases it
    when the agent dies, and no removal of the path or its folder can take it away, which a
    lock file beside the socket cannot promise (it goes with the folder)."""
    import hashlib

    folder = os.path.realpath(path.parent)
    digest = hashlib.sha256(os.fsencode(os.path.join(folder, path.name))).hexdigest()[:32]
    return f"\0{SOCKET_LOCK_PREFIX}/{os.getuid()}/{digest}"


def lock_holder(name: str) -> Peer | None:
    """The process that holds the abstract socket `name` (listening), or None if nobody
    does. A holder whose backlog is full is `Peer(0, -1, -1)`: someone, unnamed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(LOCK_PROBE_TIMEOUT)
        try:
            probe.connect(name)
        except ConnectionRefusedError:
            return None
        except OSError:  # EAGAIN, a timeout: a listener too busy to take us
            return Peer(0, -1, -1)
        return peer_of(probe)


class LockRecord(NamedTuple):
    """What an agent writes in a lock file it holds: its pid, and the socket it serves."""

    pid: int
    serving: str = ""


def read_lock_record(path: Path) -> LockRecord | None:
    """The record in lock file `path` (which may be stale: check the pid), or None."""
    try:
        with open(path, "rb") as file:
            text = file.read(4096).decode(errors="replace")
    except OSError:
        return None
    return parse_lock_record(text)


def parse_lock_record(text: str) -> LockRecord | None:
    """`PID` on the first line, the socket served (if recorded) on the second."""
    lines = text.splitlines()
    if not lines or not lines[0].strip().isdigit():
        return None
    return LockRecord(int(lines[0]), lines[1] if len(lines) > 1 else "")
