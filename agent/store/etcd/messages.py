"""etcd's v3 JSON gateway, as msgspec types: what goes in a request body and comes out of a reply.

The gateway speaks protobuf's JSON mapping, which differs from plain JSON in three ways
these types absorb:

- keys and values are base64 strings: `bytes` fields (msgspec encodes and decodes base64);
- 64-bit integers (revisions, lease ids, counts) arrive as JSON strings: replies are decoded
  with `strict=False`, which turns "42" into 42;
- fields at their default value (0, false, "", empty lists, `PUT` events) are left out:
  every field here has the same default.

No I/O here: `client.py` sends these, `store.py` builds and reads them. Only the fields
unitsync uses are declared; the rest of each reply is skipped by the decoder.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec

T = TypeVar("T")

# --- requests ------------------------------------------------------------------------------


class Request(msgspec.Struct, omit_defaults=True):
    """Request bodies leave out default values, as protobuf's own JSON encoder does."""


class RangeRequest(Request):
    key: bytes
    range_end: bytes = b""
    """With it, every key in [key, range_end); `prefix_end(key)` for a whole prefix."""
    limit: int = 0
    revision: int = 0
    """Read as of this revision (0: the latest)."""
    sort_order: Literal["NONE", "ASCEND", "DESCEND"] = "NONE"
    sort_target: Literal["KEY", "VERSION", "CREATE", "MOD", "VALUE"] = "KEY"
    keys_only: bool = False
    count_only: bool = False


class PutRequest(Request):
    key: bytes
    value: bytes = b""
    lease: int = 0


class DeleteRangeRequest(Request):
    key: bytes
    range_end: bytes = b""


class Compare(Request):
    key: bytes
    target: Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
    result: Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"] = "EQUAL"
    mod_revision: int = 0
    create_revision: int = 0
    range_end: bytes = b""
    """With it, the comparison must hold for every key in [key, range_end)."""


class Op(Request):
    """One operation of a transaction's branch: set exactly one field."""

    request_range: RangeRequest | None = None
    request_put: PutRequest | None = None
    request_delete_range: DeleteRangeRequest | None = None


class TxnRequest(Request):
    compare: list[Compare] = []
    success: list[Op] = []
    failure: list[Op] = []


class CompactionRequest(Request):
    revision: int


class LeaseGrantRequest(Request):
    TTL: int
    """Seconds (the gateway's spelling)."""


class AuthenticateRequest(Request):
    name: str
    password: str


class WatchCreateRequest(Request):
    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    progress_notify: bool = False
    """Ask for a reply with no events every so often (etcd's
    --experimental-watch-progress-notify-interval, 10 minutes by default): proof of life,
    and a promise that every event up to its header's revision was sent."""
    filters: list[Literal["NOPUT", "NODELETE"]] = []


class WatchRequest(Request):
    create_request: WatchCreateRequest


# --- replies -------------------------------------------------------------------------------


class Header(msgspec.Struct):
    revision: int = 0
    """The store's revision when the reply was made."""


class KeyValue(msgspec.Struct):
    key: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""
    lease: int = 0


class RangeResponse(msgspec.Struct):
    header: Header = msgspec.field(default_factory=Header)
    kvs: list[KeyValue] = []
    more: bool = False
    count: int = 0


class ResponseOp(msgspec.Struct):
    response_range: RangeResponse | None = None


class TxnResponse(msgspec.Struct):
    header: Header = msgspec.field(default_factory=Header)
    succeeded: bool = False
    responses: list[ResponseOp] = []


class LeaseGrantResponse(msgspec.Struct):
    ID: int = 0
    TTL: int = 0
    error: str = ""


class AuthenticateResponse(msgspec.Struct):
    token: str = ""


class Event(msgspec.Struct):
    kv: KeyValue
    type: Literal["PUT", "DELETE"] = "PUT"


class WatchResponse(msgspec.Struct):
    header: Header = msgspec.field(default_factory=Header)
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    """Set on a cancelled watch whose start revision was compacted away: list again."""
    cancel_reason: str = ""
    events: list[Event] = []

    @property
    def is_progress(self) -> bool:
        """A progress notification: every event up to `header.revision` has been sent."""
        return not (self.events or self.created or self.canceled or self.compact_revision)


class StreamError(msgspec.Struct):
    """An error in the middle of a streamed reply (grpc-gateway's shape)."""

    grpc_code: int = 0
    message: str = ""


class WatchMessage(msgspec.Struct):
    """One line of the watch stream: a result or an error."""

    result: WatchResponse | None = None
    error: StreamError | None = None


class ErrorReply(msgspec.Struct):
    """The body of a non-200 reply: etcd's message and its gRPC status code."""

    code: int = 0
    message: str = ""
    error: str = ""


# gRPC status codes the client acts on.
CANCELLED = 1
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
OUT_OF_RANGE = 11
UNAVAILABLE = 14
UNAUTHENTICATED = 16


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes a range cover every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


encode = msgspec.json.Encoder().encode


def decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    """A reply decoder: lax, so that 64-bit integers sent as strings become ints."""
    return msgspec.json.Decoder(kind, strict=False)
