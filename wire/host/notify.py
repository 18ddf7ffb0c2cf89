"""sd_notify(3), the sending side: tell whoever started the agent that it is ready, or stopping.

Whoever started us (systemd with `Type=notify`, or a client that autostarted us) put a
datagram socket's address in `NOTIFY_SOCKET` (`@name` for the abstract namespace, else
a path) and waits for `READY=1`. The protocol is one datagram of newline-separated
`KEY=VALUE` lines, so it is written out here rather than taken from a library:
python-systemd needs libsystemd and a compiler, the small pure-Python packages are
unmaintained, and either would cost more than the few lines it saves. (`cli/run/notify.py`
is the receiving side of the same protocol, for `run --notify`.)

Error rules: notifying is best effort, as in sd_notify: a listener that has gone, or
whose queue is full, costs a warning in the log and never stops the agent. A send
never blocks (MSG_DONTWAIT), so it may run on trio's thread.

The variable is taken out of the environment when read (sd_notify's `unset_environment`),
so nothing the agent might run could speak for it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

ENV = "NOTIFY_SOCKET"

log = logging.getLogger("unitsync.agent")


class Notifier:
    """Sends sd_notify assignments to one address, or nowhere when none was given."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        return cls(environ.pop(ENV, None) or None)

    def ready(self, status: str) -> None:
        """State loaded and requests served: the starter may go on."""
        self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        """An orderly stop has begun (systemd then expects the process to exit)."""
        self.send("STOPPING=1", f"STATUS={status}")

    def send(self, *assignments: str) -> None:
        if not self.address:
            return
        target = _socket_address(self.address)
        if target is None:
            log.warning("cannot notify %s=%s: only @name and /path work", ENV, self.address)
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(assignments).encode(), socket.MSG_DONTWAIT, target)
        except (ConnectionRefusedError, FileNotFoundError):
            # A client that autostarted us listens only until READY=1: nobody to tell.
            log.debug("nobody listens at %s any more (%s)", self.address, assignments[0])
        except OSError as exc:
            log.warning("could not notify %s (%s): %s", self.address, assignments[0], exc)


def _socket_address(address: str) -> str | None:
    """The AF_UNIX address for `NOTIFY_SOCKET`: `@name` is abstract (a leading NUL)."""
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None  # vsock:..., which a workspace agent has no use for
