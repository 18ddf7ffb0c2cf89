"""The journal on real files: what was acknowledged comes back, damage is caught."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import trio

from unitsync.agent.core.graph import Graph
from unitsync.agent.core.records import BootImage, Known, UnitImage
from unitsync.agent.store.journal import logfile
from unitsync.agent.store.journal.disk import RealDisk
from unitsync.agent.store.journal.writer import LOG_NAME, SNAPSHOT_NAME, Journal, JournalError
from unitsync.wire.errors import AgentGone
from unitsync.wire.graph_id import is_graph_id

GRAPH = "0123456789abcdef" * 2
"""A graph id for the files these tests write by hand."""


def images(graph: Graph) -> list[UnitImage]:
    return sorted(graph.images(), key=lambda image: image.name)


def scripted(graph: Graph, step: int) -> list:
    """A varied command for step `step`, returning the records it applied."""
    name, dep = f"unit-{step % 7}", f"dep-{step % 3}"
    match step % 6:
        case 0:
            return graph.want(name, [dep], now=1000.0 + step)[0]
        case 1:
            return graph.admit(name, rerun=True, now=1000.0 + step) + graph.start(
                dep, rerun=True, now=1000.0 + step
            )
        case 2:
            return graph.complete(dep, force=True, now=1000.0 + step)
        case 3:
            return graph.fail(name, f"exit status {step}", now=1000.0 + step, force=True)
        case 4:
            return graph.reset(name, now=1000.0 + step) if name in graph.units else []
        case _:
            return graph.complete(name, force=True, now=1000.0 + step)


async def run_commands(journal: Journal, graph: Graph, steps: range) -> None:
    """Apply and journal each step, waiting for it to be durable, as the agent does."""
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for step in steps:
            await journal.durable(journal.append(scripted(graph, step)))
        nursery.cancel_scope.cancel()


def reopen(state_dir: Path, **kw: object) -> Graph:
    journal = Journal.open(state_dir, **kw)  # type: ignore[arg-type]
    graph = journal.graph
    journal.close()
    return graph


async def test_everything_acknowledged_comes_back(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    graph = journal.graph
    await run_commands(journal, graph, range(60))
    journal.close()
    recovered = reopen(tmp_path)
    assert images(recovered) == images(graph)
    unit = recovered.units["unit-3"]
    assert unit.history and unit.history[-1].at == unit.since


async def test_concurrent_changes_share_fsyncs_and_wait_for_them(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    graph = journal.graph
    acknowledged: list[str] = []

    async def client(i: int) -> None:
        records = graph.want(f"client-{i}", [f"base-{i % 4}"], now=float(i))[0]
        await journal.durable(journal.append(records))
        acknowledged.append(f"client-{i}")

    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        async with trio.open_nursery() as clients:
            for i in range(200):
                clients.start_soon(client, i)
        nursery.cancel_scope.cancel()
    journal.close()
    assert len(acknowledged) == 200
    assert journal.fsyncs < 200 / 4, f"{journal.fsyncs} fsyncs for 200 appends"
    assert set(acknowledged) <= set(reopen(tmp_path).units)


async def test_durable_returns_only_after_the_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(tmp_path)
    graph = journal.graph
    synced_sizes: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fsync", fsync)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for i in range(5):
            await journal.durable(journal.append(graph.want(f"a{i}", ["b"], now=1.0)[0]))
            assert synced_sizes and synced_sizes[-1] == (tmp_path / LOG_NAME).stat().st_size
        nursery.cancel_scope.cancel()
    journal.close()


async def test_cancelling_the_writer_flushes_what_is_buffered(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    graph = journal.graph
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        journal.append(graph.want("late", ["x"], now=1.0)[0])  # appended, never awaited
        nursery.cancel_scope.cancel()
    journal.close()
    assert "late" in reopen(tmp_path).units


async def test_a_torn_tail_is_cut_at_every_byte_of_the_last_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "source"
    journal = Journal.open(source)
    graph = journal.graph
    await run_commands(journal, graph, range(12))
    before = images(graph)
    last_start = (source / LOG_NAME).stat().st_size
    await run_commands(journal, graph, range(12, 13))
    journal.close()
    data = (source / LOG_NAME).read_bytes()
    assert len(data) > last_start
    for cut in range(last_start + 1, len(data)):
        state_dir = tmp_path / f"cut-{cut}"
        state_dir.mkdir(mode=0o700)
        (state_dir / LOG_NAME).write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="unitsync.journal"):
            assert images(reopen(state_dir)) == before, f"cut at {cut}"
        assert f"at byte offset {last_start}" in caplog.text
        assert (state_dir / LOG_NAME).stat().st_size == last_start


async def test_damage_before_the_tail_stops_recovery_and_changes_nothing(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    graph = journal.graph
    await run_commands(journal, graph, range(30))
    journal.close()
    path = tmp_path / LOG_NAME
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x10
    path.write_bytes(bytes(data))

    def listing() -> dict[str, tuple[bytes, int]]:
        """Every file but the lock (which records the pid of whoever tried last)."""
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in tmp_path.iterdir()
            if p.name != "lock"
        }

    before = listing()
    with pytest.raises(JournalError) as caught:
        Journal.open(tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert "byte offset" in message and "--salvage" in message
    offset = int(message.split("byte offset ")[1].split(";")[0])
    assert offset <= middle
    assert listing() == before


async def test_salvage_keeps_the_valid_prefix_and_moves_the_damage_aside(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    graph = journal.graph
    await run_commands(journal, graph, range(10))
    prefix = images(graph)
    cut = (tmp_path / LOG_NAME).stat().st_size
    await run_commands(journal, graph, range(10, 20))
    journal.close()
    path = tmp_path / LOG_NAME
    data = bytearray(path.read_bytes())
    data[cut + 10] ^= 0xFF  # inside the first entry after the prefix
    path.write_bytes(bytes(data))
    assert images(reopen(tmp_path, salvage=True)) == prefix
    [aside] = tmp_path.glob(f"{LOG_NAME}.damaged-*")
    assert aside.read_bytes() == bytes(data)
    assert images(reopen(tmp_path)) == prefix  # and the kept prefix is a clean journal


def crash_at_hook(step: str) -> Callable[[pytest.MonkeyPatch], None]:
    def install(monkeypatch: pytest.MonkeyPatch) -> None:
        def crash(self: Journal, at: str) -> None:
            if at == step:
                raise SystemExit(f"crash injected at {step}")

        monkeypatch.setattr(Journal, "_crash_point", crash)

    return install


def crash_at_rename(nth: int) -> Callable[[pytest.MonkeyPatch], None]:
    """Crash after a temp file is written and fsynced but before its rename."""

    def install(monkeypatch: pytest.MonkeyPatch) -> None:
        calls = []
        real = RealDisk.rename

        def rename(disk: RealDisk, src: Path, dst: Path) -> None:
            calls.append(dst)
            if len(calls) == nth:
                raise SystemExit(f"crash injected before rename #{nth}")
            real(disk, src, dst)

        monkeypatch.setattr(RealDisk, "rename", rename)

    return install


@pytest.mark.parametrize(
    "inject",
    [
        crash_at_hook("batch-written"),
        crash_at_rename(1),  # snapshot.tmp written, not renamed
        crash_at_hook("snapshot-written"),
        crash_at_rename(2),  # journal.tmp written, not renamed
        crash_at_hook("log-replaced"),
    ],
    ids=["batch", "snapshot-tmp", "snapshot", "log-tmp", "log"],
)
async def test_a_crash_between_compaction_steps_recovers_the_same_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inject: Callable[[pytest.MonkeyPatch], None]
) -> None:
    journal = Journal.open(tmp_path, compact_ratio=0.0, compact_min_records=20)
    graph = journal.graph
    inject(monkeypatch)
    acknowledged = images(graph)
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            for step in range(40):
                await journal.durable(journal.append(scripted(graph, step)))
                acknowledged = images(graph)
    assert caught.group_contains(SystemExit, match="crash injected", depth=None)
    journal.close()
    monkeypatch.undo()
    assert images(reopen(tmp_path)) == acknowledged
    assert not list(tmp_path.glob("*.tmp"))
    assert images(reopen(tmp_path)) == acknowledged  # and again, after the cleanup


async def test_compaction_keeps_state_and_shrinks_the_log(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, compact_ratio=0.0, compact_min_records=50)
    graph = journal.graph
    await run_commands(journal, graph, range(400))
    journal.close()
    assert (tmp_path / SNAPSHOT_NAME).exists()
    assert journal.generation > 1
    assert (tmp_path / LOG_NAME).stat().st_size < 50 * 100
    assert images(reopen(tmp_path)) == images(graph)


def _entry_with_body(body: bytes) -> bytes:
    return logfile.ENTRY_HEADER.pack(len(body), zlib.crc32(body)) + body


BAD_ENTRIES = {
    "impossible entry length 0": logfile.ENTRY_HEADER.pack(0, 0),
    "entry fails its checksum": logfile.ENTRY_HEADER.pack(3, 12345) + b"abc",
    "entry passes its checksum but does not decode": _entry_with_body(b"\x91\xc0"),
}


@pytest.mark.parametrize("why", BAD_ENTRIES)
def test_damage_is_named_and_located(why: str) -> None:
    good = logfile.entry([Known("a", 1.0)])
    head = logfile.log_header(0, GRAPH)
    data = head + good + BAD_ENTRIES[why] + good
    with pytest.raises(logfile.Damaged) as caught:
        list(logfile.entries(data, logfile.Scan(end=len(head))))
    assert str(caught.value) == f"{why} at byte offset {len(head) + len(good)}"


@pytest.mark.parametrize(
    ("tail", "why"),
    [(b"\x00\x00", "incomplete entry header"), (b"\x00\x00\x00\x09....", "runs past the end")],
)
def test_a_torn_tail_is_named_and_the_rest_is_kept(tail: bytes, why: str) -> None:
    head = logfile.log_header(0, GRAPH)
    good = logfile.entry([Known("a", 1.0)])
    scan = logfile.Scan(end=len(head))
    assert list(logfile.entries(head + good + tail, scan)) == [[Known("a", 1.0)]]
    assert scan.end == len(head + good) and scan.count == 1
    assert scan.torn is not None and why in scan.torn


def test_a_log_newer_than_its_snapshot_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    (tmp_path / LOG_NAME).write_bytes(logfile.log_header(3, GRAPH))
    with pytest.raises(JournalError, match="snapshot is missing"):
        Journal.open(tmp_path)


def test_a_damaged_snapshot_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    data = bytearray(
        logfile.snapshot(
            1, BootImage(1, "x", 1.0), [UnitImage("a", "pending", 1.0, "", [], [])], GRAPH
        )
    )
    data[-1] ^= 1
    (tmp_path / SNAPSHOT_NAME).write_bytes(bytes(data))
    with pytest.raises(JournalError, match=f"{SNAPSHOT_NAME} is damaged"):
        Journal.open(tmp_path)


def test_one_agent_per_state_dir(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    try:
        with pytest.raises(JournalError, match=f"pid {os.getpid()}"):
            Journal.open(tmp_path)
    finally:
        journal.close()
    reopen(tmp_path)  # released on close


def test_state_dir_and_files_are_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    reopen(state_dir)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for path in state_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_a_write_failure_stops_acknowledgements_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(tmp_path)
    graph = journal.graph

    def broken_disk(fd: int, data: object) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "write", broken_disk)
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            seq = journal.append(graph.want("a", ["b"], now=1.0)[0])
            # Shielded, as the service waits: without the fix this would wait forever.
            with trio.CancelScope(shield=True), trio.fail_after(10):
                await journal.durable(seq)
    assert caught.group_contains(JournalError, match="Input/output error", depth=None)
    assert caught.group_contains(AgentGone, match="may or may not have been saved", depth=None)
    assert not caught.group_contains(trio.TooSlowError, depth=None)
    journal.close()


FIXTURES = Path(__file__).parent / "fixtures"


def held(graph: Graph) -> dict[str, object]:
    """Everything a graph holds, as plain data: its boot and every unit, whole."""
    units = {
        name: {
            "status": unit.status,
            "since": unit.since,
            "reason": unit.reason,
            "token": unit.token,
            "deps": list(unit.deps),
            "dependents": sorted(unit.dependents),
            "history": list(unit.history),
            "once": unit.once,
            "owner": unit.owner,
            "host": unit.host,
        }
        for name, unit in graph.units.items()
    }
    boot = [graph.boot, graph.boot_identity, graph.boot_since]
    data = msgspec.to_builtins({"boot": boot, "units": units})
    for name, unit in data["units"].items():  # restarts came later (issue 24): none here
        assert graph.units[name].restarts == 0
        for entry in unit["history"]:
            assert entry.pop("restart") is False
    return data


def loaded(fixture: str, tmp_path: Path) -> tuple[dict, dict]:
    """Today's code loads a checked-in state dir: (what it holds, what was expected).
    Loading must not rewrite the snapshot: it is read as it was written."""
    source = FIXTURES / fixture
    for name in ("snapshot.bin", "journal.log"):
        shutil.copy(source / name, tmp_path / name)
    with Journal.open(tmp_path) as journal:
        graph = held(journal.graph)
    assert (source / "snapshot.bin").read_bytes() == (tmp_path / "snapshot.bin").read_bytes()
    return graph, json.loads((source / "expected.json").read_text())


def test_a_state_dir_written_by_0_1_0_still_loads(tmp_path: Path) -> None:
    """The on-disk format is pinned: a snapshot and journal written by 0.1.0 load unchanged
    (what 0.1.0 held: no boots, owners or one-time units yet)."""
    graph, expected = loaded("journal-v1", tmp_path)
    then = ("status", "since", "reason", "token", "deps", "dependents")
    units = {
        name: {key: unit[key] for key in then}
        | {"history": [{k: v for k, v in e.items() if k != "boot"} for e in unit["history"]]}
        for name, unit in graph["units"].items()
    }
    assert units == expected
    assert {len(unit["history"]) for unit in expected.values()} > {0}  # not a trivial state


def test_a_state_dir_written_in_format_2_still_loads(tmp_path: Path) -> None:
    """Format 2 (boots, one-time units, owners, forget, reasons) is pinned the same way."""
    graph, expected = loaded("journal-v2", tmp_path)
    assert graph == expected
    units = expected["units"]
    assert units["git"]["once"] and units["git"]["status"] == "completed"  # kept by boot 2
    assert units["app"]["owner"] is not None
    assert {entry["boot"] for entry in units["app"]["history"]} == {1, 2}


def test_a_state_dir_written_in_format_3_loads_as_it_is(tmp_path: Path) -> None:
    """Format 3 (the graph's id in the snapshot and the log header) is pinned the same way;
    loading it rewrites neither file (the log is copied on recovery, byte for byte)."""
    graph, expected = loaded("journal-v3", tmp_path)
    graph_id = expected.pop("graph")
    assert graph == expected
    assert (FIXTURES / "journal-v3" / LOG_NAME).read_bytes() == (tmp_path / LOG_NAME).read_bytes()
    with Journal.open(tmp_path) as journal:
        assert journal.graph_id == graph_id
    assert expected["units"]["git"]["once"] and expected["units"]["app"]["owner"] is not None


def test_a_state_dir_written_in_format_4_keeps_every_condition(tmp_path: Path) -> None:
    """Format 4 (each edge's condition, SPEC §14) is pinned the same way: the conditions in
    the snapshot and those the log's records set or change load as they were written."""
    graph, expected = loaded("journal-v4", tmp_path)
    graph_id, conditions = expected.pop("graph"), expected.pop("conditions")
    assert graph == expected
    with Journal.open(tmp_path) as journal:
        assert journal.graph_id == graph_id
        held_conditions = {n: dict(u.deps) for n, u in journal.graph.units.items() if u.deps}
        # logs failed before it ever started: lint, on `finished` when it went ahead, now
        # wants it on `started`, which that failure fails.
        assert journal.graph.readiness("lint").failed == "logs"
    assert held_conditions == conditions
    assert conditions["api"] == {"db": "finished", "cache": "completed"}
    assert conditions["web"] == {"api": "finished", "logs": "started"}  # snapshot, then log
    assert expected["units"]["web"]["history"][-2]["reason"] == "went ahead although api failed"


@pytest.mark.parametrize("fixture", ["journal-v1", "journal-v2", "journal-v3"])
def test_an_older_state_dir_loads_with_completed_edges(fixture: str, tmp_path: Path) -> None:
    """Before format 4 every edge meant "completed": that is what each loads as."""
    loaded(fixture, tmp_path)
    with Journal.open(tmp_path) as journal:
        edges = [on for unit in journal.graph.units.values() for on in unit.deps.values()]
    assert edges and set(edges) == {"completed"}


@pytest.mark.parametrize("fixture", ["journal-v1", "journal-v2"])
async def test_an_older_state_dir_takes_a_graph_id_once_and_keeps_it(
    fixture: str, tmp_path: Path
) -> None:
    """A state dir written before graphs had ids takes one on its first open, durably (its
    log is rewritten with today's header), and keeps it across restarts and compactions."""
    _graph, _expected = loaded(fixture, tmp_path)  # the first open
    header = logfile.read_log_header((tmp_path / LOG_NAME).read_bytes())
    assert is_graph_id(header.graph)
    with Journal.open(tmp_path) as journal:
        assert journal.graph_id == header.graph  # the same after a restart
    journal = Journal.open(tmp_path, compact_ratio=0.0, compact_min_records=1)
    generation = journal.generation
    await run_commands(journal, journal.graph, range(5))
    journal.close()
    assert journal.generation > generation  # compacted: a snapshot of format 3
    assert (tmp_path / SNAPSHOT_NAME).read_bytes()[:4] == logfile.SNAPSHOT_MAGIC
    for _ in range(2):
        with Journal.open(tmp_path) as journal:
            assert journal.graph_id == header.graph


def test_a_new_state_dir_gets_its_own_graph_id(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "a") as a, Journal.open(tmp_path / "b") as b:
        assert is_graph_id(a.graph_id) and is_graph_id(b.graph_id)
        assert a.graph_id != b.graph_id
    with Journal.open(tmp_path / "a") as again:
        assert again.graph_id == a.graph_id


def test_a_log_of_another_graph_than_its_snapshot_is_refused(tmp_path: Path) -> None:
    """The two files of a state dir name one graph; a log put beside another state dir's
    snapshot is refused before anything is changed."""
    for name in ("snapshot.bin", "journal.log"):
        shutil.copy(FIXTURES / "journal-v3" / name, tmp_path / name)
    data = bytearray((tmp_path / LOG_NAME).read_bytes())
    generation = logfile.read_log_header(bytes(data)).generation
    data[: logfile.LOG_HEADER.size] = logfile.log_header(generation, GRAPH)
    (tmp_path / LOG_NAME).write_bytes(bytes(data))
    with pytest.raises(JournalError, match=f"{LOG_NAME} belongs to graph {GRAPH}, but"):
        Journal.open(tmp_path)
    assert (tmp_path / LOG_NAME).read_bytes() == bytes(data)
