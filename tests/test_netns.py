"""The network-namespace harness itself (`harness/netns.py`): cuts do what they say, two
networks side by side never meet, and nothing outlives a run, even one that was killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import netns

PORT = 7000
LIMIT = 60.0
"""Generous bound on waiting for a process: only a hang reaches it."""


@pytest.fixture(autouse=True)
def namespaces_work() -> None:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(why)


@pytest.fixture
def network() -> Iterator[netns.Network]:
    made = netns.Network(["a", "b", "c"])
    yield made
    made.close()


def listen(host: netns.Host) -> socket.socket:
    server = socket.socket()
    server.bind((host.address, PORT))
    server.listen()
    return server


def reaches(src: netns.Host, dst: netns.Host) -> bool:
    """Does a TCP connection from `src` to `dst` get through (SYN and SYN-ACK)?"""

    def connect() -> bool:
        try:
            socket.create_connection((dst.address, PORT), timeout=1).close()
        except OSError:
            return False
        return True

    return src.run_inside(connect)


def eventually(check: Callable[[], bool], limit: float = 60.0) -> bool:
    """`check` holds now or within `limit` seconds (a bound only a real fault reaches)."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_cuts_one_way_and_both_ways_and_a_heal(network: netns.Network) -> None:
    a, b, c = (network[name] for name in "abc")
    servers = [host.run_inside(listen, host) for host in (a, b, c)]
    try:
        assert reaches(a, b) and reaches(b, a) and reaches(c, b)
        network.cut("a", "b", one_way=True)
        assert not reaches(a, b) and reaches(c, b)
        assert not reaches(b, a)  # b's SYN arrives, but a's answer to it is dropped
        network.heal()
        network.cut(["a"], ["b", "c"])
        assert not reaches(b, a) and not reaches(a, c) and reaches(b, c)
        network.heal()
        network.unplug("c")
        assert not reaches(a, c) and not reaches(c, b) and reaches(a, b)
        network.heal()  # a port plugged in again forwards at once, but a neighbour entry
        # the unplugged minutes left failed is tried again only after a while: wait for it
        assert eventually(
            lambda: all(reaches(x, y) for x in (a, b, c) for y in (a, b, c) if x is not y)
        )
    finally:
        for server in servers:
            server.close()


def test_addresses_exist_only_inside_the_namespaces(network: netns.Network) -> None:
    """The root namespace has none of them: the machine's own network is untouched."""
    here = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
    assert netns.SUBNET not in here.stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert "veth" not in links.stdout and netns.BRIDGE not in links.stdout


def test_two_networks_side_by_side_never_meet() -> None:
    first, second = netns.Network(["a", "b"]), netns.Network(["a", "b"])
    try:
        assert first["a"].address == second["a"].address  # the same addresses, apart
        server = second["b"].run_inside(listen, second["b"])
        try:
            assert reaches(second["a"], second["b"])
            assert not reaches(first["a"], first["b"])  # nobody listens in the first one
            first.cut("a", "b")
            assert reaches(second["a"], second["b"])  # a cut in one is not in the other
        finally:
            server.close()
    finally:
        names = {host.netns for host in (*first.hosts.values(), *second.hosts.values())}
        first.close()
        second.close()
    assert not names & set(_netns_names())


def test_a_killed_run_leaves_nothing_after_a_sweep(tmp_path: Path) -> None:
    """A process that made a network, started a process inside it and was SIGKILLed (no
    finalizer ran): the next run's sweep kills that process and removes the namespaces,
    and leaves a live run's namespaces alone."""
    ours = netns.Network(["a"])  # a live run's (this process's)
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import pathlib, subprocess, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from harness import netns
        network = netns.Network(["x", "y"])
        inside = subprocess.Popen(network["x"].command(["sleep", "600"]))
        pathlib.Path({str(ready)!r}).write_text(f"{{inside.pid}} " + network["x"].netns)
        time.sleep(600)
        """
    )
    run = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + LIMIT
        while not ready.exists():
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        pid, left = ready.read_text().split()
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=LIMIT)
        assert left in _netns_names()  # left behind
        removed = netns.sweep()
        assert left in removed
        assert left not in _netns_names()
        assert not _running(int(pid))
        assert ours["a"].netns in _netns_names()  # a live run's: untouched
    finally:
        ours.close()
        if run.poll() is None:
            run.kill()


def _netns_names() -> list[str]:
    return [entry.name for entry in netns.NETNS_DIR.iterdir()] if netns.NETNS_DIR.is_dir() else []


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and os.path.exists(f"/proc/{pid}")
