"""systemd socket activation (sd_listen_fds(3)): serve the socket systemd bound for us.

With a `.socket` unit, systemd binds the agent's socket itself and starts the agent on
the first connection (which waits in the backlog meanwhile). It passes the listening
socket from file descriptor 3 on, and says so in `LISTEN_FDS` (how many),
`LISTEN_PID` (for which process: a child that inherits the environment must not take
them) and, optionally, `LISTEN_FDNAMES`. Like `sd_listen_fds(unset_environment=1)`,
the variables are removed once read, whoever they were for.

The agent serves the first socket; it must be a listening Unix stream socket bound to a
path, since clients find the agent by path and check its folder (SPEC §5). The socket
file is systemd's: the agent neither replaces nor removes it (`listener.inherited_socket`).
Peers are checked on every connection as usual.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import MutableMapping

from ..files import SetupError

LISTEN_FDS_START = 3
"""SD_LISTEN_FDS_START: the first descriptor systemd passes (after stdin, stdout, stderr)."""
VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")

log = logging.getLogger("unitsync.agent")


def take_listen_fds(environ: MutableMapping[str, str] = os.environ, pid: int = 0) -> list[int]:
    """The descriptors passed to this process (`pid`, default ours); the variables go."""
    count, for_pid, names = (environ.pop(name, None) for name in VARIABLES)
    if count is None or for_pid != str(pid or os.getpid()):
        return []
    try:
        fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
    except ValueError:
        raise SetupError(f"LISTEN_FDS={count!r} is not a number of sockets") from None
    for fd in fds:  # ours alone: not to be inherited by anything we run
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            raise SetupError(f"LISTEN_FDS={count} but descriptor {fd} is not open") from None
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    if names:
        log.debug("passed descriptors named %s", names)
    return fds


def listening_socket(fds: list[int]) -> socket.socket:
    """The first passed descriptor as a socket, checked; any others are closed."""
    first, *rest = fds
    for fd in rest:
        os.close(fd)
    if rest:
        log.warning("systemd passed %d sockets; serving the first, closed the rest", len(fds))
    try:
        sock = socket.socket(fileno=first)
    except OSError:
        raise SetupError(_not_usable(first, "it is not a socket")) from None
    try:
        _check(sock)
    except SetupError:
        sock.close()
        raise
    return sock


def _check(sock: socket.socket) -> None:
    fd = sock.fileno()
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise SetupError(_not_usable(fd, "it is not a Unix stream socket"))
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise SetupError(_not_usable(fd, "it is not listening"))
    name = sock.getsockname()
    if not isinstance(name, str) or not name.startswith("/"):
        raise SetupError(_not_usable(fd, "it is not bound to a path, which clients need"))


def _not_usable(fd: int, why: str) -> str:
    return (
        f"cannot serve the socket passed by systemd (LISTEN_FDS, descriptor {fd}): {why}; "
        "use ListenStream=%t/unitsync/agent.sock in the .socket unit (see docs/systemd.md)"
    )
