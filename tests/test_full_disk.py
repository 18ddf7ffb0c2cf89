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

import pytest

from unitsync.agent import logfile
from unitsync.agent.journal import LOG_NAME
from unitsync.agent.server import AgentConfig
from unitsync.client.client import Client
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
