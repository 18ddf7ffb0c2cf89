"""The trio client's I/O: trio's sockets, clock and cancellation. It never starts an agent.

Its waits have no bounds of their own (CONNECT_TIMEOUT, REPLY_TIMEOUT and START_WAIT are
None): a trio program bounds a call with trio's cancellation (`trio.move_on_after`), and a
call cancelled half way leaves its session mid-exchange, so the next call opens a fresh
connection and no reply ever answers the wrong request. A `timeout=` given to `start` or
`unit` works too.

Why it never starts an agent when it finds none (`NoAgent`), not even after a crash
(`AgentCrashed`): a trio program runs the agent in a nursery of its own
(`unitsync.agent.serve.server.run_agent`) or uses one that something supervises, and an
agent spawned from inside an event loop would outlive the nursery that should own it. So
`autostart=True` is refused when the client is made.

Resource rules: a `TrioStream` owns its socket, closed by `aclose()`. Errors: trio wraps a
socket's OSError in BrokenResourceError; this module raises the OSError itself
(`_os_error`), as `_backends` says.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import trio

if TYPE_CHECKING:
    from ..autostart import Autostarted

T = TypeVar("T")

CLIENT_NAME = "trio"
"""What a trio client calls itself in its hello unless told."""
CONNECT_TIMEOUT: float | None = None
"""No bound of its own: a trio program bounds a call by cancelling it."""
REPLY_TIMEOUT: float | None = None
"""No bound of its own, as for connecting."""
START_WAIT: float | None = None
"""A `start` waits until cancelled unless told, as for connecting."""

Callback = Callable[[T], Awaitable[None]]
"""A caller's callback (`on_progress`, `on_unreachable`, `on_graph_changed`): awaited."""

NEVER_STARTS = (
    "the trio client never starts an agent: one spawned from inside an event loop would "
    "outlive the nursery that should own it. Run one in your own nursery "
    "(unitsync.agent.serve.server.run_agent), or use one that something supervises "
    "(`unitsync agent` under systemd), and leave `autostart` unset"
)


class TrioStream:
    """One connected socket, as a trio stream."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        """The stdlib socket beneath (non-blocking): for SO_PEERCRED and `receive_now`."""
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _os_error(exc) from None

    async def receive(self, size: int, timeout: float | None) -> bytes:
        if timeout is None:
            return await self._receive(size)
        with trio.move_on_after(timeout):
            return await self._receive(size)
        raise TimeoutError

    async def _receive(self, size: int) -> bytes:
        try:
            return await self._stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _os_error(exc) from None

    async def receive_now(self, size: int) -> bytes | None:
        await trio.lowlevel.checkpoint()
        try:
            return self.socket.recv(size)  # non-blocking: what has arrived, if anything
        except BlockingIOError:
            return None

    def fileno(self) -> int:
        return self.socket.fileno()

    async def aclose(self) -> None:
        await self._stream.aclose()


class TrioBackend:
    """trio's sockets, clock and cancellation for one client."""

    def __init__(self, autostart: bool | None) -> None:
        if autostart:
            raise ValueError(NEVER_STARTS)

    async def connect(self, path: str) -> TrioStream:
        """Not `trio.open_unix_socket`: it takes a Unix socket's EAGAIN (the listen backlog
        is full) for "in progress" and hands back a socket that is not connected; this
        raises BlockingIOError instead, and the client waits for room."""
        await trio.lowlevel.checkpoint()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return TrioStream(sock)

    async def wait_readable(self, fd: int | None, timeout: float) -> None:
        """Until `fd` is readable, or `timeout` seconds (`fd` None: just the timeout)."""
        with trio.move_on_after(timeout):
            if fd is None:
                await trio.sleep_forever()
            await trio.lowlevel.wait_readable(fd)

    async def in_thread(self, call: Callable[[], T]) -> T:
        """Blocking file work, off the event loop (a log folder on a slow disk)."""
        return await trio.to_thread.run_sync(call)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def clock(self) -> float:
        return trio.current_time()

    def shield(self) -> trio.CancelScope:
        """A block that finishes even when its caller is cancelled (a `unit` reporting its end)."""
        return trio.CancelScope(shield=True)

    def may_start_agent(self) -> bool:
        return False

    async def start_agent(
        self, path: str, patience: float | None, because: str
    ) -> Autostarted | None:
        """Never called (`may_start_agent` is False): here so both backends offer one API."""
        raise RuntimeError(f"not starting an agent for {path}: {NEVER_STARTS}")


def _os_error(exc: trio.BrokenResourceError | trio.ClosedResourceError) -> OSError:
    """The OSError trio wrapped (or one saying what trio said): what both clients name."""
    if isinstance(exc.__cause__, OSError):
        return exc.__cause__
    return ConnectionError(str(exc) or type(exc).__name__)
