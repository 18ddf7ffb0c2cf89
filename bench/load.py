"""A lean load generator: many connections served by one selector loop in one thread.

The durable-throughput figure is the agent's. Sixty-four trio clients in one process
take about half a core to drive the agent, on the same two cores; this loop takes a
fifth of that, so the figure measures the agent rather than its load generator.
"""

from __future__ import annotations

import selectors
import socket
import time
from pathlib import Path

from unitsync.wire.framing import decode_reply, encode, take_frame
from unitsync.wire.protocol import PROTOCOL_VERSION, Fail, Hello, Ok, Welcome


class Connection:
    """One client: a socket, its read buffer, and how many acks it has had."""

    def __init__(self, path: Path, unit: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.unit = unit
        self.buffer = bytearray()
        self.acks = 0
        self.sock.sendall(encode(Hello(PROTOCOL_VERSION)))
        while (reply := self._next_reply()) is None:
            self.buffer += self.sock.recv(65536)
        if not isinstance(reply, Welcome):
            raise RuntimeError(f"the agent did not welcome the client: {reply}")
        self.sock.setblocking(False)

    def send_fail(self) -> None:
        # `force`: the first fail declares the unit (a name no command has named is refused
        # as a likely typo); failed -> failed is the same move with or without it.
        self.sock.sendall(encode(Fail(self.unit, f"round {self.acks}", force=True)))

    def receive_acks(self) -> int:
        """Read what arrived; the acks it completes (each answered by the next request)."""
        self.buffer += self.sock.recv(65536)
        acks = 0
        while (reply := self._next_reply()) is not None:
            if not isinstance(reply, Ok):
                raise RuntimeError(f"the agent refused a fail: {reply}")
            acks += 1
            self.acks += 1
            self.send_fail()
        return acks

    def _next_reply(self) -> object | None:
        body = take_frame(self.buffer)
        return None if body is None else decode_reply(body)


def fail_loop(path: Path, clients: int, seconds: float, names: str = "t") -> int:
    """Each of `clients` connections sends `fail`, awaits its ack, repeats; acks counted.

    Client i fails unit `{names}{i}`: agents sharing a graph get different `names`."""
    connections = [Connection(path, f"{names}{i}") for i in range(clients)]
    acks = 0
    with selectors.DefaultSelector() as selector:
        for connection in connections:
            selector.register(connection.sock, selectors.EVENT_READ, connection)
            connection.send_fail()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for key, _events in selector.select(timeout=1.0):
                acks += key.data.receive_acks()
    for connection in connections:
        connection.sock.close()
    return acks
