"""The agent's Unix socket: bound privately, replaced when stale, peers checked.

Kept apart from the server so the security rules of SPEC §5 read in one place.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

import trio

from .files import SetupError

BACKLOG = 4096
"""Connections the kernel holds while the agent is busy or still loading its journal: a
workspace's scripts all start at once, and none should see "connection refused"."""


Identity = tuple[int, int]
"""A file's (device, inode): tells our socket from another file at the same path."""


def bind_private(path: Path) -> trio.socket.SocketType:
    """Bind and listen on `path` (0600), replacing a stale socket file.

    Callers hold the socket's lock, so an existing socket file can only be a dead agent's.
    """
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SetupError(f"{path} exists and is not a socket; remove it or choose another path")
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


def identity(path: Path) -> Identity | None:
    """The (device, inode) of what is at `path` now, if anything."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_dev, info.st_ino
