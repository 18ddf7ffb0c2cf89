"""Every SPEC §6 figure, measured on real agents, printed next to its target.

    python bench/run.py            # every figure of SPEC §6-§9 (about five minutes)
    python bench/run.py --scaling  # also how costs grow with units, waiters, journal length
    python bench/run.py --views    # only: every view of 10,000 units, command to output
    python bench/services.py       # only SPEC §8's service figures (about a minute)
    python bench/stay_up.py [N]    # only issue 24's: restarts, `stop` (N rounds, about a minute)
    python bench/first_call.py     # only SPEC §7's autostart figures (about half a minute)
    python bench/start_up.py       # only SPEC §6's hot calls and 50-unit start-up (2 minutes)
    python bench/new_boot.py       # only SPEC §7's new-boot figures (about twenty seconds)
    python bench/run.py --etcd     # the SPEC §10 figures instead: a 3-member etcd cluster
                                   # and 3 agents sharing a graph, on loopback; then again
                                   # on hosts of their own (network namespaces, as root)
                                   # with one member cut off

Medians (and p99 for latencies) from one run; nothing here is a test.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import pty
import re
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import first_call
import load
import msgspec
import new_boot
import services
import start_up
import stay_up
import trio
from new_boot import BENCH_GRAPH, applied
from start_up import Figure

from unitsync.agent.core.graph import Graph
from unitsync.agent.core.records import Known, Move
from unitsync.agent.store.etcd.client import EtcdClient, EtcdUnavailable
from unitsync.agent.store.etcd.messages import (
    Op,
    PutRequest,
    TxnRequest,
    WatchCreateRequest,
    WatchResponse,
    prefix_end,
)
from unitsync.agent.store.journal import logfile
from unitsync.agent.store.journal.writer import LOG_NAME, SNAPSHOT_NAME, Journal
from unitsync.client import AsyncClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from harness.etcd_cluster import EtcdAgent, EtcdCluster  # noqa: E402  (the tests' real cluster)

encode = msgspec.msgpack.Encoder().encode
UNITSYNC = Path(sys.executable).with_name("unitsync")


# --- a real agent --------------------------------------------------------------------------


@contextmanager
def agent(state_dir: Path | None = None) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A real agent process on a private socket; yields (socket, process)."""
    base = Path(tempfile.mkdtemp(prefix="us-bench-"))
    socket = base / "run" / "agent.sock"
    proc = subprocess.Popen(
        [
            str(UNITSYNC),
            "agent",
            "--socket",
            str(socket),
            "--state-dir",
            str(state_dir or base / "state"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line:
            break
    else:
        raise RuntimeError("the agent did not start")
    try:
        yield socket, proc
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def p50_p99_ms(latencies: list[float]) -> tuple[float, float]:
    """The median and the 99th percentile of latencies in seconds, in milliseconds."""
    return statistics.median(latencies) * 1000, percentile(latencies, 99) * 1000


async def connect_many(socket: Path, count: int) -> list[AsyncClient]:
    clients: list[AsyncClient] = []
    limiter = trio.CapacityLimiter(200)

    async def one() -> None:
        async with limiter:
            clients.append(await AsyncClient.connect(socket))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return clients


class Waiters:
    """N clients blocked in `start`, each on its own unit wanting `gate`."""

    def __init__(self, clients: list[AsyncClient], gate: str, prefix: str) -> None:
        self.clients, self.gate, self.prefix = clients, gate, prefix
        self.returned: list[float] = []

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        blocked = trio.Semaphore(0)

        async def one(i: int, client: AsyncClient) -> None:
            await client.want(f"{self.prefix}{i}", self.gate)

            async def on_wait(_event: object) -> None:
                blocked.release()

            await client.start(f"{self.prefix}{i}", on_progress=on_wait)
            self.returned.append(time.perf_counter())

        async with trio.open_nursery() as nursery:
            for i, client in enumerate(self.clients):
                nursery.start_soon(one, i, client)
            for _ in self.clients:
                await blocked.acquire()
            task_status.started()


async def release(socket: Path, gate: str) -> float:
    """Complete `gate`; the moment its acknowledgement arrives."""
    async with await AsyncClient.connect(socket) as admin:
        await admin.start(gate)
        await admin.complete(gate)
        return time.perf_counter()


# --- the figures ---------------------------------------------------------------------------


def service_readiness(rounds: int = 100) -> list[Figure]:
    """SPEC §8: a service's ready moment to its dependents' start; `run` idle."""
    with agent() as (socket, _proc):
        return [Figure(*figure) for figure in services.measure(socket, p50_p99_ms, rounds)]


def services_stay_up(rounds: int = 100) -> list[Figure]:
    """Issue 24: a crash to a waiting dependent; `stop`; `run` idle while it waits."""
    with agent() as (socket, _proc):
        return [Figure(*figure) for figure in stay_up.measure(socket, p50_p99_ms, rounds)]


def autostart() -> list[Figure]:
    """SPEC §7: what autostart costs the first call, and that later calls pay nothing."""
    return [Figure(*figure) for figure in first_call.measure()]


def workspace_restart() -> list[Figure]:
    """SPEC §7: a new boot of 10,000 units is one journal entry and costs start-up little."""
    return [Figure(*figure) for figure in new_boot.measure()]


def python_speed() -> Figure:
    """A shared machine's speed drifts during a run: read the other figures beside this."""

    def loop() -> float:
        started, total = time.perf_counter(), 0
        for i in range(1_000_000):
            total += i
        return time.perf_counter() - started

    best = min(loop() for _ in range(5))
    return Figure(
        "pure-Python speed now: a 1,000,000-step loop",
        f"{best * 1000:.0f} ms",
        "(reference)",
        None,
        "best of 5",
    )


def wake_one(rounds: int = 300) -> Figure:
    async def main(socket: Path) -> list[float]:
        async with (
            await AsyncClient.connect(socket) as waiter,
            await AsyncClient.connect(socket) as admin,
        ):
            return [await one_wake(admin, waiter, f"w{i}", f"d{i}") for i in range(rounds)]

    with agent() as (socket, _proc):
        latencies = trio.run(main, socket)
    p50, p99 = p50_p99_ms(latencies)
    return Figure(
        "wake-up, 1 waiter: `complete` acked -> `start` returns",
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
        "p99 < 5 ms",
        p99 < 5,
        f"{rounds} rounds; includes the fsync of the started unit's own record",
    )


async def one_wake(admin: AsyncClient, waiter: AsyncClient, unit: str, dep: str) -> float:
    """Block `unit` on `dep`, complete `dep`: seconds from that ack to `start` returning."""
    await admin.want(unit, dep)
    await admin.start(dep)
    blocked, returned = trio.Event(), []

    async def on_wait(_event: object) -> None:
        blocked.set()

    async def wait() -> None:
        await waiter.start(unit, on_progress=on_wait)
        returned.append(time.perf_counter())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await blocked.wait()
        await admin.complete(dep)
        acknowledged = time.perf_counter()
    return returned[0] - acknowledged


def wake_many(waiters: int = 1000, rounds: int = 5) -> Figure:
    spans = [release_span(waiters) for _ in range(rounds)]
    worst, median = max(spans) * 1000, statistics.median(spans) * 1000
    return Figure(
        f"wake-up, {waiters} waiters released by one `complete`",
        f"all back in: median {median:.1f} ms, worst {worst:.1f} ms",
        "< 100 ms",
        worst < 100,
        f"{rounds} rounds; from the ack of `complete` to the last `start` returning",
    )


def release_span(waiters: int) -> float:
    async def main(socket: Path) -> float:
        clients = await connect_many(socket, waiters)
        group = Waiters(clients, "gate", "w")
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            acknowledged = await release(socket, "gate")
        for client in clients:
            await client.aclose()
        return max(group.returned) - acknowledged

    _raise_open_file_limit()
    with agent() as (socket, _proc):
        return trio.run(main, socket)


def throughput(clients: int = 64, seconds: float = 3.0) -> list[Figure]:
    with agent() as (socket, proc):
        cpu_before, started = _cpu_seconds(proc.pid), time.perf_counter()
        count = load.fail_loop(socket, clients, seconds)
        elapsed = time.perf_counter() - started
        busy = (_cpu_seconds(proc.pid) - cpu_before) / elapsed
        rate = count / elapsed
        trio_rate = trio.run(_trio_fail_loop, socket, clients, seconds) / seconds
        fsyncs = raw_fsync_rate(socket.parent)
    return [
        Figure(
            f"durable transitions/s, {clients} concurrent clients",
            f"{rate:,.0f}/s",
            ">= 10,000/s",
            rate >= 10_000,
            f"each fsynced before its ack; agent busy {busy:.2f} cores, "
            f"{busy / rate * 1e6:.0f} us CPU per transition; driven by 64 trio clients "
            f"in one process instead (they share the 2 cores): {trio_rate:,.0f}/s",
        ),
        Figure(
            "raw fsync rate of the same disk",
            f"{fsyncs:,.0f}/s",
            "(reference)",
            None,
            "write 64 B + fsync, 1 s",
        ),
    ]


async def _trio_fail_loop(socket: Path, clients: int, seconds: float) -> int:
    connections = await connect_many(socket, clients)
    done = 0

    async def loop(i: int, client: AsyncClient) -> None:
        nonlocal done
        n = 0
        while trio.current_time() < deadline:
            await client.fail(f"t{i}", f"round {n}", force=True)  # one acked transition
            n += 1
        done += n

    deadline = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for i, client in enumerate(connections):
            nursery.start_soon(loop, i, client)
    for client in connections:
        await client.aclose()
    return done


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_fsync_rate(folder: Path, seconds: float = 1.0) -> float:
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    count, deadline = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        os.write(fd, b"x" * 64)
        os.fsync(fd)
        count += 1
    os.close(fd)
    path.unlink()
    return count / (time.perf_counter() - started)


def write_journal(state_dir: Path, records: int, units: int = 1000) -> None:
    state_dir.mkdir(mode=0o700, parents=True)
    parts = [logfile.log_header(0, BENCH_GRAPH)]
    parts += [logfile.entry([Known(f"unit-{u}", 1.0)]) for u in range(units)]
    states = ("started", "completed", "pending")
    parts += [
        logfile.entry([Move(f"unit-{i % units}", states[(i // units) % 3], 2.0 + i)])
        for i in range(records - units)
    ]
    (state_dir / LOG_NAME).write_bytes(b"".join(parts))


def write_snapshot(state_dir: Path, units: int) -> None:
    graph = Graph()
    for u in range(units):
        applied(
            graph, graph.want(f"u{u}", [f"u{u + 1}"] if u + 1 < units else ["root"], now=1.0)[0]
        )
    for u in range(units):
        applied(graph, graph.fail(f"u{u}", "first", now=2.0))
        applied(graph, graph.reset(f"u{u}", now=3.0))
    state_dir.mkdir(mode=0o700, parents=True)
    (state_dir / SNAPSHOT_NAME).write_bytes(
        logfile.snapshot(1, graph.boot_image(), list(graph.images()), BENCH_GRAPH)
    )
    (state_dir / LOG_NAME).write_bytes(logfile.log_header(1, BENCH_GRAPH))


def recovery_seconds(state_dir: Path, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        journal = Journal.open(state_dir)
        times.append(time.perf_counter() - started)
        journal.close()
    return statistics.median(times)


def restart() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        write_journal(Path(tmp) / "log", 1_000_000)
        replay = recovery_seconds(Path(tmp) / "log")
        write_snapshot(Path(tmp) / "snap", 10_000)
        snapshot = recovery_seconds(Path(tmp) / "snap", repeat=5)
        started = time.perf_counter()
        with agent(Path(tmp) / "snap"):
            whole = time.perf_counter() - started
    return [
        Figure(
            "restart: replay a 1,000,000-record journal",
            f"{replay * 1000:.0f} ms",
            "< 2 s",
            replay < 2,
        ),
        Figure(
            "restart: compacted 10,000-unit state",
            f"{snapshot * 1000:.0f} ms",
            "< 300 ms",
            snapshot < 0.3,
            f"whole agent process, start to listening: {whole * 1000:.0f} ms",
        ),
    ]


def rss(waiters: int = 10_000) -> Figure:
    async def main(socket: Path, pid: int) -> tuple[int, int]:
        idle = _rss_kib(pid)
        clients = await connect_many(socket, waiters)
        group = Waiters(clients, "gate", "w")
        async with trio.open_nursery() as nursery:
            await nursery.start(group.run)
            loaded = _rss_kib(pid)
            await release(socket, "gate")
        for client in clients:
            await client.aclose()
        assert len(group.returned) == waiters
        return idle, loaded

    _raise_open_file_limit()
    with agent() as (socket, proc):
        idle, loaded = trio.run(main, socket, proc.pid)
    return Figure(
        f"agent RSS with {waiters:,} clients blocked in `start`",
        f"{loaded / 1024:.0f} MB",
        "< 200 MB",
        loaded / 1024 < 200,
        f"idle: {idle / 1024:.0f} MB; none refused, all released afterwards",
    )


VIEW_UNITS = 10_000
VIEW_COMMANDS = {
    "status (table)": ["status"],
    "status -o json": ["status", "-o", "json"],
    "status -o dot": ["status", "-o", "dot"],
    "status -o mermaid": ["status", "-o", "mermaid"],
    "status UNIT (the root, 2 dependents)": ["status", "unit-0"],
    "timeline (piped: table)": ["timeline"],
    "timeline (terminal: chart, 200 columns)": ["timeline"],
    "timeline -o json": ["timeline", "-o", "json"],
    "timeline -o svg": ["timeline", "-o", "svg"],
    "critical-chain": ["critical-chain"],
    "blame": ["blame"],
}
"""Every output of `status` and of SPEC §9's commands: each must stay linear in the units."""


def write_started_snapshot(state_dir: Path, units: int) -> None:
    """A finished start-up of `units` units in a binary tree (each wants its parent), with
    every run in the history: mostly completed, a few failed, a few still running."""
    graph = Graph()
    began = time.time() - 120
    for u in range(1, units):
        applied(graph, graph.want(f"unit-{u}", [f"unit-{(u - 1) // 2}"], now=began)[0])
    for u in range(units):
        at = began + u * 0.01
        applied(graph, graph.start(f"unit-{u}", now=at, waited=u * 0.01))
        leaf = u >= units // 2
        if leaf and u % 97 == 5:
            applied(graph, graph.fail(f"unit-{u}", "exit status 1", now=at + 0.008))
        elif not leaf or u % 89 != 3:
            applied(graph, graph.complete(f"unit-{u}", now=at + 0.008))
    state_dir.mkdir(mode=0o700, parents=True)
    (state_dir / SNAPSHOT_NAME).write_bytes(
        logfile.snapshot(1, graph.boot_image(), list(graph.images()), BENCH_GRAPH)
    )
    (state_dir / LOG_NAME).write_bytes(logfile.log_header(1, BENCH_GRAPH))


def views(runs: int = 3) -> list[Figure]:
    """From command to the last byte of output, for every view of 10,000 units."""
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        write_started_snapshot(Path(tmp) / "state", VIEW_UNITS)
        with agent(Path(tmp) / "state") as (socket, _proc):
            for name, args in VIEW_COMMANDS.items():
                command = [str(UNITSYNC), "sync", *args, "--socket", str(socket)]
                terminal = "terminal" in name
                times = [_time_output(command, terminal) for _ in range(runs)]
                best = statistics.median(times)
                figures.append(
                    Figure(
                        f"{name}, {VIEW_UNITS:,} units",
                        f"{best * 1000:.0f} ms",
                        "< 1 s",
                        best < 1,
                        f"median of {runs}" + ("; output to a pseudo-terminal" if terminal else ""),
                    )
                )
            figures += live_watch(socket, runs)
    return figures


WATCH_TERMINAL = (50, 200)
"""Rows and columns of the terminal the live watch is measured on."""
REFRESH_INTERVAL = 0.5
"""The live table's redraw interval (`cli.watch.REFRESHES_PER_SECOND`): one redraw must
take a small part of it, or the watch pegs a core."""


def live_watch(socket: Path, runs: int) -> list[Figure]:
    """`status --watch` of 10,000 units: its first frame and Ctrl-C, end to end on a
    pseudo-terminal; one redraw, in-process (what the watch pays twice a second)."""
    command = [str(UNITSYNC), "sync", "status", "--watch", "--socket", str(socket)]
    first, stop = zip(*[_first_frame_and_ctrl_c(command) for _ in range(runs)], strict=True)
    idle, changed = _redraws(socket)
    rows, columns = WATCH_TERMINAL
    where = f"median of {runs}; a {columns}x{rows} pseudo-terminal"
    return [
        Figure(
            f"status --watch, {VIEW_UNITS:,} units: to the first frame",
            f"{statistics.median(first) * 1000:.0f} ms",
            "< 1 s",
            statistics.median(first) < 1,
            where,
        ),
        Figure(
            f"status --watch, {VIEW_UNITS:,} units: Ctrl-C to exit",
            f"{statistics.median(stop) * 1000:.0f} ms",
            "< 1 s",
            statistics.median(stop) < 1,
            where,
        ),
        Figure(
            f"status --watch, {VIEW_UNITS:,} units: one redraw (no change / after one)",
            f"{idle * 1000:.1f} / {changed * 1000:.1f} ms",
            f"< {REFRESH_INTERVAL * 100:.0f} ms",  # a tenth
            max(idle, changed) < REFRESH_INTERVAL / 10,
            f"median of 20 in-process redraws, {rows} rows; a tenth of the "
            f"{REFRESH_INTERVAL * 1000:.0f} ms between redraws",
        ),
    ]


def _on_a_terminal(command: list[str], rows: int, columns: int) -> tuple[subprocess.Popen, int]:
    """`command` started with a pseudo-terminal of that size as its stdio; (process, pty)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    return proc, master


def _to_the_end(proc: subprocess.Popen, master: int) -> None:
    """Read the terminal until the command closes it, reap the command, close the pty."""
    try:
        while os.read(master, 1 << 16):
            pass
    except OSError:  # EIO: the command closed the terminal
        pass
    proc.wait()
    os.close(master)


def _first_frame_and_ctrl_c(command: list[str]) -> tuple[float, float]:
    """Seconds from starting the watch to its first frame with units (the line saying how
    many are not shown ends it), and from Ctrl-C to its exit."""
    started = time.perf_counter()
    proc, master = _on_a_terminal(command, *WATCH_TERMINAL)
    shown = b""
    while b"more units" not in shown:
        shown += os.read(master, 1 << 16)
    first = time.perf_counter() - started
    interrupted = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _to_the_end(proc, master)
    return first, time.perf_counter() - interrupted


def _redraws(socket: Path, repeat: int = 20) -> tuple[float, float]:
    """Median seconds of one redraw of the live table: with no change since the last one,
    and after one change (the rows are picked again, the changed unit's bar rebuilt)."""
    import io

    from rich.console import Console

    from unitsync.cli.watch import _Board
    from unitsync.client import Client
    from unitsync.wire.protocol import Changed, FullView

    with Client(socket, autostart=False) as client:
        units = client.status()
    board = _Board(None)
    board.apply(FullView(units, time.time()))
    rows, columns = WATCH_TERMINAL
    console = Console(file=io.StringIO(), width=columns, height=rows, force_terminal=True)
    console.print(board)  # the first frame builds every unit's row

    def redraw(change: bool) -> float:
        if change:
            board.apply(Changed(units[len(units) // 2], time.time()))
        started = time.perf_counter()
        console.print(board)
        return time.perf_counter() - started

    idle = statistics.median(redraw(False) for _ in range(repeat))
    changed = statistics.median(redraw(True) for _ in range(repeat))
    return idle, changed


def _time_output(command: list[str], terminal: bool) -> float:
    """Seconds from starting `command` until it has written all its output and exited."""
    if not terminal:
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        return time.perf_counter() - started
    started = time.perf_counter()
    proc, master = _on_a_terminal(command, 50, 200)
    _to_the_end(proc, master)
    elapsed = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"{command} exited {proc.returncode}")
    return elapsed


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _raise_open_file_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- one graph across hosts, on etcd (SPEC §10) ----------------------------------------------


@contextmanager
def etcd_cluster() -> Iterator[tuple[EtcdCluster, Path]]:
    """A real 3-member etcd cluster (the tests' own helper) in a temp dir."""
    base = Path(tempfile.mkdtemp(prefix="us-etcd-"))
    cluster = EtcdCluster(base).start()
    try:
        yield cluster, base
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)


def etcd_throughput(agents: int = 3, clients: int = 16, seconds: float = 5.0) -> Figure:
    with etcd_cluster() as (cluster, base):
        hosts = [EtcdAgent(base, f"a{i}", cluster.url("bench")).start() for i in range(agents)]
        members = [m.proc.pid for m in cluster.members]  # type: ignore[union-attr]
        return _throughput(hosts, members, clients, seconds, "")


def _throughput(
    hosts: list[EtcdAgent], members: list[int], clients: int, seconds: float, where: str
) -> Figure:
    """`clients` connections per agent `fail` their own unit in a loop for `seconds`."""
    try:
        pids = [host.proc.pid for host in hosts] + members  # type: ignore[union-attr]
        cpu_before, started = [_cpu_seconds(pid) for pid in pids], time.perf_counter()
        counts = [0] * len(hosts)

        def drive(i: int) -> None:
            counts[i] = load.fail_loop(hosts[i].socket, clients, seconds, names=f"h{i}-")

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(hosts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        busy = [
            (_cpu_seconds(pid) - before) / elapsed
            for pid, before in zip(pids, cpu_before, strict=True)
        ]
    finally:
        for host in hosts:  # SIGTERM: each agent logs how many changes its txns carried
            if host.proc is not None and host.proc.poll() is None:
                host.signal(signal.SIGTERM)
    carried = [
        re.search(r"committed \d+ changes in \d+ txns \(([\d.]+) per txn", host.log.read_text())
        for host in hosts
    ]
    per_txn = "/".join(found.group(1) if found else "?" for found in carried)
    rate = sum(counts) / elapsed
    n = len(hosts)
    return Figure(
        f"etcd{where}: acknowledged changes/s, {n} agents x {clients} clients",
        f"{rate:,.0f}/s",
        ">= 1,500/s",
        rate >= 1500,
        f"each committed in etcd and back through the agent's watch before its ack; "
        f"changes per txn (each agent): {per_txn}; busy cores: agents "
        f"{sum(busy[:n]):.2f}, etcd members {sum(busy[n:]):.2f}",
    )


def etcd_wake(rounds: int = 300) -> Figure:
    """`complete` acknowledged by host B -> a `start` blocked on host A returns."""
    with etcd_cluster() as (cluster, base):
        hosts = [EtcdAgent(base, name, cluster.url("bench")).start() for name in ("a", "b")]
        try:
            return _wake(hosts[0], hosts[1], rounds, "")
        finally:
            for host in hosts:
                host.close()


def _wake(host_a: EtcdAgent, host_b: EtcdAgent, rounds: int, where: str) -> Figure:
    async def main() -> list[float]:
        async with (
            await AsyncClient.connect(host_a.socket) as waiter,
            await AsyncClient.connect(host_b.socket) as admin,
        ):
            return [await one_wake(admin, waiter, f"w{i}", f"d{i}") for i in range(rounds)]

    latencies = trio.run(main)
    p50, p99 = p50_p99_ms(latencies)
    return Figure(
        f"etcd{where}: wake-up across hosts, `complete` acked on B -> `start` returns on A",
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        "p99 < 10 ms",
        p99 < 10,
        f"{rounds} rounds; includes A committing the start in etcd (its own txn and echo)",
    )


def etcd_floor(rounds: int = 300) -> Figure:
    """etcd alone, as the wake-up's floor: one txn of one put, acknowledged, then back
    through a watch (what an agent's start on A waits for, without the agent)."""

    async def main(cluster: EtcdCluster) -> tuple[list[float], list[float]]:
        client = EtcdClient(tuple(cluster.endpoints))
        seen, moved = 0, trio.Event()

        def on_watch(response: WatchResponse) -> None:
            nonlocal seen, moved
            if response.events:
                seen = max(seen, *(event.kv.mod_revision for event in response.events))
                moved.set()
                moved = trio.Event()

        async def follow() -> None:
            while True:  # a watch left for another member (the client's hedge) resumes there
                watch = WatchCreateRequest(b"floor/", prefix_end(b"floor/"), seen + 1)
                with contextlib.suppress(EtcdUnavailable):
                    await client.watch(watch, on_watch, silence=60)

        acked, echoed = [], []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await client.txn(TxnRequest(success=[_put_op(b"floor/warm")]))
            for i in range(rounds):
                began = time.perf_counter()
                reply = await client.txn(TxnRequest(success=[_put_op(f"floor/{i}".encode())]))
                acked.append(time.perf_counter() - began)
                while seen < reply.header.revision:
                    await moved.wait()
                echoed.append(time.perf_counter() - began)
            nursery.cancel_scope.cancel()
        await client.aclose()
        return acked, echoed

    with etcd_cluster() as (cluster, _base):
        acked, echoed = trio.run(main, cluster)
        fsyncs = [_wal_fsyncs(endpoint) for endpoint in cluster.endpoints]
    (a50, a99), (e50, e99) = p50_p99_ms(acked), p50_p99_ms(echoed)
    slow = sum(over for over, _all in fsyncs) / max(1, sum(count for _over, count in fsyncs))
    return Figure(
        "etcd alone: one txn acked, and back through a watch",
        f"p50 {a50:.1f} / {e50:.1f} ms, p99 {a99:.1f} / {e99:.1f} ms",
        "(reference)",
        None,
        f"{rounds} rounds, no agent: the least a start on A adds to the wake-up across hosts; "
        f"the members' WAL fsyncs over {SLOW_FSYNC * 1000:g} ms: {slow:.1%} "
        f"({', '.join(f'{over}/{count}' for over, count in fsyncs)})",
    )


SLOW_FSYNC = 0.008
"""A bucket bound of etcd's fsync histogram: a commit waits for two members' fsyncs, so
fsyncs this slow put a txn, and a wake-up across hosts, near the 10 ms target on their own."""


def _wal_fsyncs(endpoint: str) -> tuple[int, int]:
    """(fsyncs slower than SLOW_FSYNC, all fsyncs) of a member's write-ahead log, from its
    Prometheus metrics."""
    text = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10).read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("etcd_disk_wal_fsync_duration_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            counts[bound] = int(float(line.rsplit(" ", 1)[1]))
    within = counts.get(f"{SLOW_FSYNC:g}", 0)
    return counts.get("+Inf", 0) - within, counts.get("+Inf", 0)


def _put_op(key: bytes) -> Op:
    return Op(request_put=PutRequest(key, b"x" * 200))


def etcd_partitioned() -> list[Figure]:
    """The same figures on hosts of their own (network namespaces), m0 (the member every
    agent tries first and watches) unplugged first; and how long the first change after
    the cut took on each agent."""
    from harness.hosts import Workspace, unavailable

    why = unavailable()
    if why is not None:
        return [Figure("etcd, m0 cut off: not measured", why, "", None)]
    ws = Workspace.make()
    try:
        ws.unplug("m0")
        firsts = []
        for i, host in enumerate(ws.agents):
            began = time.perf_counter()
            done = host.cli("fail", f"first{i}", "--reason", "after the cut", "--force")
            firsts.append((time.perf_counter() - began, done.returncode))
        worst = max(took for took, _code in firsts)
        figures = [
            Figure(
                "etcd, m0 cut off: the first change on each agent after the cut",
                f"worst {worst * 1000:.0f} ms, {sum(code != 0 for _took, code in firsts)} failed",
                "no failure",
                all(code == 0 for _took, code in firsts),
                "the whole CLI call, each agent in turn; "
                + ", ".join(f"{took * 1000:.0f} ms" for took, _code in firsts),
            ),
            _wake(ws.agents[0], ws.agents[1], 300, ", m0 cut off"),
        ]
        members = [m.proc.pid for m in ws.etcd.members if m.proc is not None]
        figures.append(_throughput(ws.agents, members, 16, 5.0, ", m0 cut off"))
        return figures
    finally:
        ws.close()


def etcd_restart(units: int = 10_000) -> Figure:
    """An agent started on a graph of `units` units already in etcd, until it serves."""
    graph = Graph()
    for u in range(units):
        applied(
            graph, graph.want(f"u{u}", [f"u{u + 1}"] if u + 1 < units else ["root"], now=1.0)[0]
        )
    for u in range(units):
        applied(graph, graph.fail(f"u{u}", "first", now=2.0))
        applied(graph, graph.reset(f"u{u}", now=3.0))

    async def fill(cluster: EtcdCluster) -> None:
        client = EtcdClient(tuple(cluster.endpoints))
        images = list(graph.images())
        for i in range(0, len(images), 100):
            puts = [
                Op(request_put=PutRequest(f"bench/units/{image.name}".encode(), encode(image)))
                for image in images[i : i + 100]
            ]
            await client.txn(TxnRequest(success=puts))
        await client.aclose()

    with etcd_cluster() as (cluster, base):
        trio.run(fill, cluster)
        started = time.perf_counter()
        host = EtcdAgent(base, "a", cluster.url("bench")).start()
        whole = time.perf_counter() - started
        host.close()
        listed = re.search(r"listed \d+ units .* \((\d+) ms\)", host.log.read_text())
    return Figure(
        f"etcd: agent restart back to serving, {units:,} units",
        f"{whole * 1000:.0f} ms",
        "< 1 s",
        whole < 1,
        f"whole process, start to listening; listing them from etcd took "
        f"{listed.group(1) if listed else '?'} ms",
    )


# --- scaling -------------------------------------------------------------------------------


def scaling() -> list[tuple[str, list[tuple[str, str]]]]:
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for records in (100_000, 300_000, 1_000_000):
            write_journal(Path(tmp) / f"log{records}", records)
            rows.append(
                (
                    f"{records:,} records",
                    f"{recovery_seconds(Path(tmp) / f'log{records}') * 1000:.0f} ms",
                )
            )
        tables.append(("journal replay time vs journal length", rows))
        rows = []
        for units in (1_000, 10_000, 30_000):
            write_snapshot(Path(tmp) / f"snap{units}", units)
            rows.append(
                (
                    f"{units:,} units",
                    f"{recovery_seconds(Path(tmp) / f'snap{units}') * 1000:.0f} ms",
                )
            )
        tables.append(("snapshot load time vs live units", rows))
    rows = []
    for waiters in (100, 1_000, 5_000):
        rows.append((f"{waiters:,} waiters", f"{release_span(waiters) * 1000:.1f} ms"))
    tables.append(("time for one `complete` to release every waiter", rows))
    rows = [(f"{n:,} waiters", rss(n).measured) for n in (1_000, 5_000, 10_000)]
    tables.append(("agent RSS vs blocked waiters", rows))
    return tables


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {system}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scaling", action="store_true", help="also measure how costs grow")
    parser.add_argument("--views", action="store_true", help="only the views of 10,000 units")
    parser.add_argument(
        "--etcd", action="store_true", help="the SPEC §10 figures instead (needs etcd)"
    )
    args = parser.parse_args()
    print(machine(), flush=True)
    steps: list[Callable[[], Figure | list[Figure]]] = [
        python_speed,
        start_up.hot_calls,  # SPEC §6, round 3: each hot call's CPU beside `python -c pass`
        start_up.workspace,  # SPEC §6, round 3: the 50-unit start-up, every way side by side
        wake_one,
        wake_many,
        throughput,
        restart,
        rss,
        views,
        service_readiness,
        services_stay_up,
        autostart,
        workspace_restart,
        python_speed,
    ]
    if args.views:
        steps = [python_speed, views]
    if args.etcd:
        steps = [
            python_speed,
            etcd_throughput,
            etcd_floor,
            etcd_wake,
            etcd_restart,
            etcd_partitioned,
            python_speed,
        ]
    figures: list[Figure] = []
    for step in steps:
        result = step()
        for figure in result if isinstance(result, list) else [result]:
            figures.append(figure)
            verdict = {True: "met", False: "NOT MET", None: ""}[figure.met]
            print(
                f"  {figure.name:<58} {figure.measured:<38} target {figure.target:<12} {verdict}",
                flush=True,
            )
            if figure.note:
                print(f"      {figure.note}", flush=True)
    if args.scaling:
        for title, rows in scaling():
            print(f"\n{title}")
            for label, value in rows:
                print(f"  {label:<18} {value}")
    missed = [f.name for f in figures if f.met is False]
    print(
        f"\n{len([f for f in figures if f.met])} targets met, {len(missed)} not met"
        + (f": {', '.join(missed)}" if missed else "")
    )


if __name__ == "__main__":
    main()
