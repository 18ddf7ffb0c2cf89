"""The agent's Unix socket: a private folder, one agent per socket, peer checks.

Kept apart from the server so the security rules of SPEC §5 read in one place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import trio

BACKLOG = 4096


class SetupError(Exception):
    """The agent cannot start; the message says why and what to do."""


def ensure_private_dir(path: Path) -> None:
    """Create `path` 0700, or accept an existing one only if we own it and others cannot write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise SetupError(f"cannot create the folder {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise SetupError(f"{path} is not a folder (a symlink or file is in the way)")
    if info.st_uid != os.getuid():
        raise SetupError(
            f"refusing to use {path}: it belongs to uid {info.st_uid}, not to you "
            f"(uid {os.getuid()}); choose another path with --socket"
        )
    if info.st_mode & 0o022:
        raise SetupError(
            f"refusing to use {path}: it is writable by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run `chmod 700 {path}` or choose another path"
        )


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an flock on `path` (which records our pid) for as long as the block runs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SetupError(
                f"another unitsync agent (pid {holder}) is already serving {what}; "
                "stop it first, or give this one another --socket"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def bound_socket(path: Path) -> Iterator[trio.socket.SocketType]:
    """Bind and listen on `path` (0600), replacing a stale socket file; remove it on exit.

    Callers hold the socket's lock, so an existing file can only be a dead agent's.
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
    try:
        yield trio.socket.from_stdlib_socket(sock)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid
