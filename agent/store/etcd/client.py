"""An etcd v3 client for trio, without threads: the JSON gateway through httpx.

Resources: `EtcdClient` owns two `httpx.AsyncClient`s, closed in `aclose`: a small pool of
keep-alive HTTP/1.1 connections for unary calls (range, txn, compaction, lease grant) and
one for watches, each a streamed reply held open on one member until it breaks. TCP
keepalive is on, so a peer that vanished without a word is noticed. A unary call tries the
members in turn, starting with the last one that answered (or the one after the last that
failed). It may be given a `deadline` (trio time): the whole call, every member included,
ends by then, each member getting at most `request_timeout` of what is left.

A member cut off by the network says nothing at all (no reset, no error), so a unary call
does not wait for one member's time to run out before trying the next: a member that has
not answered within the hedge delay (`HEDGE_FLOOR`, or `HEDGE_FACTOR` times the typical
answer if longer) gets company, the same request sent to the next member too, and the first
answer wins (the others are cancelled). Only idempotent requests are sent: reads, and txns
whose compares let at most one copy commit (the etcd store's change keys). Unary calls ask
for a member with a leader (`hasleader`), so a member cut off from the others answers "no
leader" at once instead of holding the request until etcd's own timeout.

Errors (all `EtcdError`; the message names each member tried and what it said):

- `EtcdUnavailable`: no member answered in time, or each one said it cannot serve now (no
  leader, timed out, too many requests). `maybe_applied` is true when a request may have
  reached etcd all the same (the connection broke after sending, no answer came before the
  member's time or the call's deadline ran out, or etcd timed out a proposal; not when a
  member said it has no leader, which it says before taking a request): a write is then
  ambiguous, and only an idempotent one may be sent again.
- `EtcdCompacted`: the revision asked for was removed by a compaction; list again.
- `EtcdRefused`: an answer another member would repeat (permission denied, bad
  credentials, a request too large, a lease that expired): retrying does not help.

A watch asks for progress notifications and takes them as its sign of life: it has no read
timeout while events are merely rare, but one that shows nothing at all, not even a
notification, for `silence` seconds is given up, as is one whose member loses its leader
(the `hasleader` metadata makes etcd cancel it). With a user and password the client fetches
a token before its first call and again whenever etcd says the token is no longer valid.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

import httpx
import msgspec
import trio

from .messages import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    OUT_OF_RANGE,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    AuthenticateRequest,
    AuthenticateResponse,
    CompactionRequest,
    ErrorReply,
    LeaseGrantRequest,
    LeaseGrantResponse,
    RangeRequest,
    RangeResponse,
    Request,
    StreamError,
    TxnRequest,
    TxnResponse,
    WatchCreateRequest,
    WatchMessage,
    WatchRequest,
    WatchResponse,
    decoder,
    encode,
)

T = TypeVar("T")

REQUEST_TIMEOUT = 5.0
"""A member that has not answered a unary call in this long is presumed stuck and the call
moves on to the next, if its deadline leaves time (etcd gives up on a proposal after ~7 s)."""
CONNECT_TIMEOUT = 2.0
"""Connecting is one round trip: a member this slow to accept is as good as down."""
KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
]
"""A connection whose peer vanished (host down, cable cut) fails within about 25 s."""
CALLS = httpx.Limits(max_connections=8, max_keepalive_connections=8)
"""Unary calls in flight at once; more wait for a connection. HTTP/1.1 needs one connection
per call in flight, and httpcore's pool does work quadratic in its connections on every
call: with 32 connections the pool, not etcd, was the agent's main cost. Eight calls of
4 ms each in flight carry 2,000 calls/s, several times what a cluster commits."""
WATCHES = httpx.Limits(max_connections=4, max_keepalive_connections=0)
"""Watches: one at a time, and one being replaced."""
RETRY_ELSEWHERE = frozenset({CANCELLED, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED})
"""gRPC codes meaning "not this member, not now": another member may serve the call (a
member shutting down cancels what its gateway was forwarding)."""
SENDING = "http11.send_request_headers.started"
"""httpcore's trace event for the first byte of a request leaving: before it (waiting for a
connection, connecting), nothing can have reached etcd, whatever ends the attempt."""
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
"""Makes etcd cancel a watch whose member has lost its leader (it would go quiet, not fail),
and refuse a unary call at once on such a member (it would hold it until its own timeout)."""
NOT_TAKEN = ("no leader", "too many requests")
"""What a member answers before it takes a request (etcd's `ErrGRPCNoLeader`, and its
guard against a backlog of applies): nothing can have been applied."""
HEDGE_FLOOR = 0.25
"""A member that has not answered a unary call within this long (or within HEDGE_FACTOR
times the typical answer, if that is longer) gets company: the request goes to the next
member too. Tens of times a quiet cluster's answer; a member cut off costs this, not the
member's whole `request_timeout`."""
HEDGE_FACTOR = 8.0
"""On a machine so busy that answers take a large part of HEDGE_FLOOR, hedge later rather
than double the load (and the delay) of every call."""
TYPICAL_WEIGHT = 0.05
"""Weight of each answer's time in the typical (moving average) answer time."""


class EtcdError(Exception):
    """A request to etcd failed; the message says where and why."""


class EtcdUnavailable(EtcdError):
    def __init__(self, failures: list[str], maybe_applied: bool) -> None:
        super().__init__("; ".join(failures))
        self.failures = failures
        self.maybe_applied = maybe_applied


class EtcdRefused(EtcdError):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class EtcdCompacted(EtcdError):
    def __init__(self, message: str, revision: int = 0) -> None:
        super().__init__(message)
        self.revision = revision
        """The compaction's revision, when etcd said it (a cancelled watch does)."""


_RANGE = decoder(RangeResponse)
_TXN = decoder(TxnResponse)
_LEASE = decoder(LeaseGrantResponse)
_AUTH = decoder(AuthenticateResponse)
_WATCH = decoder(WatchMessage)
_ERROR = decoder(ErrorReply)
_IGNORED = decoder(msgspec.Raw)


class EtcdClient:
    def __init__(
        self,
        endpoints: tuple[str, ...],
        *,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        user: str | None = None,
        password: str | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        tls = ca is not None or cert is not None
        self.endpoints = endpoints
        self._urls = [f"{'https' if tls else 'http'}://{endpoint}" for endpoint in endpoints]
        verify = _tls_context(ca, cert, key) if tls else True
        self._request_timeout = request_timeout
        timeout = httpx.Timeout(request_timeout, connect=CONNECT_TIMEOUT)
        self._http, self._watch_http = (
            httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(
                    verify=verify, limits=limits, socket_options=KEEPALIVE
                ),
                timeout=timeout,
            )
            for limits in (CALLS, WATCHES)
        )
        self._first = 0
        """The member unary calls try first: the last one that answered, or the one after
        the last that failed (so a hung member does not take every call's time in turn)."""
        self._watch_first = 0
        """The member the next watch tries first: not the one whose watch just broke."""
        self._typical = 0.0
        """A moving average of the time unary calls took to be answered (seconds)."""
        self._watching: tuple[int, float] | None = None
        """The member the current watch follows, and since when (trio time)."""
        self._silent: dict[int, float] = {}
        """Members that did not answer a unary call another member answered, and when."""
        self._credentials = AuthenticateRequest(user, password or "") if user else None
        self._token: str | None = None
        self._auth_lock = trio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._watch_http.aclose()

    # --- unary calls ---------------------------------------------------------------------------

    async def range(self, request: RangeRequest, *, deadline: float = math.inf) -> RangeResponse:
        return await self._call("/v3/kv/range", request, _RANGE, deadline)

    async def txn(self, request: TxnRequest, *, deadline: float = math.inf) -> TxnResponse:
        return await self._call("/v3/kv/txn", request, _TXN, deadline)

    async def compact(self, revision: int) -> None:
        await self._call("/v3/kv/compaction", CompactionRequest(revision), _IGNORED, math.inf)

    async def grant_lease(self, ttl: int, *, deadline: float = math.inf) -> int:
        """A new lease that lives `ttl` seconds; its id."""
        reply = await self._call("/v3/lease/grant", LeaseGrantRequest(ttl), _LEASE, deadline)
        if reply.error:
            raise EtcdRefused(f"etcd granted no lease: {reply.error}")
        return reply.ID

    async def _call(
        self, path: str, body: Request, reply: msgspec.json.Decoder[T], deadline: float
    ) -> T:
        """The first answer from a member, each tried in turn and the next one also tried
        (hedged) while a member is slow to answer; every attempt ends by `deadline`."""
        content = encode(body)
        first = self._first
        order = iter(_rotation(first, len(self._urls)))
        failures: dict[int, str] = {}
        """What each member tried said, by index."""
        maybe_applied = False
        send, receive = trio.open_memory_channel[_Outcome](math.inf)
        running = 0
        outcome: _Outcome | None = None
        async with trio.open_nursery() as attempts:

            def next_member() -> None:
                """Send the request to the next member that can still be tried, if any."""
                nonlocal running
                for index in order:
                    if trio.current_time() >= deadline:
                        failures[index] = "not tried, no time left"
                        continue
                    attempts.start_soon(self._attempt, index, path, content, deadline, send)
                    running += 1
                    return

            next_member()
            while running:
                with trio.move_on_after(self._hedge_delay()) as hedge:
                    outcome = await receive.receive()
                if hedge.cancelled_caught:
                    next_member()
                    continue
                running -= 1
                if isinstance(outcome, _Answer | _Refusal | _Raised):
                    attempts.cancel_scope.cancel()  # the others are not needed any more
                    break
                self._silent[outcome.index] = trio.current_time()
                failures[outcome.index] = outcome.message
                maybe_applied |= outcome.maybe_applied
                self._failed(outcome.index)
                next_member()
            else:
                outcome = None
        if isinstance(outcome, _Answer):
            if outcome.index != first:  # hedged away from, or failed: not answering now
                self._silent[first] = trio.current_time()
            self._first = outcome.index
            return reply.decode(outcome.content)
        if isinstance(outcome, _Refusal):
            where = self.endpoints[outcome.index]
            raise _refusal(outcome.code, f"{where}: {outcome.message}")
        if isinstance(outcome, _Raised):
            raise outcome.error
        for index in order:  # the deadline passed before these were reached
            failures[index] = "not tried, no time left"
        said = [f"{self.endpoints[i]}: {failures[i]}" for i in _rotation(first, len(self._urls))]
        raise EtcdUnavailable(said, maybe_applied)

    async def _attempt(
        self,
        index: int,
        path: str,
        content: bytes,
        deadline: float,
        outcomes: trio.MemorySendChannel[_Outcome],
    ) -> None:
        """Send the request to one member; how it went, to `outcomes`."""
        began = trio.current_time()
        sent = False

        async def trace(event: str, _info: object) -> None:
            nonlocal sent
            sent |= event == SENDING

        # The member's time, cut short by the call's deadline if need be.
        with trio.move_on_at(min(deadline, began + self._request_timeout)):
            try:
                response = await self._post(self._urls[index] + path, content, trace)
            except EtcdError as exc:  # logging in, before the request itself
                outcomes.send_nowait(_Raised(index, exc))
                return
            except httpx.TransportError as exc:
                outcomes.send_nowait(_Failure(index, _describe(exc), sent))
                return
            if response.status_code == 200:
                took = trio.current_time() - began
                self._typical += TYPICAL_WEIGHT * (took - self._typical)
                outcomes.send_nowait(_Answer(index, response.content))
                return
            code, message = _error(response)
            if code in RETRY_ELSEWHERE or (not code and response.status_code >= 500):
                taken = not any(words in message for words in NOT_TAKEN)
                outcomes.send_nowait(_Failure(index, message, taken))
            else:
                outcomes.send_nowait(_Refusal(index, code, message))
            return
        # Reached only when the time ran out: as with a read timeout, if it was sent, it may
        # have been applied; if it was still connecting, nothing was.
        outcomes.send_nowait(_Failure(index, _NO_ANSWER if sent else _NOT_CONNECTED, sent))

    def _hedge_delay(self) -> float:
        return max(HEDGE_FLOOR, HEDGE_FACTOR * self._typical)

    def _failed(self, index: int) -> None:
        """The next call starts after a member that just failed, unless one answered since."""
        if self._first == index:
            self._first = (index + 1) % len(self._urls)

    async def _post(
        self, url: str, content: bytes, trace: Callable[[str, object], Awaitable[None]]
    ) -> httpx.Response:
        """POST with the current auth token; fetch a new one once if etcd rejects it.
        `trace` hears httpcore's events (the request being sent)."""
        extensions = {"trace": trace}
        headers = {**REQUIRE_LEADER, **await self._auth_headers()}
        response = await self._http.post(
            url, content=content, headers=headers, extensions=extensions
        )
        if response.status_code == 401 and self._credentials is not None:
            await self._authenticate(stale=headers.get("Authorization"))
            headers = {**REQUIRE_LEADER, **await self._auth_headers()}
            response = await self._http.post(
                url, content=content, headers=headers, extensions=extensions
            )
        return response

    # --- authentication ------------------------------------------------------------------------

    async def _auth_headers(self) -> dict[str, str]:
        if self._credentials is None:
            return {}
        if self._token is None:
            await self._authenticate(stale=None)
        assert self._token is not None
        return {"Authorization": self._token}

    async def _authenticate(self, stale: str | None) -> None:
        """Fetch a token, unless another task already replaced the `stale` one meanwhile."""
        assert self._credentials is not None
        async with self._auth_lock:
            if self._token is not None and self._token != stale:
                return
            content = encode(self._credentials)
            failures: list[str] = []
            for index in _rotation(self._first, len(self._urls)):
                where = self.endpoints[index]
                try:
                    response = await self._http.post(
                        self._urls[index] + "/v3/auth/authenticate", content=content
                    )
                except httpx.TransportError as exc:
                    failures.append(f"{where}: {_describe(exc)}")
                    continue
                if response.status_code == 200:
                    self._token = _AUTH.decode(response.content).token
                    return
                code, message = _error(response)
                if code in RETRY_ELSEWHERE:
                    failures.append(f"{where}: {message}")
                    continue
                raise EtcdRefused(
                    f"etcd refused user {self._credentials.name!r}: {message}; check "
                    "--etcd-user and the password file",
                    code,
                )
            raise EtcdUnavailable(failures, maybe_applied=False)

    # --- watching ------------------------------------------------------------------------------

    def move_watch(self) -> None:
        """The next watch starts at the member after the current watch's (it seems stuck)."""
        self._watch_first = (self._watch_first + 1) % len(self._urls)

    def watch_suspect(self) -> bool:
        """Has the member the current watch follows failed to answer a unary call (that
        another member then answered) since the watch began? A member cut off by the
        network says nothing, and its watch, silent too, would be noticed only later."""
        if self._watching is None:
            return False
        index, since = self._watching
        return self._silent.get(index, -math.inf) >= since

    async def watch(
        self,
        request: WatchCreateRequest,
        on_response: Callable[[WatchResponse], None],
        *,
        silence: float,
    ) -> NoReturn:
        """Open the watch on the first member that takes it and pass each reply after the one
        confirming its creation to `on_response`, until it ends. It always ends by raising:
        `EtcdCompacted` (list again), `EtcdUnavailable` (resume after the last revision
        seen; the next watch tries another member first), `EtcdRefused`, or whatever
        `on_response` raises.
        """
        content = encode(WatchRequest(request))
        failures: list[str] = []
        for index in _rotation(self._watch_first, len(self._urls)):
            where, following = self.endpoints[index], False
            try:
                async with self._watch_http.stream(
                    "POST",
                    self._urls[index] + "/v3/watch",
                    content=content,
                    headers={**REQUIRE_LEADER, **await self._auth_headers()},
                    timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT, read=None),
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        code, message = _error(response)
                        if code in RETRY_ELSEWHERE or response.status_code >= 500:
                            failures.append(f"{where}: {message}")
                            continue
                        raise _refusal(code, f"{where}: {message}")
                    following = True
                    self._watch_first = index
                    self._watching = (index, trio.current_time())
                    try:
                        await self._follow(response, where, on_response, silence)
                    finally:
                        self._watching = None
            except EtcdUnavailable:
                self._watch_first = (index + 1) % len(self._urls)  # broken here: go elsewhere
                raise
            except httpx.TransportError as exc:
                failures.append(f"{where}: {_describe(exc)}")
                if following:
                    self._watch_first = (index + 1) % len(self._urls)
                    raise EtcdUnavailable(failures, maybe_applied=False) from None
        raise EtcdUnavailable(failures, maybe_applied=False)

    async def _follow(
        self,
        response: httpx.Response,
        where: str,
        on_response: Callable[[WatchResponse], None],
        silence: float,
    ) -> NoReturn:
        with trio.CancelScope(deadline=trio.current_time() + silence) as quiet:
            async for line in response.aiter_lines():
                quiet.deadline = trio.current_time() + silence
                if not line:
                    continue
                message = _WATCH.decode(line)
                if message.error is not None:
                    raise await self._stream_error(where, message.error)
                result = message.result
                if result is None or (result.created and not result.canceled):
                    continue
                if result.canceled:
                    raise await self._cancelled(where, result)
                on_response(result)
        if quiet.cancelled_caught:
            raise EtcdUnavailable(
                [
                    f"{where}: the watch showed nothing for {silence:g}s, not even a "
                    "progress notification"
                ],
                maybe_applied=False,
            )
        raise EtcdUnavailable([f"{where}: the watch stream ended"], maybe_applied=False)

    async def _cancelled(self, where: str, result: WatchResponse) -> EtcdError:
        if result.compact_revision:
            return EtcdCompacted(
                f"{where}: the watch's start revision was compacted (compaction at "
                f"revision {result.compact_revision})",
                result.compact_revision,
            )
        return await self._stream_error(where, StreamError(message=result.cancel_reason))

    async def _stream_error(self, where: str, error: StreamError) -> EtcdError:
        message = error.message
        if "invalid auth token" in message and self._credentials is not None:
            await self._authenticate(stale=self._token)
            return EtcdUnavailable([f"{where}: {message} (fetched a new token)"], False)
        if "permission denied" in message or "Unauthenticated" in message:
            return EtcdRefused(f"{where}: {message}")
        return EtcdUnavailable([f"{where}: {message}"], maybe_applied=False)


@dataclass(frozen=True)
class _Answer:
    index: int
    content: bytes


@dataclass(frozen=True)
class _Failure:
    """Not this member, not now: another may serve the call."""

    index: int
    message: str
    maybe_applied: bool


@dataclass(frozen=True)
class _Refusal:
    """An answer every member would give."""

    index: int
    code: int
    message: str


@dataclass(frozen=True)
class _Raised:
    """Logging in failed: the call fails as the login did."""

    index: int
    error: EtcdError


_Outcome = _Answer | _Failure | _Refusal | _Raised


def _rotation(first: int, count: int) -> Iterator[int]:
    """Every member once, starting with `first`."""
    for step in range(count):
        yield (first + step) % count


def _error(response: httpx.Response) -> tuple[int, str]:
    """The gRPC code and message of a failed reply (a proxy's reply may have neither)."""
    try:
        body = _ERROR.decode(response.content)
    except msgspec.DecodeError:
        return 0, f"HTTP {response.status_code}: {response.text[:200]!r}"
    return body.code, body.message or body.error or f"HTTP {response.status_code}"


def _refusal(code: int, message: str) -> EtcdError:
    if code == OUT_OF_RANGE and "compacted" in message:
        return EtcdCompacted(message)
    if code == UNAUTHENTICATED or "user name is empty" in message:
        message += "; the cluster requires authentication: give --etcd-user and a password file"
    return EtcdRefused(message, code)


_NO_ANSWER = "no answer in time"
_NOT_CONNECTED = "could not connect in time"
_TRANSPORT_ERRORS: list[tuple[type[httpx.TransportError], str]] = [
    (httpx.ConnectTimeout, "no answer to connecting"),
    (httpx.ConnectError, "cannot connect"),
    (httpx.ReadTimeout, _NO_ANSWER),
    (httpx.RemoteProtocolError, "closed the connection without answering"),
    (httpx.ReadError, "the connection broke"),
]


def _describe(exc: httpx.TransportError) -> str:
    for kind, words in _TRANSPORT_ERRORS:
        if isinstance(exc, kind):
            return words
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Verify the members with `ca` (else the system's CAs); present `cert` if given."""
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f"{what} {path}" for what, path in (("CA", ca), ("certificate", cert),
                          ("key", key)) if path is not None)  # fmt: skip
        raise EtcdRefused(f"cannot load the TLS files for etcd ({files}): {exc}") from None
    return context
