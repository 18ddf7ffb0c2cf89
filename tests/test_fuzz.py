"""Protocol fuzzing against a live agent process, interleaved with a well-behaved client.

Whatever a peer sends, the agent answers each complete frame with a reply (an
error for anything invalid) or closes the connection; it never dies, never logs
a traceback, and the well-behaved client's answers stay right. Bodies include
what msgspec's own encoder cannot produce: strings that are not UTF-8, truncated
and overlong msgpack, wrong types and unknown tags.
"""

from __future__ import annotations

import itertools
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unitsync.agent.serve.server import AgentConfig
from unitsync.client import Client
from unitsync.wire.framing import MAX_FRAME, decode_reply, encode
from unitsync.wire.protocol import PROTOCOL_VERSION, Error, Hello, Ping

from conftest import AgentProcess

OPS = ["hello", "ping", "want", "start", "complete", "fail", "reset", "status", "watch", "bogus"]
FIELDS = ["unit", "deps", "rerun", "force", "reason", "token", "version", "client", "extra"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
requests = st.fixed_dictionaries({"op": st.sampled_from(OPS)}) | st.dictionaries(
    st.sampled_from(["op", *FIELDS]), values, max_size=5
)


def raw_str(data: bytes) -> bytes:
    """A msgpack str holding `data` as is (msgspec would refuse to encode invalid UTF-8)."""
    return bytes([0xDB]) + struct.pack(">I", len(data)) + data


def raw_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return bytes([0xDF]) + struct.pack(">I", len(pairs)) + b"".join(k + v for k, v in pairs)


invalid_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"a\x80b"])
"""Bytes no UTF-8 decoder accepts: a bad start byte, a bad continuation, a cut sequence,
a surrogate, a lone continuation byte."""
hostile_values = st.one_of(
    invalid_utf8.map(raw_str),
    values.map(msgspec.msgpack.encode),
    st.lists(invalid_utf8.map(raw_str), min_size=1, max_size=3).map(
        lambda items: bytes([0x90 | len(items)]) + b"".join(items)
    ),
)
hostile_maps = st.builds(
    lambda op, pairs: raw_map([(raw_str(b"op"), op), *pairs]),
    st.sampled_from(OPS).map(lambda op: msgspec.msgpack.encode(op)) | invalid_utf8.map(raw_str),
    st.lists(
        st.tuples(
            st.sampled_from(FIELDS).map(lambda f: msgspec.msgpack.encode(f))
            | invalid_utf8.map(raw_str),
            hostile_values,
        ),
        max_size=4,
    ),
)
"""Requests with strings that are not UTF-8 anywhere: the tag, a key, a value, a list item."""
mangled = st.builds(
    lambda body, cut, extra: body[:cut] if cut < len(body) else body + extra,
    requests.map(msgspec.msgpack.encode) | hostile_maps,
    st.integers(0, 40),
    st.binary(min_size=1, max_size=8),
)
"""Truncated bodies and bodies with bytes after their end (overlong)."""

bodies = (
    requests.map(msgspec.msgpack.encode)
    | hostile_maps
    | mangled
    | st.builds(
        lambda op, fields: msgspec.msgpack.encode({"op": op, **fields}),
        st.sampled_from(OPS),
        st.dictionaries(st.sampled_from(FIELDS), values, max_size=4),
    )
    | st.binary(min_size=1, max_size=64)
)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


actions = st.one_of(
    st.tuples(st.just("frame"), bodies),  # a complete frame with any content
    st.tuples(st.just("truncated"), bodies, st.integers(1, 8)),  # part of a frame, then hang up
    st.tuples(st.just("oversize"), st.integers(MAX_FRAME + 1, 2**32 - 1)),
    st.tuples(st.just("hello"), st.integers(0, 3)),  # right or wrong version, maybe twice
)


class BadPeer:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2)
        self.sock.connect(str(path))
        self.buffer = b""

    def reply(self) -> object | None:
        """The next reply; None if the agent closed the connection or is rightly waiting.

        A random frame can be a valid `start` that waits or a `watch` that streams.
        """
        while (
            len(self.buffer) < 4 or len(self.buffer) < 4 + struct.unpack(">I", self.buffer[:4])[0]
        ):
            try:
                chunk = self.sock.recv(1 << 16)
            except (ConnectionResetError, TimeoutError):
                return None
            if not chunk:
                return None
            self.buffer += chunk
        size = struct.unpack(">I", self.buffer[:4])[0]
        body, self.buffer = self.buffer[4 : 4 + size], self.buffer[4 + size :]
        return decode_reply(body)  # the agent's own frames always decode

    def act(self, action: tuple) -> bool:
        """Do one thing; False once the connection is over."""
        kind = action[0]
        try:
            if kind == "frame":
                self.sock.sendall(frame(action[1]))
            elif kind == "hello":
                self.sock.sendall(encode(Hello(PROTOCOL_VERSION + action[1] % 2)))
            elif kind == "truncated":
                self.sock.sendall(frame(action[1])[: action[2]])
                return False
            else:
                self.sock.sendall(struct.pack(">I", action[1]))
        except (BrokenPipeError, ConnectionResetError):
            return False
        reply = self.reply()
        if reply is None:
            return False
        if kind == "oversize":
            assert isinstance(reply, Error) and "limit" in reply.message
        return True


@pytest.fixture(scope="module")
def live_agent() -> Iterator[AgentProcess]:
    """One agent for every example (short socket path: mkdtemp, not pytest's long tmp)."""
    base = Path(tempfile.mkdtemp(prefix="us-fuzz-"))
    agent = AgentProcess(AgentConfig(base / "run" / "agent.sock", base / "state")).start()
    yield agent
    code, log = agent.stop()
    assert code == 0
    assert "Traceback" not in log and " ERROR " not in log, log


counter = itertools.count()


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI failures reproduce
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(script=st.lists(actions, min_size=1, max_size=6))
def test_bad_peers_never_disturb_the_agent_or_anyone_else(
    live_agent: AgentProcess, script: list[tuple]
) -> None:
    path = live_agent.config.socket
    peer = BadPeer(path)
    try:
        for action in script:
            if not peer.act(action):
                break
            with Client(path) as good:  # a well-behaved client, between every bad step
                n = next(counter)
                good.want(f"good-{n}", "base")
                [view] = good.status(f"good-{n}")
                assert [d.unit for d in view.dependencies] == ["base"]
    finally:
        peer.sock.close()
    assert live_agent.proc is not None and live_agent.proc.poll() is None, "the agent died"
    with Client(path) as good:
        assert good.ping().pid == live_agent.proc.pid


def test_requests_before_the_hello_are_refused(live_agent: AgentProcess) -> None:
    peer = BadPeer(live_agent.config.socket)
    peer.sock.sendall(encode(Ping()))
    error = peer.reply()
    assert isinstance(error, Error) and "hello" in error.message
    assert peer.reply() is None


HOSTILE = {
    "tag not UTF-8": raw_map([(raw_str(b"op"), raw_str(b"\xff"))]),
    "unit not UTF-8": raw_map(
        [
            (raw_str(b"op"), raw_str(b"want")),
            (raw_str(b"unit"), raw_str(b"\xc3\x28")),
            (raw_str(b"deps"), msgspec.msgpack.encode(["a"])),
        ]
    ),
    "key not UTF-8": raw_map(
        [(raw_str(b"op"), raw_str(b"ping")), (raw_str(b"\xed\xa0\x80"), b"\x01")]
    ),
    "list item not UTF-8": raw_map(
        [
            (raw_str(b"op"), raw_str(b"want")),
            (raw_str(b"unit"), raw_str(b"a")),
            (raw_str(b"deps"), b"\x91" + raw_str(b"a\x80b")),
        ]
    ),
    "truncated": msgspec.msgpack.encode({"op": "want", "unit": "a", "deps": ["b"]})[:-1],
    "overlong": msgspec.msgpack.encode({"op": "ping"}) + b"\x00\x00",
    "a string longer than the frame": b"\x81" + raw_str(b"op")[:5] + b"\xff\xff",
    "wrong types": msgspec.msgpack.encode({"op": "want", "unit": 5, "deps": "x"}),
    "unknown tag": msgspec.msgpack.encode({"op": "teleport"}),
    "deep nesting": b"\x91" * 100_000 + b"\x00",
}
"""Frames that once escaped the protocol's error path (issue 9), and their neighbours."""


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("when", ["as the hello", "after the hello"])
def test_every_undecodable_frame_gets_a_protocol_error(
    live_agent: AgentProcess, body: bytes, when: str
) -> None:
    peer = BadPeer(live_agent.config.socket)
    if when == "after the hello":
        peer.sock.sendall(encode(Hello(PROTOCOL_VERSION)))
        assert peer.reply() is not None  # the welcome
    peer.sock.sendall(frame(body))
    error = peer.reply()
    assert isinstance(error, Error), error
    assert error.code == "protocol" and error.message.startswith("invalid request: ")
    if when == "after the hello":  # the frame boundary is intact: the connection goes on
        peer.sock.sendall(encode(Ping()))
        assert type(peer.reply()).__name__ == "Pong"
    peer.sock.close()
