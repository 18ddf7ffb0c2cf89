"""`--notify`: a private sd_notify socket; `READY=1` from the service's process tree.

The protocol is systemd's (sd_notify(3)), spoken by `wire.host.notify`: the service finds
a datagram socket's address in `NOTIFY_SOCKET` (`@name` for the abstract namespace) and
sends newline-separated `KEY=VALUE` assignments. What they mean to `run` is here: `READY=1`
makes it ready; `STATUS=text` says what it is doing (the unit's reason while it starts).
Every other assignment is accepted and ignored.

Trust: the socket is in the abstract namespace under an unguessable name, but anyone in
the same network namespace can list such names, so each datagram's sender is checked
with SCM_CREDENTIALS (the kernel fills them in; a sender cannot forge another pid
without CAP_SYS_ADMIN). It must be the service or one of its descendants (its parent
chain in /proc leads to the service); others are refused and named on stderr. As with
systemd, a sender that has exited before its datagram is read cannot be placed in the
tree (the service itself always can: `run` has not reaped it yet), so a short-lived
helper such as `systemd-notify` should be `exec`'d, or the service should notify itself.

Resource rules: `NotifyReady` owns its socket, from `child_options` to `finish`;
file descriptors passed in a datagram (SCM_RIGHTS) are closed at once (`notify.received`).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from unitsync.wire.host import notify
from unitsync.wire.host.processes import descends_from

from ...say import say
from ..children import Child, Exits
from ..reactor import Reactor
from .detector import Listener

STATUS_LIMIT = 1024
"""Bytes of a STATUS= text kept as the unit's reason: a line for `status`, not a log."""
REFUSALS_SHOWN = 10
"""Refused senders named on stderr; a flood of them is not copied to the terminal."""


class NotifyReady:
    """Ready on `READY=1` from the service's process tree; `STATUS=` passed on."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.address = ""
        self.service_pid = 0
        self.listener: Listener | None = None
        self.reactor: Reactor | None = None
        self.waiting = True
        self.last_status = ""
        self.refused: set[int] = set()

    def child_options(self) -> dict[str, Any]:
        self.sock, self.address = notify.receiver("run")
        return {"env": {**os.environ, notify.ENV: self.address}}

    def begin(self, reactor: Reactor, exits: Exits, service: Child, listener: Listener) -> None:
        assert self.sock is not None
        self.reactor, self.listener, self.service_pid = reactor, listener, service.pid
        reactor.add_reader(self.sock.fileno(), self._receive)

    def stop(self) -> None:
        # Keep reading (a service may send STATUS= or WATCHDOG=1 for as long as it runs, and
        # a socket nobody reads fills up and blocks it), but act on nothing more.
        self.waiting = False

    def waiting_for(self) -> str:
        status = f" (its last STATUS: {self.last_status})" if self.last_status else ""
        return f"no READY=1 on {notify.ENV}{status}"

    def finish(self) -> None:
        if self.sock is not None:
            if self.reactor is not None:
                self.reactor.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    # --- internals ------------------------------------------------------------------------

    def _receive(self) -> None:
        """Read every queued datagram; act on the last STATUS= and on READY=1."""
        assert self.sock is not None and self.listener is not None
        status, ready_from = None, None
        for datagram in notify.received(self.sock):
            pid = datagram.sender
            if not self.waiting or not self._trusted(pid):
                continue
            if datagram.truncated:
                say(
                    f"unitsync: ignored a notification from pid {pid}: longer than "
                    f"{notify.DATAGRAM_SIZE} bytes"
                )
                continue
            fields = datagram.fields
            if "STATUS" in fields:
                text = fields["STATUS"].encode()[:STATUS_LIMIT].decode("utf-8", "ignore")
                status = self.last_status = text
            if fields.get("READY") == "1":
                ready_from = pid
        if status is not None and ready_from is None:  # ready clears the reason anyway
            self.listener.status_text(status)
        if ready_from is not None:
            who = "the service" if ready_from == self.service_pid else f"pid {ready_from}"
            self.listener.ready(f"READY=1 from {who}")

    def _trusted(self, pid: int | None) -> bool:
        if pid == self.service_pid:
            return True
        verdict = None if pid is None else descends_from(pid, self.service_pid)
        if verdict:
            return True
        key = pid or 0
        if key not in self.refused and len(self.refused) < REFUSALS_SHOWN:
            self.refused.add(key)
            why = (
                "it is neither the service nor one of its descendants"
                if verdict is False
                else "it exited before it could be checked (notify from the service itself, "
                "or `exec` the notifying helper)"
            )
            say(f"unitsync: ignored a notification from pid {pid}: {why}")
        return False
