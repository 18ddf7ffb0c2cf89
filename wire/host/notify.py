"""sd_notify(3), both ends: the address, sending, a private receiving socket, reading datagrams.

Whoever starts a process puts a datagram socket's address in `NOTIFY_SOCKET` (`@name` for
the abstract namespace, else a path) and reads what the process sends there: one datagram
of newline-separated `KEY=VALUE` assignments at a time (`READY=1`, `STATUS=text`,
`STOPPING=1`). The protocol is written out here rather than taken from a library:
python-systemd needs libsystemd and a compiler, the small pure-Python packages are
unmaintained, and either would cost more than the few lines it saves.

Three users, each with its own policy on top (who may notify, what `READY=1` means):
the agent tells its starter that it serves or stops (`Notifier`); a client that started
an agent waits for `READY=1` from that agent's pid (`client/autostart.py`); `run --notify`
takes `READY=1` and `STATUS=` from its service's process tree
(`cli/run/readiness/notify_socket.py`).

Error rules: sending is best effort, as in sd_notify: a listener that has gone, or whose
queue is full, costs a line in the log and never stops the sender; a send never blocks
(MSG_DONTWAIT), so it may run on trio's thread. Receiving never blocks either: `received`
reads what is queued and returns. File descriptors passed in a datagram (SCM_RIGHTS) are
closed as they are read; nothing here keeps them.

Resource rules: `receiver`'s socket belongs to its caller, who closes it.
"""

from __future__ import annotations

import array
import logging
import os
import socket
from collections.abc import Iterator, MutableMapping

import msgspec

from .peer import CREDENTIALS

ENV = "NOTIFY_SOCKET"
DATAGRAM_SIZE = 4096
"""The longest datagram read whole (systemd's own messages are far shorter)."""
_ANCILLARY_SIZE = socket.CMSG_SPACE(CREDENTIALS.size) + socket.CMSG_SPACE(16 * 4)
"""Room for the sender's credentials and a few passed descriptors (to close them)."""

log = logging.getLogger("unitsync.notify")


# --- sending ---------------------------------------------------------------------------------


class Notifier:
    """Sends sd_notify assignments to one address, or nowhere when none was given."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """The address whoever started us gave; taken out of the environment when read
        (sd_notify's `unset_environment`), so nothing we might run could speak for us."""
        return cls(environ.pop(ENV, None) or None)

    def ready(self, status: str) -> None:
        """Loaded and serving: the starter may go on."""
        self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        """An orderly stop has begun (systemd then expects the process to exit)."""
        self.send("STOPPING=1", f"STATUS={status}")

    def send(self, *assignments: str) -> None:
        if not self.address:
            return
        target = socket_address(self.address)
        if target is None:
            log.warning("cannot notify %s=%s: only @name and /path work", ENV, self.address)
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(assignments).encode(), socket.MSG_DONTWAIT, target)
        except (ConnectionRefusedError, FileNotFoundError):
            # A client that started us listens only until READY=1: nobody to tell.
            log.debug("nobody listens at %s any more (%s)", self.address, assignments[0])
        except OSError as exc:
            log.warning("could not notify %s (%s): %s", self.address, assignments[0], exc)


def socket_address(address: str) -> str | None:
    """The AF_UNIX address for `NOTIFY_SOCKET`: `@name` is abstract (a leading NUL)."""
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None  # vsock:..., which a workspace agent has no use for


# --- receiving -------------------------------------------------------------------------------


def receiver(label: str) -> tuple[socket.socket, str]:
    """A datagram socket only its creator knows the name of, for NOTIFY_SOCKET: bound in the
    abstract namespace (no file to leave behind or to guess), non-blocking, and passing its
    senders' credentials (SCM_CREDENTIALS), so a receiver can check who sent what (anyone in
    the same network namespace can list abstract names).

    Returns the socket and its address as NOTIFY_SOCKET writes it (`@unitsync/...`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    name = f"unitsync/{label}/{os.getpid()}/{os.urandom(16).hex()}"
    sock.bind(f"\0{name}")
    return sock, f"@{name}"


class Datagram(msgspec.Struct, frozen=True):
    """One notification, and who sent it."""

    sender: int | None
    """The sending pid, as the kernel vouches for it (SCM_CREDENTIALS); None if not given."""
    fields: dict[str, str]
    truncated: bool
    """Longer than DATAGRAM_SIZE: `fields` holds only its beginning; best not acted on."""


def received(sock: socket.socket) -> Iterator[Datagram]:
    """Every datagram queued on `receiver`'s socket now, oldest first; stops when none is
    left (never waits)."""
    while True:
        try:
            data, ancillary, flags, _address = sock.recvmsg(DATAGRAM_SIZE, _ANCILLARY_SIZE)
        except BlockingIOError:
            return
        yield Datagram(_sender(ancillary), parse(data), bool(flags & socket.MSG_TRUNC))


def parse(datagram: bytes) -> dict[str, str]:
    """sd_notify's format: newline-separated KEY=VALUE assignments (the last one wins)."""
    fields = {}
    for line in datagram.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


def _sender(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The sending pid from SCM_CREDENTIALS; descriptors passed along are closed."""
    pid = None
    for level, kind, data in ancillary:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_CREDENTIALS:
            pid = CREDENTIALS.unpack(data[: CREDENTIALS.size])[0]
        elif kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)
    return pid
