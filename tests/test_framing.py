"""Frame bodies (`wire/framing.py`): a reply decodes to what was sent, whichever decoder reads it.

A script's calls decode their replies with a decoder of the few types they get
(`SHORT_REPLY`), cheaper to build; every other reply falls through to the whole `Reply`'s.
Both must agree on every reply, and a script's call must never need the whole one.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitsync.wire import framing
from unitsync.wire.errors import ProtocolError
from unitsync.wire.framing import SHORT_REPLY, decode_reply, encode
from unitsync.wire.protocol import Reply

REPLY_TYPES = typing.get_args(Reply)


@pytest.fixture(autouse=True)
def fresh_decoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a new process: no decoder built yet."""
    monkeypatch.setattr(framing, "_decoders", {})


def _of(kind: object) -> st.SearchStrategy[Any]:
    """Values of a type the protocol uses: each field of a struct given (so none is left to
    a default factory), ints within msgpack's 64 bits, lists short."""
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        fields = {
            f.name: st.deferred(lambda f=f: _of(f.type)) for f in msgspec.structs.fields(kind)
        }
        return st.builds(kind, **fields)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list:
        return st.lists(_of(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(_of(args[0]), _of(args[1]), max_size=3)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_of(arg) for arg in args])
    if kind is int:
        return st.integers(-(2**63), 2**64 - 1)
    if kind is type(None):
        return st.none()
    return st.from_type(kind)  # type: ignore[arg-type]


def _body(reply: msgspec.Struct) -> bytes:
    return encode(reply)[framing.HEADER.size :]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(REPLY_TYPES).flatmap(_of))
def test_every_reply_decodes_to_what_was_sent(reply: msgspec.Struct) -> None:
    body = _body(reply)
    for decoded in (decode_reply(body), msgspec.msgpack.Decoder(Reply).decode(body)):
        assert type(decoded) is type(reply)
        assert msgspec.msgpack.encode(decoded) == body  # (as bytes: a NaN is not equal to itself)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(typing.get_args(SHORT_REPLY)).flatmap(_of))
def test_a_scripts_replies_never_build_the_whole_decoder(reply: msgspec.Struct) -> None:
    framing._decoders.clear()
    decode_reply(_body(reply))
    assert set(framing._decoders) == {"short reply"}


@pytest.mark.parametrize(
    "body",
    [
        msgspec.msgpack.encode({"op": "no such reply"}),
        msgspec.msgpack.encode({"op": "pong", "agent": 5}),
        msgspec.msgpack.encode({"op": "status", "units": "not a list"}),
        b"\xc1",
        b"",
    ],
)
def test_a_body_that_is_no_reply_is_named_by_the_whole_decoder(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="invalid reply") as raised:
        decode_reply(body)
    try:
        msgspec.msgpack.Decoder(Reply).decode(body)
    except (msgspec.DecodeError, ValueError) as exc:
        assert str(exc) in str(raised.value)
