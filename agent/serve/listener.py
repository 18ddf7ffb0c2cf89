"""The agent's Unix socket: bound privately, replaced when stale, peers checked.

Kept apart from the server so the security rules of SPEC §5 read in one place.

Never two listeners on one path (SPEC §11): a socket file at the path is replaced only
when nothing accepts on it (a dead agent's). One that something listens on (systemd's
socket unit, another program, an agent of an older unitsync) is refused, never unlinked
from under its listener, which would go on listening unreachable, or be taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

import trio

from unitsync.wire.host.peer import BUSY, listener_at

from ..files import SetupError

BACKLOG = 4096
"""Connections the kernel holds while the agent is busy or still loading its journal: a
workspace's scripts all start at once, and none should see "connection refused"."""


Identity = tuple[int, int]
"""A file's (device, inode): tells our socket from another file at the same path."""


def bind_private(path: Path, *, replace_stale: bool = True) -> trio.socket.SocketType:
    """Bind and listen on `path` (0600); with `replace_stale`, replace a socket file that
    nobody accepts on.

    Callers hold the socket's lock, so no other agent of ours listens there; anything
    else that does is refused (`_refuse_if_listened_on`). Without `replace_stale` (re-creating a
    removed socket) whatever is at the path is left alone: bind fails if something is.
    """
    if replace_stale:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise SetupError(
                    f"{path} exists and is not a socket; remove it or choose another path"
                )
            _refuse_if_listened_on(path)
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise SetupError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(BACKLOG)
    return trio.socket.from_stdlib_socket(sock)


def _refuse_if_listened_on(path: Path) -> None:
    """SetupError if a process accepts connections at `path` (it is not a stale file)."""
    peer = listener_at(str(path))
    if peer is None:
        return  # a dead agent's file: ours to replace
    who = "a process too busy to accept" if peer is BUSY else f"pid {peer.pid} (uid {peer.uid})"
    raise SetupError(
        f"something already listens at {path}: {who}, not a unitsync agent holding this "
        "socket's lock (a systemd socket unit? another program?); the agent does not take "
        "its path over: stop it, or give this one another --socket"
    )


def identity(path: Path) -> Identity | None:
    """The (device, inode) of what is at `path` now, if anything."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_dev, info.st_ino
