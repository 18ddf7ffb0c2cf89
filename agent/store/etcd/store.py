"""One graph shared by several agents, kept in etcd (SPEC §10).

Keys, under the prefix P of `--store etcd://.../P`:

    P/graph             the graph's id (SPEC §11): created once, by the first agent that opens
                        the prefix (a txn that creates it only if absent, so agents opening an
                        empty prefix at once agree on one), then never written again
    P/units/NAME        the unit's image (`records.UnitImage`, msgpack; zlib-compressed when
                        long): status, deps, history; deleted by `forget`
    P/edges             rewritten by every change that adds edges or changes their conditions:
                        its mod revision is compared
    P/changes/AGENT/N   the records of the changes of one txn (msgpack: a list of lists of
                        records, one per change), on a lease of a minute or more
    P/latest            rewritten (empty) by every txn: its mod revision is the latest change's

Replica. Each agent lists P/units/ at a revision R, then watches P/changes/ from R+1 (and
lists again if that revision was compacted away). The watch is the only way changes reach
the replica, this agent's own included, so every agent applies the same records in the
same (revision) order through `Graph.apply`, as the journal's replay does. Listing afresh
builds a new graph that replaces the replica (`Changes.replaced`); the host's own boot is
the one thing applied to it from here (`begin_boot`). Reads, `status` and waits use the
replica alone; a `complete` on host B wakes a `start` on host A when the watch brings it.
Unit keys are written only with a change key in the same txn: don't edit them by hand (an
agent that notices lists again).

A change, from `commit`:

1. decide: the command runs against the replica (it returns records and changes nothing);
2. its txn puts the new images of the units the records write (deletes a forgotten
   unit's), P/edges if they add an edge, and a change key holding its records. Its
   compares are the change's real preconditions: every unit it writes or is about (and a
   start's dependencies, whose states made it ready) still has the mod revision the
   replica saw, 0 for "still absent"; P/edges too if it adds an edge, so two agents cannot
   close a cycle between them; and the change key does not exist yet. Concurrent changes
   of this agent that do not depend on each other share one txn and its change key (group
   commit, `batches`); one that does waits for the others to be in the replica and is
   decided again;
3. committed at revision R: wait until the watch has brought R into the replica (the
   agent reads its own writes), then answer;
4. a compare failed: the failure branch reads the compared keys' mod revisions now; wait
   until the replica holds them, and decide again.

No hot key: two changes conflict only when they touch the same unit or both add edges
(P/latest is written blindly, never compared).

Idempotency: a txn whose answer was lost (the connection broke after sending, etcd timed
the proposal out, a member slow to answer got company) is sent again, unchanged. If the
first one was committed, the compares now fail and the failure branch finds its change
key: each change is applied once. Change keys expire with their lease, long after any
retry.

An outcome that commits nothing (a refusal such as "already started", or "already
completed") is confirmed before it is returned: the mod revisions of the units the command
is about are read from etcd, the replica catches up to them, and the command is decided
again. So a script acting on what a script on another host has just done is not answered
from a replica a few milliseconds behind.

Faults: with no etcd member answering, a change fails with `NotDurable` after
`config.timeout`, saying whether it may have been made (when its txn was sent and no
answer came back). That is one deadline for the whole change: every call it makes to etcd
(lease, txn, confirming read), with every member each call tries, ends by then. Reads and
waits go on from the replica, and the watch resumes after the last revision it saw once
etcd is back. The agents compact etcd's history every `COMPACT_EVERY`, keeping that much
of it.

Staleness: the replica is confirmed current whenever one of this agent's txns comes back
through the watch, and, when nothing else did for `HEARTBEAT`, by a read of P/latest
(linearizable: it needs the cluster's quorum) whose revision the watch must then bring. A
replica not confirmed for `STALE_AFTER` is behind since its last confirmation
(`replica_behind_since`; `status` shows it). A watch that does not bring what the read
found within `ECHO_LIMIT` is presumed stuck on a member cut off from the others, and is
reopened on the next one.

Large changes: a txn writes at most `MAX_UNITS_PER_TXN` units (etcd takes at most 128
operations in one). A change of many independent units (`reset --all`) is committed in
parts, each decided afresh, so it is not atomic; a `want` of more new units than fit in
one txn is refused.

Boots per host (SPEC §7 and §10): a start's `Move` names the host whose agent decided it
(and that host's boot); a host's workspace restart is one `decide` that moves to pending
every non-pending unit whose latest run that host started (not the completed one-time
units), committed with `commit(decide, None)`: in parts like `reset --all`. The host's
own boot number lives in its agent's state dir (`host_boot`), not in etcd; the replica
carries it across listings.

Retries back off (`wire.host.backoff`) from BACKOFF_FIRST to BACKOFF_LIMIT; warnings about
etcd staying unreachable are rate-limited (`log_throttle`).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from unitsync.wire.errors import NotDurable, Refused
from unitsync.wire.graph_id import is_graph_id, new_graph_id
from unitsync.wire.host.backoff import Backoff

from ...core.graph import Graph
from ...core.records import Boot, BootImage, Edge, Move, Record, UnitImage
from ...core.records import Forget as Forgotten
from ...files import SetupError
from ...log_throttle import Throttle
from ..base import Changes, Decide
from . import host_boot
from .batches import (
    FIRST_ATTEMPT,
    MAX_TXN_BYTES,
    Batches,
    Committed,
    Conflict,
    LeaseGone,
    Parts,
    Pending,
    decode_changes,
    mod_revisions,
    read,
)
from .client import EtcdClient, EtcdCompacted, EtcdError, EtcdRefused, EtcdUnavailable
from .config import EtcdConfig
from .messages import (
    Compare,
    DeleteRangeRequest,
    KeyValue,
    Op,
    PutRequest,
    RangeRequest,
    TxnRequest,
    TxnResponse,
    WatchCreateRequest,
    WatchResponse,
    prefix_end,
)

log = logging.getLogger("unitsync.etcd")

T = TypeVar("T")

MAX_UNITS_PER_TXN = 100
"""etcd takes at most 128 operations per txn branch (--max-txn-ops): 100 unit puts leave
room for the change's key and P/edges."""
MAX_COMPARED = 100
"""More units than this to compare one by one, and the txn compares them all at once:
"nothing under P/units/ changed since the replica's revision" (stricter, as safe)."""
LIST_PAGE = 1000
"""Units per range request when listing: bounded replies, however large the graph."""
ECHO_LIMIT = 1.0
"""A watch that has not brought a change this long after etcd acknowledged it is presumed
stuck and reopened on the next member (the watch normally brings it as fast as the txn's
own reply; reopening one that was merely slow costs a reconnection, nothing is missed)."""
HEARTBEAT = 0.5
"""With nothing else confirming it, the agent checks this often that its replica is current
(one read of one key, served without a disk write): how soon a watch stuck on a silent
member is noticed, and how soon a replica cut off from etcd can be shown as behind."""
STALE_AFTER = 3.0
"""A replica not confirmed current for this long is shown as behind: several heartbeats,
so one slow answer on a busy machine (or a member cut off, left within HEDGE_FLOOR) does
not show as staleness."""
COMPACT_EVERY = 300.0
"""How often the agents compact etcd's history, and how much of it they keep: enough for
a watch to resume after a short outage without listing again."""
BACKOFF_FIRST = 0.05
"""First pause before trying etcd again: a member restarting or electing a leader is back
within tens of milliseconds."""
BACKOFF_LIMIT = 1.0
"""Longest pause between attempts to reach etcd: waiters resume within it once etcd is back."""
FINAL_REFUSALS = frozenset({"invalid", "cycle"})
"""Refusals no change by another agent can undo (bad arguments; edges are never removed),
returned without confirming them against etcd."""
LOG_EVERY = 30.0
"""At most one warning this often about etcd staying unreachable."""

COMPRESS_OVER = 1024
"""An image longer than this (a long history) is stored zlib-compressed: a unit's 100
history entries shrink about eightfold, and etcd's work per change follows its bytes."""
ZLIB_HEADER = b"\x78"
"""The first byte of a zlib stream; an image in msgpack starts with an array's (0x9X)."""

_UNIT = msgspec.msgpack.Decoder(UnitImage)
_encode = msgspec.msgpack.Encoder().encode


class _Diverged(Exception):
    """The replica no longer matches etcd (keys written by hand?): list again."""


@dataclass(frozen=True)
class _Keys:
    """Where each thing lives under the prefix."""

    root: bytes
    units: bytes
    edges: bytes
    changes: bytes
    graph: bytes
    latest: bytes

    @classmethod
    def under(cls, prefix: str) -> _Keys:
        root = prefix.encode() + b"/"
        return cls(
            root,
            root + b"units/",
            root + b"edges",
            root + b"changes/",
            root + b"graph",
            root + b"latest",
        )

    def unit(self, name: str) -> bytes:
        return self.units + name.encode()


class EtcdStore:
    recovers_unaided = True
    """A change refused while etcd is unreachable may go through once it is back."""

    def __init__(self, config: EtcdConfig, client: EtcdClient, state_dir: Path) -> None:
        self.config = config
        self.client = client
        self.state_dir = state_dir
        """This agent's own state dir: the host's boot is kept there (`host_boot`)."""
        self.location = config.url
        self.keys = _Keys.under(config.prefix)
        self.graph_id = ""
        """The graph's id, read (or created) from P/graph when the store opens."""
        self.graph = Graph()
        """The replica; replaced by a new one each time the graph is listed afresh."""
        self._boot = BootImage(0, "", 0.0)
        """This host's boot, carried into every replica (etcd does not hold it)."""
        self.revision = 0
        """Every change up to this etcd revision is in the replica."""
        self.mods: dict[str, int] = {}
        """Each unit's mod revision in etcd, as of `revision`."""
        self.edges_mod = 0
        self._agent = secrets.token_hex(6)
        self._changes_made = 0
        self._changes: Changes | None = None
        self._advanced = trio.Event()
        self._watch_scope: trio.CancelScope | None = None
        self._must_list = False
        self._leases = _Leases(client, ttl=max(60, math.ceil(3 * config.timeout)))
        self._trouble = Throttle(LOG_EVERY, clock=trio.current_time)
        self._batches = Batches(
            client, self._warn, _unreachable, _put(self.keys.latest, b""), self._change_key
        )
        self._fresh = -math.inf
        """When (trio time) the replica was last confirmed to hold every change in etcd."""
        self._behind_said: float | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, config: EtcdConfig, state_dir: Path) -> AsyncIterator[EtcdStore]:
        """Connect and list the graph (waiting for etcd as long as it takes)."""
        try:
            client = EtcdClient(
                config.endpoints,
                ca=config.ca,
                cert=config.cert,
                key=config.key,
                user=config.user,
                password=config.password,
            )
        except EtcdRefused as exc:
            raise SetupError(str(exc)) from None
        try:
            store = cls(config, client, state_dir)
            await store._take_graph_id()
            await store._first_list()
            yield store
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    # --- the service's store -------------------------------------------------------------------

    @property
    def applied_seq(self) -> int:
        return self.revision

    @property
    def durable_seq(self) -> int:
        return self.revision  # the replica holds committed changes only

    def listen(self, changes: Changes) -> None:
        self._changes = changes

    async def settle(self) -> None:
        await trio.lowlevel.checkpoint()  # nothing in the replica can be taken back

    async def begin_boot(self, identity: str, *, now: float, host: str) -> int:
        """The boot is this host's own, kept in its state dir: a new one starts over only
        the units whose latest run `host`'s agent started (SPEC §10)."""
        known = await trio.to_thread.run_sync(host_boot.load, self.state_dir)
        if known is not None and known.identity == identity:
            self._take_boot(BootImage(known.number, identity, known.since))
            return known.number
        self._take_boot(BootImage(known.number + 1 if known is not None else 1, identity, now))
        if known is not None:  # a crash before `save` starts over the same units again: no-op
            await self.commit(lambda: self.graph.restart_host(host, now=now), None)
        await trio.to_thread.run_sync(host_boot.save, self.state_dir, self._boot)
        return self._boot.number

    def _take_boot(self, boot: BootImage) -> None:
        """This host's boot, in the replica now and in every one listed from now on."""
        self._boot = boot
        self.graph.apply(Boot(boot.number, boot.identity, boot.since, restart=False))

    @property
    def replica_behind_since(self) -> float | None:
        """Unix time since which the replica is not known to hold every change in etcd
        (None: it was confirmed within `STALE_AFTER`)."""
        age = trio.current_time() - self._fresh
        return None if age <= STALE_AFTER else time.time() - age

    async def commit(
        self, decide: Decide, about: Sequence[str] | None, *, confirm_noop: bool = True
    ) -> list[Record]:
        deadline = trio.current_time() + self.config.timeout
        confirmed = False
        committed: list[Record] = []
        while True:
            lease = await self._retrying(self._leases.current, deadline, False)
            # No checkpoint from here to the batch: its compares must hold the mod revisions
            # the decision saw, not those of a replica that moved on meanwhile.
            try:
                records = decide()
            except Refused as exc:
                if confirmed or exc.code in FINAL_REFUSALS:
                    raise
                await self._confirm(about, deadline)
                confirmed = True
                continue
            if not records:
                if confirmed or committed or not confirm_noop:
                    return committed
                await self._confirm(about, deadline)
                confirmed = True
                continue
            parts = self._parts(records, about, lease)
            pending = self._batches.enter(parts, deadline)
            if pending is None:  # it depends on a change still in flight: decide after it
                if not await self._batches.wait_for_room(deadline):
                    raise NotDurable(self._no_room())
                continue
            try:
                done = await self._committed(pending, deadline)
            finally:
                self._batches.leave(pending)
            if done is None:
                continue  # the lease was gone: take a new one
            if done:
                committed += parts.records
                if len(parts.records) == len(records):
                    return committed
            elif trio.current_time() > deadline:
                raise NotDurable(
                    f"the change kept conflicting with other agents' changes for "
                    f"{self.config.timeout:g}s; nothing was changed: retry"
                )
            confirmed = True  # the replica caught up with every unit the change is about

    # --- committing ----------------------------------------------------------------------------

    async def _committed(self, pending: Pending, deadline: float) -> bool | None:
        """Wait for the change's txn; True once it is committed and in the replica, False if
        another agent's change got in first (the replica now has it), None if the lease was
        gone before the txn was sent."""
        outcome = await pending.result()
        if isinstance(outcome, NotDurable):
            raise outcome
        if isinstance(outcome, LeaseGone):
            self._leases.expired(pending.parts.lease)
            return None
        if isinstance(outcome, Committed):
            late = max(deadline, trio.current_time() + ECHO_LIMIT)
            if await self._caught_up(late, outcome.revision):
                self._confirmed(outcome.asked)
            else:
                log.warning(
                    "acknowledging revision %d before the watch brought it", outcome.revision
                )
            return True
        assert isinstance(outcome, Conflict)
        if not await self._caught_up(deadline, max(outcome.current.values(), default=0)):
            raise NotDurable(
                "etcd's watch is not bringing other agents' changes, so the change cannot "
                "be decided again; nothing was changed: retry"
            )
        self._check_replica(outcome.current)
        return False

    def _no_room(self) -> str:
        """Why a change that waited for another change to the same units gave up."""
        if self._batches.trouble:
            return (
                f"etcd is unreachable ({self._batches.trouble}); nothing was changed: retry "
                "once it is back"
            )
        return (
            "another change to the same units was still being committed when the time was "
            f"up ({self.config.timeout:g}s); nothing was changed: retry"
        )

    def _parts(self, records: list[Record], about: Sequence[str] | None, lease: int) -> Parts:
        """The txn parts of the first records of a change (as many as one txn takes)."""
        keys = self.keys
        records, images = self._first_batch(records)
        gone = [record.unit for record in records if isinstance(record, Forgotten)]
        compared = dict.fromkeys([*images, *gone])
        if about is not None:
            compared.update(dict.fromkeys(about))
        for record in records:
            if isinstance(record, Move) and record.to == "started":
                # The start was decided because these were completed: they still must be.
                unit = self.graph.units.get(record.unit)
                compared.update(unit.deps if unit else {})
        compares = []
        values = {keys.unit(name): _stored(image) for name, image in images.items()}
        failure = []
        expected: dict[bytes, int] = {}
        exclusive = len(compared) > MAX_COMPARED
        if not exclusive:
            for name in compared:
                key = keys.unit(name)
                expected[key] = self.mods.get(name, 0)
                compares.append(Compare(key, "MOD", mod_revision=expected[key]))
                failure.append(read(key))
        else:
            units_end = prefix_end(keys.units)
            compares.append(
                Compare(keys.units, "MOD", "LESS", self.revision + 1, range_end=units_end)
            )
            failure.append(_latest(keys.units, units_end))
        edges = any(isinstance(record, Edge) for record in records)
        if edges:
            expected[keys.edges] = self.edges_mod
            compares.append(Compare(keys.edges, "MOD", mod_revision=self.edges_mod))
            values[keys.edges] = b""
            failure.append(read(keys.edges))
        success = [_put(key, value) for key, value in values.items()]
        success += [Op(request_delete_range=DeleteRangeRequest(keys.unit(name))) for name in gone]
        return Parts(
            compares,
            success,
            failure,
            records,
            lease,
            writes=frozenset([*images, *gone]),
            reads=frozenset(compared) - frozenset(images) - frozenset(gone),
            edges=edges,
            exclusive=exclusive,
            expected=expected,
            size=sum(map(len, values.values())),
        )

    def _change_key(self) -> bytes:
        """The key of this agent's next txn of changes."""
        self._changes_made += 1
        return self.keys.changes + f"{self._agent}/{self._changes_made}".encode()

    def _first_batch(self, records: list[Record]) -> tuple[list[Record], dict[str, UnitImage]]:
        """As many of `records` as one txn takes (a unit's records stay together), and the
        images of the units they write."""
        images = _images_after(self.graph, records)
        if len(images) <= 1:
            return records, images
        size = sum(len(_stored(image)) for image in images.values())
        if len(images) <= MAX_UNITS_PER_TXN and size <= MAX_TXN_BYTES:
            return records, images
        if any(isinstance(record, Edge) for record in records):
            raise Refused(
                f"this change names {len(images)} units; with the etcd store one change may "
                f"name at most {MAX_UNITS_PER_TXN}: split the `want` into several"
            )
        # Independent units (a reset of many): each image depends on its own records only.
        batch, size = {}, 0
        for name, image in images.items():
            size += len(_stored(image))
            if batch and (len(batch) == MAX_UNITS_PER_TXN or size > MAX_TXN_BYTES):
                break
            batch[name] = image
        return [record for record in records if record.unit in batch], batch

    async def _confirm(self, about: Sequence[str] | None, deadline: float) -> None:
        """Bring the replica up to etcd's present for the units `about` (None: all of them)."""
        keys = self.keys
        if about is None or len(about) > MAX_COMPARED:
            reads = [_latest(keys.units, prefix_end(keys.units))]
        else:
            reads = [read(keys.unit(name)) for name in about]

        async def ask(deadline: float) -> TxnResponse:
            return await self.client.txn(TxnRequest(success=reads), deadline=deadline)

        asked = trio.current_time()
        reply = await self._retrying(ask, deadline, True)
        current = mod_revisions(reads, reply.responses)
        if not await self._caught_up(deadline, max(current.values(), default=0)):
            raise NotDurable(
                "etcd's watch is not bringing other agents' changes, so this answer cannot be "
                "confirmed; nothing was changed: retry"
            )
        if about is None:  # every unit: the replica was current then
            self._confirmed(asked)

    async def _retrying(
        self, call: Callable[[float], Awaitable[T]], deadline: float, reading: bool
    ) -> T:
        """`call(deadline)` (which sends nothing that changes anything), again while etcd is
        unreachable, until `deadline`. Each attempt gets FIRST_ATTEMPT, then twice as long
        as the one before, as a txn does: a call the members forwarded to a leader that was
        then cut off is lost, and would hold every member until its own timeout."""
        backoff, attempt = _backoff(), FIRST_ATTEMPT
        while True:
            try:
                return await call(min(deadline, trio.current_time() + attempt))
            except EtcdUnavailable as exc:
                attempt *= 2
                delay = backoff.next()
                if trio.current_time() + delay > deadline:
                    what = "could not confirm this answer" if reading else "nothing was changed"
                    raise NotDurable(f"etcd is unreachable ({exc}); {what}: retry") from None
                self._warn(f"etcd unreachable, retrying: {exc}")
            except EtcdRefused as exc:
                raise NotDurable(f"etcd refused a request ({exc}); nothing was changed") from None
            await trio.sleep(delay)

    async def _caught_up(self, deadline: float, revision: int) -> bool:
        """Wait until the replica holds `revision`; False if it does not by `deadline`.

        A watch that is late by `ECHO_LIMIT` is reopened once on the next member (it may be
        stuck on a member that lost touch without closing the connection); at once if its
        member has just failed to answer a call another member answered.
        """
        late = trio.current_time() + ECHO_LIMIT
        why = f"within {ECHO_LIMIT:g}s"
        if self.revision < revision and self.client.watch_suspect():
            late, why = trio.current_time(), "and its member has just failed to answer a call"
        while self.revision < revision:
            with trio.move_on_at(min(late, deadline)):
                await self._advanced.wait()
                continue
            if trio.current_time() >= deadline:
                return False
            self._warn(
                f"the watch has not brought revision {revision} {why} (the replica is at "
                f"{self.revision}): reopening it on the next member"
            )
            self.client.move_watch()
            self._reopen_watch()
            late = math.inf
        return True

    def _confirmed(self, asked: float) -> None:
        """The replica holds every change etcd had committed at `asked` (trio time)."""
        self._fresh = max(self._fresh, asked)

    async def _heartbeat(self) -> None:
        """Confirm the replica is current when nothing else has for `HEARTBEAT`: read the
        latest change's revision (P/latest) and see the watch bring it."""
        reads = [read(self.keys.latest)]
        tried = -math.inf
        while True:
            await trio.sleep_until(max(self._fresh, tried) + HEARTBEAT)
            if trio.current_time() < self._fresh + HEARTBEAT:
                continue  # a commit confirmed it meanwhile
            tried = asked = trio.current_time()
            deadline = asked + STALE_AFTER  # longer, and it is shown as behind anyway
            try:
                reply = await self.client.txn(TxnRequest(success=reads), deadline=deadline)
            except EtcdError as exc:
                self._warn(f"cannot tell whether the replica is current: {exc}")
                self._say_staleness()
                continue
            latest = max(mod_revisions(reads, reply.responses).values(), default=0)
            if await self._caught_up(deadline, latest):
                self._confirmed(asked)
            self._say_staleness()

    def _say_staleness(self) -> None:
        """Log when the replica starts to be shown as behind, and when it is current again."""
        behind = self.replica_behind_since
        if behind is not None and self._behind_said is None:
            log.warning(
                "the replica has not been confirmed current since %s (etcd out of reach?): "
                "status shows it as behind",
                time.strftime("%H:%M:%S", time.localtime(behind)),
            )
        elif behind is None and self._behind_said is not None:
            log.info("the replica is current again")
        self._behind_said = behind

    def _check_replica(self, current: dict[bytes, int]) -> None:
        """After a conflict, the replica must now agree with etcd on every compared key."""
        for key, mod in current.items():
            if key == self.keys.edges:
                ours = self.edges_mod
            elif key.startswith(self.keys.units):
                ours = self.mods.get(key[len(self.keys.units) :].decode(), 0)
            else:
                continue
            if (mod == 0 and ours != 0) or mod > ours:
                log.warning("the replica disagrees with etcd about %r: listing again", key)
                self._must_list = True
                self._reopen_watch()
                return

    # --- the replica ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow etcd until cancelled: the watch that feeds the replica, the txns of its
        changes, the heartbeat that confirms it is current, and compaction."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow)
                nursery.start_soon(self._compact_history)
                nursery.start_soon(self._batches.run)
                nursery.start_soon(self._heartbeat)
                task_status.started()
        finally:
            sizes = self._batches.sizes
            if sizes:
                changes = sum(size * count for size, count in sizes.items())
                txns = sum(sizes.values())
                log.info(
                    "committed %d changes in %d txns (%.1f per txn, at most %d)",
                    changes,
                    txns,
                    changes / txns,
                    max(sizes),
                )

    async def _take_graph_id(self) -> None:
        """Read the prefix's graph id, or create it if there is none yet, in one txn: of
        several agents opening an empty prefix at once, one creates it and the others read
        it. Sent again unchanged while etcd does not answer: an attempt that was applied
        unanswered makes the next one read the id it created."""
        key, mine = self.keys.graph, new_graph_id()
        request = TxnRequest(
            [Compare(key, "CREATE", create_revision=0)],
            [_put(key, mine.encode())],
            [Op(request_range=RangeRequest(key))],
        )
        backoff = _backoff()
        while True:
            try:
                reply = await self.client.txn(request)
                break
            except EtcdUnavailable as exc:
                self._warn(f"waiting for etcd at {self.location}: {exc}")
            except EtcdRefused as exc:
                raise SetupError(f"cannot read the graph's id at {self.location}: {exc}") from None
            await trio.sleep(backoff.next())
        if reply.succeeded:
            self.graph_id = mine
            log.info("%s holds no graph yet: its graph is %s", self.location, mine)
            return
        found = reply.responses[0].response_range
        value = found.kvs[0].value.decode(errors="replace") if found and found.kvs else ""
        if not is_graph_id(value):
            raise SetupError(
                f"{key.decode(errors='replace')} at {self.location} holds {value!r}, not a graph "
                "id: it was written by hand or by another program; give this graph another "
                "prefix, or delete the key to give this one a new id"
            )
        self.graph_id = value

    async def _first_list(self) -> None:
        backoff = _backoff()
        while True:
            try:
                await self._list()
            except EtcdUnavailable as exc:
                self._warn(f"waiting for etcd at {self.location}: {exc}")
            except EtcdCompacted:  # compacted while it was read in pages: again, afresh
                continue
            except (EtcdRefused, _Diverged) as exc:
                raise SetupError(f"cannot load the graph from {self.location}: {exc}") from None
            else:
                return
            await trio.sleep(backoff.next())

    async def _list(self) -> None:
        """Load every unit as of one revision: the replica starts again from there."""
        keys, kvs = self.keys, []
        started = trio.current_time()
        end = prefix_end(keys.units)
        reply = await self.client.range(RangeRequest(keys.units, end, limit=LIST_PAGE))
        revision = reply.header.revision
        kvs += reply.kvs
        while reply.more:
            start = kvs[-1].key + b"\0"
            request = RangeRequest(start, end, limit=LIST_PAGE, revision=revision)
            reply = await self.client.range(request)
            kvs += reply.kvs
        edges = await self.client.range(RangeRequest(keys.edges, revision=revision))
        try:
            fresh = Graph.from_images([unit_image(kv.value) for kv in kvs], self._boot)
        except (msgspec.DecodeError, KeyError, zlib.error) as exc:
            raise _Diverged(f"the units under {keys.units!r} do not form a graph: {exc}") from None
        self.graph = fresh
        self.mods = {kv.key[len(keys.units) :].decode(): kv.mod_revision for kv in kvs}
        self.edges_mod = edges.kvs[0].mod_revision if edges.kvs else 0
        self._advance(revision)
        self._confirmed(started)
        log.info(
            "listed %d units from %s at revision %d (%.0f ms)",
            len(kvs),
            self.location,
            revision,
            (trio.current_time() - started) * 1000,
        )
        if self._changes is not None:
            self._changes.replaced(revision)

    async def _follow(self) -> None:
        """Keep the replica fed: watch from the revision after the last one applied."""
        backoff = _backoff()
        while True:
            if self._must_list:
                try:
                    await self._list()
                    self._must_list = False
                except (EtcdError, _Diverged) as exc:
                    self._warn(f"cannot list the graph from {self.location}: {exc}")
                    await trio.sleep(backoff.next())
                    continue
            request = WatchCreateRequest(
                self.keys.changes,
                prefix_end(self.keys.changes),
                self.revision + 1,
                progress_notify=True,
                filters=["NODELETE"],  # change keys expiring with their lease are no news
            )
            seen = self.revision
            with trio.CancelScope() as self._watch_scope:
                try:
                    await self.client.watch(
                        request, self._on_watch, silence=self.config.watch_silence
                    )
                except EtcdCompacted as exc:
                    log.info("%s; listing the graph again", exc)
                    self._must_list = True
                except _Diverged as exc:
                    log.warning("%s; listing the graph again", exc)
                    self._must_list = True
                except EtcdError as exc:
                    self._warn(f"the watch on {self.location} broke ({exc}); resuming it")
            self._watch_scope = None
            if self.revision > seen or self._must_list:
                backoff.reset()
            else:
                await trio.sleep(backoff.next())

    def _reopen_watch(self) -> None:
        if self._watch_scope is not None:
            self._watch_scope.cancel()

    def _on_watch(self, response: WatchResponse) -> None:
        if response.is_progress:  # every event up to its revision has been sent
            self._advance(max(self.revision, response.header.revision))
            return
        # Each txn's changes are one key at one revision; a watch resumed after the last
        # revision applied brings none twice.
        seen = self.revision
        for event in response.events:
            if event.kv.mod_revision > seen:
                self._apply(event.kv)

    def _apply(self, changes: KeyValue) -> None:
        """Apply the changes of one txn, committed at its key's revision, to the replica.

        The units their records name are those the txn wrote, at that same revision: the
        changes alone tell the replica their new mod revisions, so the watch need not
        bring their images (the bulk of each txn) to every agent.
        """
        revision = changes.mod_revision
        for records in decode_changes(changes.value):
            try:
                for record in records:
                    self.graph.apply(record)
            except KeyError as exc:
                raise _Diverged(
                    f"the change at revision {revision} names unknown unit {exc}"
                ) from None
            for record in records:
                if type(record) is Forgotten:
                    self.mods.pop(record.unit, None)  # its key was deleted: absent again
                    continue
                self.mods[record.unit] = revision
                if type(record) is Edge:
                    self.edges_mod = revision
            self.revision = revision
            if self._changes is not None:
                self._changes.applied(records, revision)
        self._advance(revision)

    def _advance(self, revision: int) -> None:
        self.revision = revision
        self._advanced.set()
        self._advanced = trio.Event()

    async def _compact_history(self) -> None:
        """Every `COMPACT_EVERY`, drop etcd's history older than the previous round."""
        previous = 0
        while True:
            await trio.sleep(COMPACT_EVERY)
            if previous:
                try:
                    await self.client.compact(previous)
                except EtcdCompacted:
                    pass  # another agent compacted as far already
                except EtcdRefused as exc:
                    log.warning(
                        "not compacting etcd's history (%s): run etcd with "
                        "--auto-compaction-retention instead",
                        exc,
                    )
                    return
                except EtcdUnavailable as exc:
                    self._warn(f"could not compact etcd's history: {exc}")
            previous = self.revision

    def _warn(self, message: str) -> None:
        """Log etcd trouble: the first time, then at most every `LOG_EVERY` seconds."""
        if self._trouble.passes() is not None:
            log.warning("%s", message)


class _Leases:
    """The lease that change keys live on: granted when first needed, replaced well before
    it expires, so a change key outlives any retry of its txn by a wide margin."""

    def __init__(self, client: EtcdClient, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self.id = 0
        self.renew_at = -math.inf
        self._lock = trio.Lock()

    async def current(self, deadline: float) -> int:
        if trio.current_time() < self.renew_at:
            return self.id
        # The lock's holder has the same timeout and started first: it lets go by `deadline`.
        async with self._lock:
            if trio.current_time() >= self.renew_at:
                self.id = await self.client.grant_lease(self.ttl, deadline=deadline)
                self.renew_at = trio.current_time() + self.ttl / 3
        return self.id

    def expired(self, lease: int) -> None:
        if self.id == lease:
            self.renew_at = -math.inf


def _backoff() -> Backoff:
    """The pauses between attempts to reach etcd."""
    return Backoff(BACKOFF_FIRST, BACKOFF_LIMIT)


def _images_after(graph: Graph, records: list[Record]) -> dict[str, UnitImage]:
    """The images of the units `records` write, once applied (the replica stays as it is).

    The records are applied to a scratch graph holding copies of those units (and of the
    units their new edges point to), through `Graph.apply`, like every other change.
    """
    names = dict.fromkeys(record.unit for record in records)
    targets = {record.dep for record in records if isinstance(record, Edge)}
    images = list(graph.images(dict.fromkeys([*names, *targets])))
    missing = {dep for image in images for dep in image.deps} - {image.name for image in images}
    stubs = [UnitImage(name, "pending", 0.0, "", [], []) for name in missing]
    scratch = Graph.from_images(images + stubs)
    for record in records:
        scratch.apply(record)
    return {image.name: image for image in scratch.images() if image.name in names}


def _stored(image: UnitImage) -> bytes:
    """A unit's image as its key's value (compressed if long)."""
    value = _encode(image)
    return zlib.compress(value, 1) if len(value) > COMPRESS_OVER else value


def unit_image(value: bytes) -> UnitImage:
    """A unit key's value as an image (see `_stored`)."""
    if value[:1] == ZLIB_HEADER:
        value = zlib.decompress(value)
    return _UNIT.decode(value)


def _put(key: bytes, value: bytes) -> Op:
    return Op(request_put=PutRequest(key, value))


def _latest(key: bytes, end: bytes) -> Op:
    """The key in [key, end) changed last (its mod revision tells how far to catch up)."""
    return Op(
        request_range=RangeRequest(
            key, end, limit=1, sort_order="DESCEND", sort_target="MOD", keys_only=True
        )
    )


def _unreachable(exc: EtcdError, sent: bool) -> str:
    if sent:
        return (
            f"etcd stopped answering while the change was being committed ({exc}): it may or "
            "may not have been made; `unitsync sync status` shows which once etcd is back"
        )
    return f"etcd is unreachable ({exc}); nothing was changed: retry once it is back"
