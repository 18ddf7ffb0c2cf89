"""Who is at the other end of a Unix socket: facts both sides need.

The peer of a connected socket (SO_PEERCRED), the process listening at an address (a
probe connect), and the socket lock an agent holds on its path: an abstract socket it
listens on for its whole life (issue 19), whose holder a probe names.

Error rules: a probe that finds nobody is an answer (None), not an exception; one that
finds a listener too busy to take it answers `BUSY`: someone, unnamed.
"""

from __future__ import annotations

import _socket
import os
import struct
from typing import Protocol

import msgspec

CREDENTIALS = struct.Struct("3i")
"""The kernel's `struct ucred`, as SO_PEERCRED and SCM_CREDENTIALS carry it."""


class Peer(msgspec.Struct, frozen=True):
    """The process at the other end of a Unix socket."""

    pid: int
    uid: int
    gid: int


class _Socket(Protocol):  # a socket.socket or a trio socket
    def getsockopt(self, level: int, option: int, size: int, /) -> bytes: ...


def peer_of(sock: _Socket) -> Peer:
    """The process at the other end of a connected Unix socket, from SO_PEERCRED: the
    kernel's word, fixed when the connection was made."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, CREDENTIALS.size)
    return Peer(*CREDENTIALS.unpack(creds))


PROBE_TIMEOUT = 1.0
"""A listener accepts (and drops) a probe at once; a connect that takes longer is past its
backlog, which still says that someone listens."""
BUSY = Peer(0, -1, -1)
"""What a probe makes of a listener whose backlog is full: someone, unnamed."""


def listener_at(address: str) -> Peer | None:
    """The process listening at the Unix stream `address` (a path, or an abstract name with
    its leading NUL), or None if nobody does (no file, or a dead listener's); `BUSY` if one
    is too busy to take the probe."""
    import socket  # (`_socket` above: a client's `peer_of` needs no more)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except OSError:  # EAGAIN, a timeout: a listener too busy to take us
            return BUSY
        return peer_of(probe)


SOCKET_LOCK_PREFIX = "unitsync/socket-lock"
"""The abstract name of the lock an agent holds on its socket path (`socket_lock_name`)."""


def socket_lock_name(path: str | os.PathLike[str]) -> str:
    """The abstract-namespace name (leading NUL) an agent binds for as long as it serves
    `path`: the user's uid and a hash of the path's real location. The kernel releases it
    when the agent dies, and no removal of the path or its folder can take it away, which a
    lock file beside the socket cannot promise (it goes with the folder)."""
    import hashlib

    from .paths import folder_of

    folder = os.path.realpath(folder_of(path))
    name = os.path.basename(os.fspath(path))
    digest = hashlib.sha256(os.fsencode(os.path.join(folder, name))).hexdigest()[:32]
    return f"\0{SOCKET_LOCK_PREFIX}/{os.getuid()}/{digest}"


def lock_holder(name: str) -> Peer | None:
    """The process that holds the abstract socket lock `name` (listening at it), or None if
    nobody does; `BUSY` if its backlog is full."""
    return listener_at(name)
