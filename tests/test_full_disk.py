"""A real full disk (SPEC §4): an agent whose state dir is on a 1 MiB tmpfs, filled by clients.

The test mounts the tmpfs itself (CI runs as root) and says why it is skipped where it
cannot. Clients fill the disk until changes are refused; then: the refusal is exit 6 and
names the state dir, the log ends with a whole entry, reads and waits go on, nothing
refused is kept; after a file is removed, the same agent takes changes again; after a
restart, every acknowledged change is there.
"""

from __future__ import annotations

import os
import subprocess
import threading
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

    def run(self) -> None:
        with Client(self.socket) as client:
            for i in range(10_000):
                unit, reason = f"w{self.index}-{i}", f"{i:06d}" + "x" * (REASON - 6)
                try:
                    client.fail(unit, reason)
                except NotDurable as exc:
                    self.refused.append(exc)
                    self.refused_units.append(unit)
                    if len(self.refused) == 3:  # the disk is full: refused, and again
                        return
                    continue
                self.acknowledged[unit] = reason


def statuses(socket: Path) -> dict[str, tuple[str, str]]:
    with Client(socket) as client:
        return {view.name: (view.status, view.reason) for view in client.status()}


def test_a_full_disk_refuses_changes_and_the_same_agent_recovers(
    tiny_disk: Path, short_tmp: Path
) -> None:
    (tiny_disk / "ballast").write_bytes(b"\0" * BALLAST)
    state_dir = tiny_disk / "state"
    config = AgentConfig(socket=short_tmp / "run" / "agent.sock", state_dir=state_dir)
    agent = AgentProcess(config).start()
    try:
        socket = config.socket
        with Client(socket) as client:
            client.want("app", "db")
        waiter = spawn_cli("sync", "start", "app", "--timeout", "5m", socket=socket)
        assert waiter.stderr is not None
        assert waiter.stderr.readline().strip() == "app: waiting for db"

        writers = [Writer(i, socket) for i in range(WRITERS)]
        threads = [threading.Thread(target=writer.run) for writer in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        acknowledged = {u: r for w in writers for u, r in w.acknowledged.items()}
        assert len(acknowledged) > 100, "the disk filled up before the test got going"

        # The refusal: exit 6, the state dir named, what to do said; the log cut back.
        refusal = str(writers[0].refused[0])
        assert str(state_dir) in refusal and "is full" in refusal
        assert "free some space there and retry" in refusal
        full = run_cli("sync", "fail", "one-more", "--reason", "x" * REASON, socket=socket)
        print(f"\n{len(acknowledged)} changes fitted; then: {full.err}")
        assert full.code == 6, full.err
        assert "not saved" in full.err and str(state_dir) in full.err
        data = (state_dir / LOG_NAME).read_bytes()
        scan = logfile.Scan(end=logfile.LOG_HEADER.size)
        assert sum(1 for _ in logfile.entries(data, scan)) == len(acknowledged) + 1  # + want
        assert scan.torn is None and scan.end == len(data)

        # Reads and waits go on; nothing refused was kept.
        seen = statuses(socket)
        assert {u: seen[u] for u in acknowledged} == {
            u: ("failed", r) for u, r in acknowledged.items()
        }
        refused_units = [u for w in writers for u in w.refused_units] + ["one-more"]
        assert not set(refused_units) & set(seen)
        assert waiter.poll() is None

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
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()
