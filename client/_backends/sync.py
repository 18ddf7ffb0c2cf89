"""The blocking client's I/O: plain sockets, `time`, and starting an agent (SPEC §7). No trio.

Its waits have bounds of their own, since a script has no cancellation to bound them with:
CONNECT_TIMEOUT, REPLY_TIMEOUT and `start`'s START_WAIT.

A call that finds no agent at the socket starts one (`unitsync.client.autostart`, loaded
only then), unless `autostart=False`, or it is None and UNITSYNC_AUTOSTART=0; when and why
is the client's rule (`Client._connect`).

Resource rules: a `SyncStream` owns its socket, closed by `close()`. Errors: the socket's
own OSError (TimeoutError once a wait passed its bound), as `_backends` says.
"""

from __future__ import annotations

import _socket
import contextlib
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..retry import DEFAULT_WAIT

if TYPE_CHECKING:
    from ..autostart import Autostarted

T = TypeVar("T")

CLIENT_NAME = "python"
"""What a blocking client calls itself in its hello unless told (the CLI says "cli")."""
CONNECT_TIMEOUT: float | None = 5.0
"""A local agent accepts at once, even while it loads its journal (the backlog holds us):
a connect that takes longer means the agent is hung."""
REPLY_TIMEOUT: float | None = 30.0
"""Every reply but a `start`'s or a watch's is computed at once and written after one fsync:
thirty seconds without one means the agent (or its disk) is stuck, and a script should
hear so rather than hang."""
START_WAIT: float | None = DEFAULT_WAIT
"""A `start` waits five minutes unless told: a script whose dependency never comes should
end saying so, not hang unseen."""

Callback = Callable[[T], None]
"""A caller's callback (`on_progress`, `on_unreachable`, `on_graph_changed`): a plain call."""


class SyncStream:
    """One connected socket, in blocking mode with a timeout per wait.

    The C socket object (`_socket`) is all this needs; the `socket` module around it builds
    its enums and imports `selectors` when imported: 2 ms of a 35 ms call of the CLI."""

    def __init__(self, sock: _socket.socket) -> None:
        self.socket = sock

    def send_all(self, data: bytes) -> None:
        self.socket.sendall(data)

    def receive(self, size: int, timeout: float | None) -> bytes:
        self.socket.settimeout(timeout)
        return self.socket.recv(size)

    def receive_now(self, size: int) -> bytes | None:
        timeout = self.socket.gettimeout()
        self.socket.settimeout(0.0)  # (with a timeout, Python would wait for data first)
        try:
            return self.socket.recv(size)
        except BlockingIOError:
            return None
        finally:
            self.socket.settimeout(timeout)

    def fileno(self) -> int:
        return self.socket.fileno()

    def close(self) -> None:
        self.socket.close()


class SyncBackend:
    """Plain sockets and `time` for one client, and its `autostart` choice."""

    def __init__(self, autostart: bool | None) -> None:
        self.autostart = autostart

    def connect(self, path: str) -> SyncStream:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return SyncStream(sock)

    def wait_readable(self, fd: int | None, timeout: float) -> None:
        """Until `fd` is readable, or `timeout` seconds (`fd` None: just the timeout)."""
        if fd is None:
            time.sleep(timeout)
        else:
            select.select([fd], [], [], timeout)

    def in_thread(self, call: Callable[[], T]) -> T:
        """Blocking file work: here, simply done."""
        return call()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def clock(self) -> float:
        return time.monotonic()

    def shield(self) -> contextlib.AbstractContextManager[object]:
        """Nothing cancels a blocking call half way: nothing to shield from."""
        return contextlib.nullcontext()

    def may_start_agent(self) -> bool:
        if self.autostart is not None:
            return self.autostart
        from ..agent_switch import autostart_enabled  # the rare path: a call that found none

        return autostart_enabled()

    def start_agent(self, path: str, patience: float | None, because: str) -> Autostarted | None:
        """Start an agent for `path` (or find the one another client started): what was
        started, and `because` (why), for `on_autostart`; None if another did. Wait at most
        `patience` seconds for a live agent that holds the socket (None: autostart's own)."""
        import dataclasses  # (loaded by autostart anyway; the CLI's usual path needs neither)
        from pathlib import Path

        from ..autostart import LIVE_AGENT_WAIT, ensure_agent

        started = ensure_agent(Path(path), LIVE_AGENT_WAIT if patience is None else patience)
        return None if started is None else dataclasses.replace(started, because=because)
