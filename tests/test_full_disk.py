"""A real full disk (SPEC §4): an agent whose state dir is on a 1 MiB tmpfs, filled by clients.

The test mounts the tmpfs itself (CI runs as root) and says why it is skipped where it
cannot. Clients fill the disk until changes are refused; then: the refusal is exit 6 and
names the state dir, the log ends with a whole entry, reads and waits go on, nothing
refused is kept; after a file is removed, the same agent takes changes again; after a
restart, every acknowledged change is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from unitsync.agent.serve.server import AgentConfig
from unitsync.agent.store.journal import logfile
from unitsync.agent.store.journal.writer import LOG_NAME
from unitsync.client import Client
from unitsync.client.owners import owner
from unitsync.wire.errors import NotDurable

from conftest import AgentProcess, run_cli, spawn_cli

DISK_SIZE = "1m"
BALLAST = 256 * 1024
"""A file put on the disk first and removed later, to free space as a user would."""
WRITERS = 4
REASON = 4000
"""Bytes per reason: each change is a journal entry of about 4 KiB."""


@pytest.fixture
def tiny_disk(short_tmp: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test, unmounted after it."""
    mount = short_tmp / "disk"
    mount.mkdir(mode=0o700)
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (CI runs as root); this is uid {os.geteuid()}")
    command = ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(mount)]
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


@dataclass
class Writer:
    """A client failing its own new units with long reasons until the disk is full."""

    index: int
    socket: Path
    acknowledged: dict[str, str] = field(default_factory=dict)
    refused: list[NotDurable] = field(default_factory=list)
    refused_units: list[str] = field(default_factory=list)

    def run(self, refusals: int = 3) -> None:
        """Until `refusals` changes were refused (the disk is full)."""
        with Client(self.socket) as client:
            for i in range(10_000):
                unit, reason = f"w{self.index}-{i}", f"{i:06d}" + "x" * (REASON - 6)
                try:
                    client.fail(unit, reason, force=True)
                except NotDurable as exc:
                    self.refused.append(exc)
                    self.refused_units.append(unit)
                    if len(self.refused) == refusals:
                        return
                    continue
                self.acknowledged[unit] = reason


class Watch:
    """`status --watch -o json` in the background, its events collected."""

    def __init__(self, socket: Path) -> None:
        self.proc = spawn_cli("sync", "status", "--watch", "-o", "json", socket=socket)
        self.events: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        while not self.events:  # the first snapshot: the watch is on
            time.sleep(0.01)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):  # the last line, cut by Ctrl-C
                self.events.append(json.loads(line))

    def shown(self) -> set[str]:
        """Every unit the watch has shown (a watcher that falls behind gets snapshots)."""
        names = set()
        for event in list(self.events):
            units = event["units"] if event["event"] == "snapshot" else [event["unit"]]
            names.update(unit["name"] for unit in units)
        return names

    def stop(self, once_shown: set[str]) -> list[dict]:
        """Wait until every unit in `once_shown` was shown changed; then stop watching."""
        deadline = time.monotonic() + 60
        while not once_shown <= self.shown() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        return self.events


def statuses(socket: Path) -> dict[str, tuple[str, str]]:
    with Client(socket) as client:
        return {view.name: (view.status, view.reason) for view in client.status()}


def test_a_full_disk_refuses_changes_and_the_same_agent_recovers(
    tiny_disk: Path, short_tmp: Path
) -> None:
    (tiny_disk / "ballast").write_bytes(b"\0" * BALLAST)
    state_dir = tiny_disk / "state"
    config = AgentConfig(socket=short_tmp / "run" / "agent.sock", state_dir=state_dir)
    socket = config.socket
    agent = AgentProcess(config).start()
    with Client(socket) as client:
        client.want("app", "db")
    waiter = spawn_cli("sync", "start", "app", "--timeout", "5m", socket=socket)
    watch = Watch(socket)
    try:
        assert waiter.stderr is not None
        assert waiter.stderr.readline().strip() == "app: waiting for db"

        writers = [Writer(i, socket) for i in range(WRITERS)]
        threads = [threading.Thread(target=writer.run) for writer in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        filler = Writer(WRITERS, socket)  # the last bits, one change at a time
        filler.run(refusals=1)
        writers.append(filler)
        acknowledged = {u: r for w in writers for u, r in w.acknowledged.items()}
        assert len(acknowledged) > 100, "the disk filled up before the test got going"

        # The refusal: exit 6, the state dir named, what to do said; the log cut back.
        refusal = str(writers[0].refused[0])
        assert str(state_dir) in refusal and "is full" in refusal
        assert "free some space there and retry" in refusal
        full = run_cli(
            "sync", "fail", "one-more", "--force", "--reason", "x" * REASON, socket=socket
        )
        print(f"\n{len(acknowledged)} changes fitted; then: {full.err}")
        assert full.code == 6, full.err
        assert "not saved" in full.err and str(state_dir) in full.err
        data = (state_dir / LOG_NAME).read_bytes()
        scan = logfile.Scan(end=logfile.LOG_HEADER.size)
        assert sum(1 for _ in logfile.entries(data, scan)) == len(acknowledged) + 2  # + boot, want
        assert scan.torn is None and scan.end == len(data)

        # Reads and waits go on; nothing refused was kept.
        seen = statuses(socket)
        assert {u: seen[u] for u in acknowledged} == {
            u: ("failed", r) for u, r in acknowledged.items()
        }
        refused_units = [u for w in writers for u in w.refused_units] + ["one-more"]
        assert not set(refused_units) & set(seen)
        assert waiter.poll() is None
        events = watch.stop(once_shown=set(acknowledged))
        assert [e["event"] for e in events].count("snapshot") >= 2  # sent again after a refusal
        assert set(acknowledged) <= watch.shown()
        assert not set(refused_units) & watch.shown()  # nothing refused was ever shown

        # Space returns: the same agent takes changes again, and the waiter proceeds.
        (tiny_disk / "ballast").unlink()
        with Client(socket) as client:
            client.start("db")
            client.complete("db")
        _out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
        assert "app: started" in err

        code, log = agent.stop()
        assert code == 0, log
        assert "refusing changes until there is room" in log
        assert "changes are saved again" in log
        agent.start()
        seen = statuses(socket)
        assert {u: seen[u] for u in acknowledged} == {
            u: ("failed", r) for u, r in acknowledged.items()
        }
        assert seen["db"][0] == "completed" and seen["app"][0] == "started"
        assert not set(refused_units) & set(seen)
    finally:
        for proc in (waiter, watch.proc):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()


# --- a journal that fills its own disk (SPEC §12) -----------------------------------------------

CHURN = 16_000
"""Changes of one unit (start, complete, reset, ...): the measured sequence. Their log is
about 1 MiB; the graph's snapshot is a few kilobytes."""
AFTER = 10_000
"""Changes made once the filler is gone, with nothing but the journal on the disk: their
log alone would fill it."""
FILLER = 700 * 1024
FILLER_STEP = 4 * 1024
"""What the user frees at each refusal: a page at a time, less than a snapshot takes, so
a journal that goes on appending eats it before it can compact."""
PATIENCE = 120.0
"""How long a change may stay refused with nothing but the journal on the disk: only a
journal that never frees its disk takes that long."""


SCRIPT = "/bin/sh /workspaces/app/.devcontainer/start-u.sh"
"""The script each start names as the run's owner, as `unitsync sync start` does."""


def churn_change(client: Client, i: int) -> None:
    if i % 3 == 0:
        me = owner(os.getpid(), "start")
        client.start("u", owner=me and msgspec.structs.replace(me, command=SCRIPT))
    elif i % 3 == 1:
        client.complete("u")
    else:
        client.reset("u")


def test_a_journal_that_fills_its_disk_by_itself_frees_it_without_a_restart(
    tiny_disk: Path, short_tmp: Path
) -> None:
    """The measured sequence: 1 MiB tmpfs, a filler file, 16,000 changes of one unit, 4 KiB
    of filler removed at each refusal; then the rest of the filler and 10,000 changes more.
    The journal compacts itself when a change is refused, and its log never takes the room
    that compaction needs, so changes go on (they were refused for good, even after a
    restart, with the log at 1,044,443 bytes for a one-unit graph)."""
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * FILLER)
    config = AgentConfig(socket=short_tmp / "run" / "agent.sock", state_dir=tiny_disk / "state")
    agent = AgentProcess(config).start()
    refusals, longest = 0, 0.0
    try:
        with Client(config.socket) as client:
            for i in range(CHURN + AFTER):
                if i == CHURN and filler.exists():
                    filler.unlink()
                refused_at = None
                while True:
                    try:
                        churn_change(client, i)
                        break
                    except NotDurable:
                        refusals += 1
                        refused_at = refused_at or time.monotonic()
                        if filler.exists():
                            size = filler.stat().st_size - FILLER_STEP
                            if size > 0:
                                os.truncate(filler, size)
                            else:
                                filler.unlink()
                            continue
                        waited = time.monotonic() - refused_at
                        assert waited < PATIENCE, f"refused for good after {i} changes"
                        time.sleep(0.05)
                if refused_at is not None:
                    longest = max(longest, time.monotonic() - refused_at)
        log_size = (config.state_dir / LOG_NAME).stat().st_size
        print(
            f"\n{CHURN + AFTER} changes, {refusals} refused (the longest refusal lasted "
            f"{longest:.2f}s); journal.log is now {log_size} bytes"
        )
        assert refusals > 0, "the disk never filled: the test did not test anything"
        code, log = agent.stop()
        assert code == 0, log
        assert "compacted the journal" in log
        agent.start()
        with Client(config.socket) as client:
            [view] = client.status("u")
        assert view.status == "completed"  # the last change, after a restart
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()


def test_an_agent_started_on_a_full_disk_compacts_its_journal_once_there_is_room(
    tiny_disk: Path, short_tmp: Path
) -> None:
    """A start-up that finds no room to copy the log syncs it in place, and owes the
    compaction that frees the disk: it is made as soon as some space is freed, without a
    change or another restart."""
    config = AgentConfig(socket=short_tmp / "run" / "agent.sock", state_dir=tiny_disk / "state")
    agent = AgentProcess(config).start()
    try:
        with Client(config.socket) as client:
            for i in range(6_000):  # a log of about 400 KB: under the compaction thresholds
                churn_change(client, i)
        agent.stop()
        log_path = config.state_dir / LOG_NAME
        full_log = log_path.stat().st_size
        filler = tiny_disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # the disk is full to its last page
            while os.write(fd, b"\0" * 4096):
                pass
        os.close(fd)
        agent.start()
        agent.await_line("could not compact the journal")  # tried at once: no room
        os.truncate(filler, filler.stat().st_size - 64 * 1024)  # some room, no change
        freed = time.monotonic()
        while log_path.stat().st_size >= full_log and time.monotonic() - freed < PATIENCE:
            time.sleep(0.05)
        print(f"\nthe journal was compacted {time.monotonic() - freed:.2f}s after space was freed")
        assert log_path.stat().st_size < full_log / 20
        code, log = agent.stop()
        assert code == 0, log
        assert "syncing it in place instead" in agent.startup_log
        assert "compacted the journal" in log
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()
