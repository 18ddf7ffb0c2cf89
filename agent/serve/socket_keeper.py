"""Keeping the agent reachable when its socket file is removed while it runs (SPEC §4).

A temp-dir cleaner, or a logout that empties $XDG_RUNTIME_DIR, can remove the socket
file or its whole folder from under a running agent: it still listens, but no client
can find it. The keeper owns the socket's locks and its listening socket. Every
RECHECK_INTERVAL it looks at the path (one `lstat`, in a worker thread):

- still the socket it bound: nothing to do;
- gone (the file, or its folder): it makes the folder again (0700), takes the lock file
  again if that went too, binds a fresh socket, serves it, and closes the old one.
  Connections run in the server's nursery (`handler_nursery`), not the listener's, so
  replacing the listener drops none of them;
- something else (a systemd socket unit started meanwhile, another program): the path is
  no longer ours, and binding over it would make two listeners on one path. The agent
  stops in order (`Displaced`: waiting clients are told, the journal flushes) and leaves
  the path as it is, so that whatever listens there serves alone (systemd's socket then
  starts its own agent, `server._await_handover`).

One agent per path, whatever happens to the folder (SPEC §11): the lock that decides is
`socket_lock.SocketLock`, an abstract socket held for the agent's whole life, so a second
agent can never bind the path while the first is re-creating it. The lock file beside
the socket (`agent.sock.lock`) is kept for people (`kill $(cat agent.sock.lock)`) and for
agents of older versions; it goes with the folder and is taken again with it.

Why a periodic check rather than inotify: one `lstat` every two seconds costs nothing
measurable and nothing runs in between (no busy polling); it works on every platform
and file system; and it sees every way the path can stop being ours (the file removed,
the folder removed, something else put in its place). inotify would notice at once,
but needs ctypes, is Linux-only, and must re-arm its watch whenever the folder itself
goes, which is one of the cases to handle.

A socket systemd passed (socket activation) is systemd's: the keeper serves it, never
checks or re-creates its path, and leaves its file in place when the agent stops. It
still holds the path's lock, so no agent binds the path while it serves.

Stopping: the file goes before the socket stops listening. Accepting ends first (the
listener closes its own duplicate of the socket), but the keeper's descriptor keeps it
listening, connections queueing unanswered, until `__exit__` has removed the file. So a
socket file that refuses connections is only ever a dead agent's, which is what makes a
client that lost its agent start another (`client.Client._connect`), and never after a
clean stop (measured before this order: a client looping on connect during a SIGTERM saw
"connection refused" with the file there in 5 of 5 stops). A path that is no longer the
socket it bound is never removed.

Errors: if the socket cannot be made again (the folder is no longer private), `serve`
raises SetupError and the agent stops with its message: an agent nobody can reach should
not keep holding the state dir. `Displaced` is an orderly stop, not an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from unitsync.wire.host.paths import private_socket_hint

from ..files import SetupError, ensure_private_dir, exclusive_lock
from .listener import Identity, bind_private, identity
from .socket_lock import SocketLock

log = logging.getLogger("unitsync.agent")

RECHECK_INTERVAL = 2.0
"""Seconds between checks of the socket's path: a removal is repaired within this (SPEC:
within seconds), for one `lstat` per check."""

Handler = Callable[[trio.SocketStream], Awaitable[object]]


def _another_socket() -> str:
    """How to choose another socket: in a folder only this user can write."""
    return f"put the socket in a private folder, e.g. --socket {private_socket_hint()}"


class Displaced(Exception):
    """Something else is at the agent's socket path now: the agent stops in order and leaves
    the path to it (never two listeners on one path). The message says what happened."""


class SocketKeeper:
    """The socket at `path` and its locks: taken on entry, kept while `serve` runs."""

    def __init__(self, path: Path, inherited: socket.socket | None = None) -> None:
        self.path = path
        self.inherited = inherited
        self.lock_path = path.with_name(path.name + ".lock")
        self._path_lock = SocketLock(path)
        self._lock = contextlib.ExitStack()
        self._lock_id: Identity | None = None
        self._socket: trio.socket.SocketType | None = None
        self._socket_id: Identity | None = None
        self.serving = False
        """Accepting connections (from then on, each is served or refused by its task)."""

    def __enter__(self) -> SocketKeeper:
        """Take the locks and bind (SetupError if another agent has them, or the path is bad)."""
        ensure_private_dir(self.path.parent, _another_socket())
        with contextlib.ExitStack() as taken:
            taken.enter_context(self._path_lock)  # first: it alone survives the folder's removal
            taken.callback(lambda: self._lock.close())
            self._take_lock()
            if self.inherited is not None:
                self._socket = trio.socket.from_stdlib_socket(self.inherited)
            else:
                self._bind()
            taken.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._socket_id is not None and identity(self.path) == self._socket_id:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # first: a file that refuses must mean a crash
        if self._socket is not None:
            self._socket.close()  # the queued connections are reset: they retry
        self._lock.close()
        self._path_lock.__exit__()

    def turn_away(self, refusal: bytes) -> int:
        """Answer each connection waiting in the backlog with `refusal` (a frame) and close
        it; how many there were. For an agent that cannot start after all: the clients
        that connected meanwhile learn why, instead of a reset connection. Never blocks:
        a frame this small fits an empty socket buffer, and a peer gone already is skipped.
        """
        if self._socket is None:
            return 0
        told = 0
        with socket.socket(fileno=os.dup(self._socket.fileno())) as listener:
            listener.setblocking(False)
            while True:
                try:
                    peer, _address = listener.accept()
                except OSError:  # none waits (EAGAIN), or the socket cannot accept at all
                    return told
                with peer:
                    peer.setblocking(False)
                    with contextlib.suppress(OSError):
                        peer.send(refusal)
                        told += 1

    async def serve(
        self,
        handler: Handler,
        handler_nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled, on a fresh socket whenever the path is lost."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._path_lock.serve)
            accepting = await nursery.start(self._accept, handler, handler_nursery)
            self.serving = True
            task_status.started()
            if self.inherited is not None:
                await trio.sleep_forever()  # systemd's socket: its path is systemd's to keep
            while True:
                await trio.sleep(RECHECK_INTERVAL)
                if await trio.to_thread.run_sync(self._still_ours):
                    continue
                old = self._socket
                if not await trio.to_thread.run_sync(self._rebind):
                    raise Displaced(
                        f"the socket path {self.path} now holds another socket or file, not "
                        "this agent's (a systemd socket unit or another program put it there); "
                        "stopping, so that only one listens there (waiting clients reconnect "
                        "to it)"
                    )
                replaced, accepting = (
                    accepting,
                    await nursery.start(self._accept, handler, handler_nursery),
                )
                replaced.cancel()  # closes the old listener's duplicate
                if old is not None:
                    old.close()  # and the keeper's: the old socket is gone
                log.warning(
                    "the socket %s was removed while the agent ran; listening again at the "
                    "same path (open connections are kept)",
                    self.path,
                )

    async def _accept(
        self,
        handler: Handler,
        handler_nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[trio.CancelScope],
    ) -> None:
        """Accept on the current socket until the returned scope is cancelled."""
        assert self._socket is not None
        # A duplicate: closing the listener must not stop the socket listening (see above).
        listener = trio.SocketListener(self._socket.dup())
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await trio.serve_listeners(handler, [listener], handler_nursery=handler_nursery)

    def _still_ours(self) -> bool:
        current = identity(self.path)
        return current is not None and current == self._socket_id

    def _rebind(self) -> bool:
        """Make the socket again if its path is free; False if something else is there."""
        if identity(self.path) is not None:
            return False  # not ours, and not ours to replace
        ensure_private_dir(self.path.parent, _another_socket())
        if identity(self.lock_path) != self._lock_id:  # the lock file went with the folder
            self._take_lock()
        try:
            self._bind(replace_stale=False)
        except SetupError:
            if identity(self.path) is not None:  # bound by someone else meanwhile
                return False
            raise
        return True

    def _take_lock(self) -> None:
        lock = contextlib.ExitStack()
        fd = lock.enter_context(
            exclusive_lock(
                self.lock_path, f"the socket {self.path}", "give this one another --socket"
            )
        )
        info = os.fstat(fd)
        self._lock_id = info.st_dev, info.st_ino
        replaced, self._lock = self._lock, lock
        replaced.close()

    def _bind(self, *, replace_stale: bool = True) -> None:
        self._socket = bind_private(self.path, replace_stale=replace_stale)
        self._socket_id = identity(self.path)
