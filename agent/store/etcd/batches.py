"""Group commit for the etcd store: concurrent changes of one agent share one etcd txn.

As the journal shares one fsync among the changes that arrive while the last one runs,
`Batches` sends the changes that arrive while a txn is in flight together, in the next
one. Each change keeps its own parts (`Parts`): the compares that are its preconditions,
the puts of the units it writes, and the failure branch's reads of each key it compares.
A batch's txn is their concatenation, plus its own change key: created by the txn (a
compare that it does not exist yet, read first in the failure branch), it holds the
records of every change of the batch, in order, on the store's lease, and the watch
brings it to every agent as one event.

What may share a txn. Each change was decided alone, against the replica, and a txn's
compares are all checked before any of its puts, so changes go together only if none
depends on another's writes: `enter` refuses a change that writes a unit another change
in flight (queued, sent, or committed but not yet seen by the watch) reads or writes, or
reads a unit one of them writes, or adds edges while another does (the cycle check of
each saw the edges without the other's), or compares every unit at once (`exclusive`).
The refused change waits for the others to leave (`wait_for_room`) and is decided again,
on a replica that has their effects. A txn holds at most `MAX_TXN_OPS` compares, puts and
reads each (etcd's --max-txn-ops is 128) and `MAX_TXN_BYTES` of values.

An answer, read per change (`Committed` / `Conflict` / `NotDurable` / `LeaseGone`):

- committed: the txn went in, or the failure branch finds the batch's change key (an
  earlier attempt, whose answer was lost, went in: the batch is sent again unchanged
  until etcd answers, so at most one attempt can commit);
- the compares failed: each change's own compares are checked against the failure
  branch's reads. A change whose compares all still hold was failed by another's, not by
  its own, and goes into the next txn as it is; the others lost a race with another agent
  and are decided again by their caller.

Deadlines are each change's own. An attempt ends by the earliest deadline in its batch;
a change whose deadline has passed gets `NotDurable` ("may or may not have been made" if
an attempt may have reached etcd, else "nothing was changed", and it leaves the batch).
A batch an attempt may have reached is sent again unchanged while any of its changes
still has time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import trio

from unitsync.wire.errors import NotDurable
from unitsync.wire.host.backoff import Backoff

from ...core.records import Record
from ..base import MaybeMade
from .client import EtcdClient, EtcdRefused, EtcdUnavailable
from .messages import NOT_FOUND, Compare, Op, PutRequest, RangeRequest, TxnRequest, TxnResponse

MAX_TXN_OPS = 128
"""etcd's default --max-txn-ops: the most compares, success ops or failure ops of one txn."""
MAX_TXN_BYTES = 1 << 20
"""Values per txn, below etcd's default request limit of 1.5 MiB (--max-request-bytes)."""
BACKOFF_FIRST = 0.05
"""First pause before sending a txn again: a member restarting or electing a leader is back
within tens of milliseconds."""
BACKOFF_LIMIT = 1.0
"""Longest pause between attempts to reach etcd: changes go in within it once etcd is back."""
LINGER = 0.002
"""After a txn of N changes, with M more queued meanwhile, the next txn waits this long at
most for N + M to be queued: the clients the last one answered send their next change
within about a millisecond (the watch's echo, a reply, a request), and one txn for both
groups, not two alternating, halves the txns (and etcd's and the agent's work per
change). A lone client never waits: N + M was 1."""
FIRST_ATTEMPT = 0.5
"""A txn with no answer this long is sent again (unchanged: at most one copy can commit),
each next attempt given twice as long. A request the members forwarded to a leader that
was then cut off is lost, and etcd would give up on it only after 7 s; an election takes
one or two, and attempts at 0, 0.5 and 1.5 s meet the new leader about as soon as it is
there (1 s, then 2 s, often missed it and took 3.4 s). A cluster merely slow to answer
still gets all the time it needs. The store's reads and lease grants go the same way."""


@dataclass(frozen=True)
class Parts:
    """One change, as parts of a txn."""

    compares: list[Compare]
    success: list[Op]
    failure: list[Op]
    """A read of each key it compares."""
    records: list[Record]
    lease: int
    """The lease its batch's change key lives on."""
    writes: frozenset[str]
    """Units whose images it puts."""
    reads: frozenset[str]
    """Units it compares but does not write (a start's dependencies, what it is about)."""
    edges: bool
    """It adds edges (compares and puts PREFIX/edges)."""
    exclusive: bool
    """It compares every unit at once (too many to name): alone in its txn."""
    expected: dict[bytes, int]
    """The mod revision each key it compares one by one must still have (0: absent)."""
    size: int
    """Bytes of the values it puts."""


@dataclass(frozen=True)
class Committed:
    revision: int
    asked: float
    """When the attempt that went in was sent (trio time): the replica, once it holds
    `revision`, holds everything etcd had committed before then."""


@dataclass(frozen=True)
class Conflict:
    current: dict[bytes, int]
    """The keys it compares, with their mod revisions now (0: absent)."""


class LeaseGone(Exception):
    """The change keys' lease expired before the txn was sent (the agent was suspended?)."""


Outcome = Committed | Conflict | NotDurable | LeaseGone


@dataclass(eq=False)
class Pending:
    """A change waiting for, or in, a txn."""

    parts: Parts
    deadline: float
    outcome: Outcome | None = None
    _done: trio.Event = field(default_factory=trio.Event)

    def finish(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self._done.set()

    async def result(self) -> Outcome:
        await self._done.wait()
        assert self.outcome is not None
        return self.outcome


class Batches:
    """The changes of one agent on their way to etcd, and the task that sends them."""

    def __init__(
        self,
        client: EtcdClient,
        warn: Callable[[str], None],
        unreachable: Callable[[Exception, bool], str],
        stamp: Op,
        change_key: Callable[[], bytes],
    ) -> None:
        self.client = client
        self._stamp = stamp
        """A put every txn also makes (the store's P/latest)."""
        self._change_key = change_key
        """A new change key, one per batch."""
        self._warn = warn
        self._unreachable = unreachable
        self._queue: list[Pending] = []
        self._queued = trio.Event()
        self._reads: Counter[str] = Counter()
        self._writes: Counter[str] = Counter()
        self._edges = 0
        self._active = 0
        self._exclusive = 0
        self._left = trio.Event()
        self.trouble = ""
        """What etcd said last when it did not take a batch (for a change that waited)."""
        self.sizes: Counter[int] = Counter()
        """How many txns carried how many changes (for the bench)."""

    # --- changes coming and going ----------------------------------------------------------

    def enter(self, parts: Parts, deadline: float) -> Pending | None:
        """Queue a change for the next txn; None if it conflicts with a change in flight."""
        if self._conflicts(parts):
            return None
        self._reads.update(parts.reads)
        self._writes.update(parts.writes)
        self._edges += parts.edges
        self._exclusive += parts.exclusive
        self._active += 1
        pending = Pending(parts, deadline)
        self._queue.append(pending)
        self._queued.set()
        return pending

    def leave(self, pending: Pending) -> None:
        """The change is done (its effects in the replica, or given up): free its units."""
        parts = self._detach(pending)
        self._reads.subtract(parts.reads)
        self._writes.subtract(parts.writes)
        self._edges -= parts.edges
        self._exclusive -= parts.exclusive
        self._active -= 1
        self._left.set()
        self._left = trio.Event()

    async def wait_for_room(self, deadline: float) -> bool:
        """Until a change in flight leaves (then decide again); False if `deadline` comes
        first."""
        with trio.move_on_at(deadline):
            await self._left.wait()
            return True
        return False

    def _conflicts(self, parts: Parts) -> bool:
        if self._exclusive or (parts.exclusive and self._active):
            return True
        if parts.edges and self._edges:
            return True
        if any(self._writes[unit] or self._reads[unit] for unit in parts.writes):
            return True
        return any(self._writes[unit] for unit in parts.reads)

    def _detach(self, pending: Pending) -> Parts:
        if pending in self._queue:  # given up (cancelled) before it was sent
            self._queue.remove(pending)
        return pending.parts

    # --- sending ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Send what is queued, one txn at a time, until cancelled."""
        busy = 0  # changes in the last txn, and those queued while it was out
        while True:
            while not self._queue:
                await self._queued.wait()
                self._queued = trio.Event()
            with trio.move_on_after(LINGER):
                while len(self._queue) < busy:  # the last txn's clients are coming back
                    await self._queued.wait()
                    self._queued = trio.Event()
            batch = self._take()
            self.sizes[len(batch)] += 1
            await self._send(batch)
            busy = len(batch) + len(self._queue)

    def _take(self) -> list[Pending]:
        """The changes at the head of the queue that fit in one txn (at least one)."""
        batch: list[Pending] = []
        compares = failure = 1  # the change key's
        success = 2  # the change key and the stamp
        size = 0
        for pending in self._queue:
            parts = pending.parts
            compares += len(parts.compares)
            success += len(parts.success)
            failure += len(parts.failure)
            size += parts.size
            fits = max(compares, success, failure) <= MAX_TXN_OPS and size <= MAX_TXN_BYTES
            if batch and not fits:
                break
            batch.append(pending)
        del self._queue[: len(batch)]
        return batch

    async def _send(self, batch: list[Pending]) -> None:
        """One txn for `batch`, sent until etcd answers or no change of it has time left."""
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_LIMIT)
        sent = False  # an attempt may have reached etcd unanswered
        attempt = FIRST_ATTEMPT
        said: EtcdUnavailable | None = None
        key = self._change_key()
        while True:
            live = [pending for pending in batch if pending.outcome is None]
            if not live:
                return
            request = self._merged(batch, key)
            asked = trio.current_time()
            until = min(asked + attempt, *(pending.deadline for pending in live))
            try:
                reply = await self.client.txn(request, deadline=until)
            except EtcdUnavailable as exc:
                delay = backoff.next()
                attempt *= 2
                sent |= exc.maybe_applied
                said = _said(said, exc)
                self.trouble = str(said)
                now = trio.current_time()
                for pending in live:
                    if now + delay > pending.deadline:
                        pending.finish(_not_durable(self._unreachable(said, sent), sent))
                if not sent:  # nothing can have reached etcd: leave out who gave up
                    batch = [pending for pending in batch if pending.outcome is None]
                self._warn(f"etcd did not take a change, retrying: {exc}")
            except EtcdRefused as exc:
                for pending in live:
                    if exc.code == NOT_FOUND and "lease" in str(exc) and not sent:
                        pending.finish(LeaseGone())
                    elif sent:
                        pending.finish(MaybeMade(self._unreachable(exc, sent)))
                    else:
                        message = f"etcd refused the change ({exc}); nothing was changed"
                        pending.finish(NotDurable(message))
                return
            else:
                self._answered(batch, reply, asked)
                return
            await trio.sleep(delay)

    def _merged(self, batch: list[Pending], key: bytes) -> TxnRequest:
        """One txn for `batch`, whose change key is `key`."""
        records = [pending.parts.records for pending in batch]
        lease = batch[-1].parts.lease  # the newest: the others may be being replaced
        request = TxnRequest([Compare(key, "CREATE", create_revision=0)], [], [read(key)])
        for pending in batch:
            request.compare += pending.parts.compares
            request.success += pending.parts.success
            request.failure += pending.parts.failure
        request.success.append(Op(request_put=PutRequest(key, encode_changes(records), lease)))
        request.success.append(self._stamp)
        return request

    def _answered(self, batch: list[Pending], reply: TxnResponse, asked: float) -> None:
        """Tell each change of `batch` what the answer means for it; requeue (first) those
        failed only by another change's compares."""
        own = reply.responses[0].response_range if not reply.succeeded else None
        if reply.succeeded or (own is not None and own.kvs):  # now, or an earlier attempt
            revision = reply.header.revision if own is None else own.kvs[0].mod_revision
            for pending in batch:
                pending.finish(Committed(revision, asked))
            return
        again: list[Pending] = []
        at = 1
        for pending in batch:
            parts = pending.parts
            responses = reply.responses[at : at + len(parts.failure)]
            at += len(parts.failure)
            current = mod_revisions(parts.failure, responses)
            holds = not parts.exclusive and all(
                current.get(key, 0) == mod for key, mod in parts.expected.items()
            )
            if holds and pending.outcome is None:
                again.append(pending)
            else:
                pending.finish(Conflict(current))
        self._queue[:0] = again
        if again:
            self._queued.set()


def _said(before: EtcdUnavailable | None, now: EtcdUnavailable) -> EtcdUnavailable:
    """What each member said, over every attempt: the first thing it said (what makes a
    change ambiguous comes first: an answer lost; later attempts then cannot connect)."""
    members: dict[str, str] = {}
    for failure in [*(before.failures if before else []), *now.failures]:
        where, _, message = failure.partition(": ")
        if where not in members or members[where].startswith("not tried"):
            members[where] = message
    failures = [f"{where}: {message}" for where, message in members.items()]
    return EtcdUnavailable(failures, now.maybe_applied or bool(before and before.maybe_applied))


def mod_revisions(reads: list[Op], responses: list, skip: int = 0) -> dict[bytes, int]:
    """Each key read by `reads` (after the first `skip`) and its mod revision now, 0 for a
    key that is absent; for a read of a range, the key found (the one changed last)."""
    current: dict[bytes, int] = {}
    for op, response in zip(reads[skip:], responses[skip:], strict=True):
        assert op.request_range is not None
        found = response.response_range
        kvs = found.kvs if found is not None else []
        if op.request_range.range_end:
            current.update((kv.key, kv.mod_revision) for kv in kvs)
        else:
            current[op.request_range.key] = kvs[0].mod_revision if kvs else 0
    return current


def read(key: bytes) -> Op:
    return Op(request_range=RangeRequest(key, keys_only=True))


_encode = msgspec.msgpack.Encoder().encode
_CHANGES = msgspec.msgpack.Decoder(list[list[Record]])
_ONE_CHANGE = msgspec.msgpack.Decoder(list[Record])


def encode_changes(changes: list[list[Record]]) -> bytes:
    """A change key's value: the records of each change of its txn, in order."""
    return _encode(changes)


def decode_changes(value: bytes) -> list[list[Record]]:
    """What `encode_changes` wrote (or, from an agent before group commit, one change)."""
    try:
        return _CHANGES.decode(value)
    except msgspec.ValidationError:
        return [_ONE_CHANGE.decode(value)]


def _not_durable(message: str, sent: bool) -> NotDurable:
    """A change given up: `MaybeMade` if an attempt may have reached etcd."""
    return MaybeMade(message) if sent else NotDurable(message)
