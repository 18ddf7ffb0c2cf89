"""The etcd client against real etcd members: the gateway's JSON, failover, watches, TLS, auth."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from unitsync.agent.store.etcd.client import EtcdClient, EtcdCompacted, EtcdRefused, EtcdUnavailable
from unitsync.agent.store.etcd.messages import (
    Compare,
    Op,
    PutRequest,
    RangeRequest,
    TxnRequest,
    WatchCreateRequest,
    WatchResponse,
    prefix_end,
)

from harness.etcd_cluster import ETCD, EtcdCluster, Tls, free_port


def put(key: bytes, value: bytes) -> Op:
    return Op(request_put=PutRequest(key, value))


class Seen:
    """What a watch passed on, with a way to wait for it to show something."""

    def __init__(self) -> None:
        self.responses: list[WatchResponse] = []
        self._changed = trio.Event()

    def __call__(self, response: WatchResponse) -> None:
        self.responses.append(response)
        self._changed.set()
        self._changed = trio.Event()

    @property
    def revisions(self) -> list[int]:
        return [event.kv.mod_revision for reply in self.responses for event in reply.events]

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


async def watch_into(
    client: EtcdClient, key: bytes, start: int, seen: Seen, silence: float = 30
) -> BaseException:
    """Follow a watch on every key under `key` into `seen`; return how it ended."""
    request = WatchCreateRequest(key, prefix_end(key), start, progress_notify=True)
    try:
        await client.watch(request, seen, silence=silence)
    except Exception as exc:
        return exc
    raise AssertionError("a watch only ends by raising")


async def test_a_txn_compares_and_answers_from_either_branch(etcd: EtcdCluster) -> None:
    client = EtcdClient(tuple(etcd.endpoints))
    key = b"client-txn/k"
    absent = Compare(key, "CREATE", create_revision=0)
    read = Op(request_range=RangeRequest(key))
    first = await client.txn(TxnRequest([absent], [put(key, b"\x00\xff")], [read]))
    again = await client.txn(TxnRequest([absent], [put(key, b"other")], [read]))
    await client.aclose()
    assert first.succeeded and first.header.revision > 0
    # The failed branch's reply leaves `succeeded` out (a default); the range says why.
    assert not again.succeeded
    (kv,) = again.responses[0].response_range.kvs  # type: ignore[union-attr]
    assert (kv.key, kv.value, kv.create_revision) == (key, b"\x00\xff", first.header.revision)


async def test_a_call_moves_on_to_the_next_member(etcd: EtcdCluster) -> None:
    """A dead endpoint first in the list costs a refused connection, not a failure."""
    dead = f"127.0.0.1:{_closed_port()}"
    client = EtcdClient((dead, *etcd.endpoints))
    reply = await client.range(RangeRequest(b"anything"))
    await client.aclose()
    assert reply.header.revision > 0


async def test_no_member_reachable_is_unavailable_and_nothing_was_sent() -> None:
    ports = [_closed_port(), _closed_port()]
    client = EtcdClient(tuple(f"127.0.0.1:{port}" for port in ports))
    with pytest.raises(EtcdUnavailable) as caught:
        await client.txn(TxnRequest(success=[put(b"k", b"v")]))
    await client.aclose()
    assert not caught.value.maybe_applied
    for port in ports:
        assert f"127.0.0.1:{port}: cannot connect" in str(caught.value)


async def test_a_quiet_watch_gets_progress_notifications_and_then_events(
    etcd: EtcdCluster,
) -> None:
    """A watch with nothing to say is not timed out: etcd's notifications keep it alive."""
    client = EtcdClient(tuple(etcd.endpoints))
    seen = Seen()
    start = etcd.put(b"client-quiet/before", b"x") + 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_into, client, b"client-quiet/", start, seen, 2.0)
        await trio.sleep(3)  # longer than the silence limit: only notifications filled it
        revision = etcd.put(b"client-quiet/after", b"y")
        await seen.until(lambda: revision in seen.revisions)
        nursery.cancel_scope.cancel()
    await client.aclose()
    assert sum(response.is_progress for response in seen.responses) >= 3
    assert seen.revisions == [revision]


async def test_a_compacted_start_revision_ends_the_watch_with_the_compaction(
    etcd: EtcdCluster,
) -> None:
    client = EtcdClient(tuple(etcd.endpoints))
    old = etcd.put(b"client-compact/k", b"1")
    latest = etcd.put(b"client-compact/k", b"2")
    await client.compact(latest)
    ended = await watch_into(client, b"client-compact/", old, Seen())
    await client.aclose()
    assert isinstance(ended, EtcdCompacted)
    assert ended.revision == latest


async def test_a_watch_resumed_elsewhere_after_its_member_dies_misses_nothing(
    fresh_etcd: EtcdCluster,
) -> None:
    """Kill the watch's member; writes go on; the watch, resumed at the last revision + 1 on
    another member, sees every one of them exactly once."""
    etcd = fresh_etcd
    client = EtcdClient(tuple(etcd.endpoints))
    seen = Seen()
    written = [etcd.put(b"resume/k", b"0")]
    async with trio.open_nursery() as nursery:
        ended = trio.Event()

        async def follow() -> None:
            assert isinstance(await watch_into(client, b"resume/", written[0], seen), Exception)
            ended.set()

        nursery.start_soon(follow)
        await seen.until(lambda: seen.revisions == written)
        etcd.stop_member(0, signal.SIGKILL)  # the first endpoint: the one being watched
        await ended.wait()
        written += [etcd.put(b"resume/k", str(i).encode()) for i in range(1, 20)]
        nursery.start_soon(watch_into, client, b"resume/", seen.revisions[-1] + 1, seen)
        await seen.until(lambda: seen.revisions[-1] == written[-1])
        nursery.cancel_scope.cancel()
    await client.aclose()
    assert seen.revisions == written


async def test_a_watch_on_a_hung_member_is_given_up(fresh_etcd: EtcdCluster) -> None:
    """A stopped process keeps its connections open but says nothing, not even progress
    notifications: the watch gives it up after its silence limit instead of waiting forever."""
    etcd = fresh_etcd
    client = EtcdClient(tuple(etcd.endpoints))
    done: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        ended = trio.Event()

        async def follow() -> None:
            done.append(await watch_into(client, b"hung/", 1, Seen(), silence=2.0))
            ended.set()

        nursery.start_soon(follow)
        await trio.sleep(1)
        etcd.stop_member(0, signal.SIGSTOP)
        try:
            await ended.wait()
        finally:
            etcd.resume_member(0)
    await client.aclose()
    assert isinstance(done[0], EtcdUnavailable)
    assert "showed nothing for 2s" in str(done[0])


async def test_a_hung_member_is_hedged_and_a_deadline_bounds_the_whole_call(
    fresh_etcd: EtcdCluster,
) -> None:
    """A hung member (SIGSTOP: its connections stay open, nothing answers; as a member cut
    off by the network) does not hold a call: after the hedge delay the same request goes
    to the next member, whose answer is taken, and the next call starts there. With every
    member hung, the call ends at its deadline, each member having been tried: the txn
    may have reached them."""
    etcd = fresh_etcd
    hung = (etcd.leader() + 1) % 3  # a follower: the others keep their leader and answer
    order = [(hung + step) % 3 for step in range(3)]
    client = EtcdClient(tuple(etcd.endpoints[i] for i in order))
    await client.range(RangeRequest(b"hedge/warm-up"))  # a connection to the first is open
    asked: list[str] = []
    post = client._post

    async def recording(url: str, content: bytes, trace):  # type: ignore[no-untyped-def]
        asked.append(url.split("//")[1].split("/")[0])
        return await post(url, content, trace)

    client._post = recording  # type: ignore[method-assign]
    etcd.stop_member(hung, signal.SIGSTOP)
    try:
        await client.txn(TxnRequest(success=[put(b"hedge/k", b"v")]))
        answered_by = asked[-1]
        asked.clear()
        reply = await client.range(RangeRequest(b"hedge/k"))
        # Straight to the member that answered last (on a busy machine its answer may take
        # long enough to be hedged too: the first one asked is what counts).
        assert asked[0] == answered_by
        for i in order[1:]:
            etcd.stop_member(i, signal.SIGSTOP)
        with pytest.raises(EtcdUnavailable) as caught:
            await client.txn(
                TxnRequest(success=[put(b"hedge/k", b"w")]), deadline=trio.current_time() + 1
            )
    finally:
        for i in order:
            etcd.resume_member(i)
        await client.aclose()
    assert answered_by != etcd.endpoints[hung]
    assert reply.kvs[0].value == b"v"
    assert caught.value.maybe_applied
    said = caught.value.failures
    assert len(said) == 3 and said[0].endswith("no answer in time"), said
    assert all(s.endswith(("no answer in time", "not tried, no time left")) for s in said)


@pytest.fixture
def single_etcd(tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    tls = Tls.issue(tmp_path) if request.param == "tls" else None
    cluster = EtcdCluster(tmp_path, size=1, tls=tls).start()
    yield cluster
    cluster.close()


@pytest.mark.parametrize("single_etcd", ["tls"], indirect=True)
async def test_tls_with_a_client_certificate(single_etcd: EtcdCluster) -> None:
    tls = single_etcd.tls
    assert tls is not None
    endpoints = tuple(single_etcd.endpoints)
    client = EtcdClient(endpoints, ca=tls.ca, cert=tls.client_cert, key=tls.client_key)
    await client.txn(TxnRequest(success=[put(b"tls/k", b"v")]))
    reply = await client.range(RangeRequest(b"tls/k"))
    await client.aclose()
    assert reply.kvs[0].value == b"v"
    anonymous = EtcdClient(endpoints, ca=tls.ca)  # the cluster wants a client certificate
    with pytest.raises(EtcdUnavailable):
        await anonymous.range(RangeRequest(b"tls/k"))
    await anonymous.aclose()


@pytest.mark.parametrize("single_etcd", ["plain"], indirect=True)
async def test_user_and_password(single_etcd: EtcdCluster) -> None:
    """Calls and watches carry a token; a wrong password or a key outside the user's
    permissions is refused, naming the reason."""
    single_etcd.enable_auth("ann", "ann-pw", "ws/")
    endpoints = tuple(single_etcd.endpoints)
    client = EtcdClient(endpoints, user="ann", password="ann-pw")
    reply = await client.txn(TxnRequest(success=[put(b"ws/k", b"v")]))
    seen = Seen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_into, client, b"ws/", reply.header.revision, seen)
        await seen.until(lambda: bool(seen.revisions))
        nursery.cancel_scope.cancel()
    with pytest.raises(EtcdRefused, match="permission denied"):
        await client.txn(TxnRequest(success=[put(b"elsewhere/k", b"v")]))
    await client.aclose()
    wrong = EtcdClient(endpoints, user="ann", password="nope")
    with pytest.raises(EtcdRefused, match=r"refused user 'ann'.*invalid user ID or password"):
        await wrong.range(RangeRequest(b"ws/k"))
    await wrong.aclose()
    anonymous = EtcdClient(endpoints)
    with pytest.raises(EtcdRefused, match="requires authentication"):
        await anonymous.range(RangeRequest(b"ws/k"))
    await anonymous.aclose()


@pytest.mark.skipif(
    ETCD is None, reason="etcd is not installed (Debian: apt-get install etcd-server)"
)
async def test_an_expired_token_is_replaced(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path, size=1, extra=["--auth-token-ttl", "1"]).start()
    try:
        cluster.enable_auth("ann", "ann-pw", "ws/")
        client = EtcdClient(tuple(cluster.endpoints), user="ann", password="ann-pw")
        await client.range(RangeRequest(b"ws/k"))
        stale = client._token
        await trio.sleep(2.5)  # the token expires after a second without use
        await client.range(RangeRequest(b"ws/k"))
        assert client._token != stale
        await client.aclose()
    finally:
        cluster.close()


def _closed_port() -> int:
    """A loopback port nobody listens on (connecting is refused at once)."""
    return free_port()
