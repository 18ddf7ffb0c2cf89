"""SIGTERM while clients wait, watch and write; a second signal forces the exit."""

from __future__ import annotations

import json
import signal
import socket as sockets
import threading
import time
from collections import Counter
from pathlib import Path

from unitsync.client import Client, UnitsyncError
from unitsync.wire.framing import encode
from unitsync.wire.protocol import PROTOCOL_VERSION, Hello, Watch

from conftest import AgentProcess, spawn_cli


def test_sigterm_under_load_keeps_every_acknowledged_change(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    path = agent_process.config.socket
    with Client(path) as client:
        client.want("app", "db")
    waiter = spawn_cli("sync", "start", "app", "--timeout", "60s", socket=path)
    events = tmp_path / "events.jsonl"
    with events.open("w") as out:
        watcher = spawn_cli("sync", "status", "--watch", "-o", "json", socket=path, stdout=out)
    assert waiter.stderr is not None and watcher.stderr is not None
    waiter.stderr.readline()  # app: waiting for db
    wait_for_snapshots(events, 1)  # the watcher is connected

    acknowledged: list[str] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        with Client(path) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                try:
                    client.fail(f"w{n}-{i}", "written", force=True)
                except UnitsyncError:
                    return
                acknowledged.append(f"w{n}-{i}")

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    while len(acknowledged) < 200:
        threading.Event().wait(0.01)
    code, log = agent_process.stop(signal.SIGTERM)
    stop.set()
    for thread in writers:
        thread.join(timeout=30)
    assert code == 0, log
    assert not path.exists(), "the socket file should be gone"
    assert "shutting down" in waiter.stderr.readline()  # told, and reconnecting

    agent_process.start()
    with Client(path) as client:
        known = {view.name for view in client.status()}
        assert set(acknowledged) <= known, "an acknowledged change was lost"
        client.start("db")
        client.complete("db")
    _out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    wait_for_snapshots(events, 2)  # reconnected, after its backoff
    watcher.send_signal(signal.SIGINT)
    _out, err = watcher.communicate(timeout=30)
    assert err.count("agent unreachable, reconnecting") == 1
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    # A snapshot first, another after reconnecting (and more if it fell behind under load).
    assert kinds[0] == "snapshot" and kinds.count("snapshot") >= 2
    assert "changed" in kinds


def wait_for_snapshots(events: Path, count: int) -> None:
    """Until the watcher has printed `count` snapshots (bounded: 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = events.read_text().split("\n")[:-1]  # complete lines only
        if sum(json.loads(line)["event"] == "snapshot" for line in lines) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the watcher printed fewer than {count} snapshots")


def test_a_second_sigint_forces_the_exit(agent_process: AgentProcess) -> None:
    path = agent_process.config.socket
    with Client(path) as client:
        for i in range(300):
            client.fail(f"unit-{i}", "x" * 4000, force=True)  # a snapshot of well over a megabyte
    stuck = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    stuck.setsockopt(sockets.SOL_SOCKET, sockets.SO_RCVBUF, 4096)
    stuck.connect(str(path))
    stuck.sendall(encode(Hello(PROTOCOL_VERSION)) + encode(Watch()))  # and never reads
    proc = agent_process.proc
    assert proc is not None and proc.stderr is not None
    threading.Event().wait(0.5)
    proc.send_signal(signal.SIGINT)
    for line in proc.stderr:
        if "SIGINT received" in line:
            break
    proc.send_signal(signal.SIGINT)  # while it waits on the stuck watcher's goodbye
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT
    assert "second SIGINT: exiting at once" in err
    stuck.close()


def test_a_clean_stop_never_shows_a_socket_file_that_refuses(agent_process: AgentProcess) -> None:
    """A socket file nobody accepts on is what a crash leaves, and a client that lost its
    agent starts another when it finds one (test_autostart.py). A SIGTERM must never show
    one, even for a moment: the file goes before the socket stops listening."""
    path = agent_process.config.socket
    outcomes: Counter[str] = Counter()
    for _stop in range(3):
        with Client(path) as client:
            client.want("app", "db")
        waiters = [
            spawn_cli("sync", "start", "app", "--timeout", "0", socket=path) for _ in range(4)
        ]
        for waiter in waiters:  # each is told, which makes the stop take a moment
            assert waiter.stderr is not None and "waiting for db" in waiter.stderr.readline()
        stopped = threading.Event()
        knocker = threading.Thread(target=knock, args=(path, stopped, outcomes))
        knocker.start()
        code, log = agent_process.stop(signal.SIGTERM)
        stopped.set()
        knocker.join(timeout=30)
        assert code == 0, log
        for waiter in waiters:
            waiter.kill()
            waiter.communicate(timeout=30)
        agent_process.start()
    assert outcomes["a file that refuses"] == 0, outcomes
    assert outcomes["no file"] > 0  # the knocking went on past the stop


def knock(path: Path, stopped: threading.Event, outcomes: Counter[str]) -> None:
    """Connect to `path` again and again until `stopped`, counting what each try found."""
    while not stopped.is_set():
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                outcomes["accepted or queued"] += 1
            except FileNotFoundError:
                outcomes["no file"] += 1
            except ConnectionRefusedError:
                outcomes["a file that refuses"] += 1
