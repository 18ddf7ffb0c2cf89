"""One socket path, one agent, for as long as the agent lives (SPEC §11).

The lock file beside the socket (`agent.sock.lock`) goes when the socket's folder is
removed, and with it the only thing that kept a second agent off the path: one started
while the first re-creates its folder took the path over (issue 19, sequence 1). This lock
cannot be removed from under its holder: it is a Unix socket in Linux's abstract namespace,
named from the uid and a hash of the socket's path (`wire.host.peer.socket_lock_name`), bound
and listening for the agent's whole life. The kernel releases it when the agent dies,
however it dies; another agent that binds the name gets EADDRINUSE, and learns the
holder's pid by connecting to it (SO_PEERCRED). The holder accepts such probes and closes
them at once (`serve`), so they never fill its backlog.

Abstract names are shared by every user of the network namespace: a name held by another
uid cannot be one of ours (the uid is in the name), and is refused with a message saying
so, never waited on or taken over.

Errors: `SocketLock` raises SetupError when the name is held (naming the holder) or
cannot be bound; the agent then exits 1 and the holder keeps serving.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import trio

from unitsync.wire.host.peer import Peer, lock_holder, socket_lock_name

from ..files import SetupError

PROBE_BACKLOG = 16
"""Probes queue here only until the holder's next accept: a few at once is plenty."""


class SocketLock:
    """The lock on socket path `path`, taken on entry (SetupError if held), released on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = socket_lock_name(path)
        self._sock: socket.socket | None = None

    def __enter__(self) -> SocketLock:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.name)
            sock.listen(PROBE_BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise SetupError(
                    f"cannot take the lock of the socket {self.path}: {exc.strerror or exc}"
                ) from None
            raise SetupError(held(self.path, lock_holder(self.name))) from None
        sock.setblocking(False)
        self._sock = sock
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def serve(self) -> None:
        """Accept each probe and close it: the prober has read our pid already."""
        assert self._sock is not None
        listener = trio.socket.from_stdlib_socket(self._sock.dup())
        with listener:
            while True:
                probe, _address = await listener.accept()
                probe.close()


def held(path: Path, holder: Peer | None) -> str:
    """Why the lock of `path` cannot be taken, naming its holder."""
    if holder is None:  # released between our bind and our probe: a retry would do
        return (
            f"another unitsync agent was serving the socket {path} a moment ago; "
            "try again, or give this one another --socket"
        )
    if holder.pid == 0:
        return (
            f"another unitsync agent is already serving the socket {path} (too busy to say "
            "its pid); stop it first, or give this one another --socket"
        )
    if holder.uid != os.getuid():
        return (
            f"the lock of the socket {path} (an abstract Unix socket) is held by uid "
            f"{holder.uid} (pid {holder.pid}), not by you (uid {os.getuid()}): it cannot be "
            "your agent; give this one another --socket, or ask the administrator to stop it"
        )
    return (
        f"another unitsync agent (pid {holder.pid}) is already serving the socket {path}; "
        "stop it first, or give this one another --socket"
    )
