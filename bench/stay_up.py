"""Issue 24's figures, services that stay up: a crash to a waiting dependent proceeding, `stop`
of a service that exits on SIGTERM at once, and `run`'s CPU while its restart policy waits.

- crash -> ready again -> dependent: `run --restart on-failure --restart-delay D --ready-log`
  runs a `sh` service that is ready at once and exits 1 when a line reaches its FIFO. The
  bench writes that line (time t0: the crash, to well under a millisecond), waits until the
  unit is `started` (restarting), then a dependent's `start` (the trio client, in this
  process) blocks on it; the figure is t0 to that `start` returning: the delay, the respawn,
  the readiness and the agent's path. A new unit each round, so each restart is a first one
  (the delay doubles within one run).
- `stop`: the trio client's `stop` of a ready `sh -c 'exec sleep 600'` service, from the call
  to its return (the `run` stopped its group, saw it gone, reported it; the agent answered).
  The command line's own start-up is not in it (bench/first_call.py measures that).
- CPU: `run`'s utime+stime from /proc over IDLE_SECONDS while its policy waits out a 1 m delay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from unitsync.client import AsyncClient

UNITSYNC = Path(sys.executable).with_name("unitsync")
DELAY = 0.2
"""The restart delay of the crash rounds: short, so 100 rounds take under a minute."""
SLACK = 0.050
"""The target: the delay plus 50 ms for everything else."""
IDLE_SECONDS = 3.0

CRASHER = 'echo ready; if [ -e "$1.crashed" ]; then exec sleep 600; fi; : > "$1.crashed"; read x < "$1"; exit 1'  # noqa: E501
"""Ready at once; the first start exits 1 on a line in its FIFO, the next one stays up (shell
builtins only between the line and the exit: the crash is the write, to a few µs)."""


def spawn_run(socket: Path, unit: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(UNITSYNC), "sync", "run", unit, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, UNITSYNC_SOCKET=str(socket)),
    )


async def _until(client: AsyncClient, unit: str, status: str) -> None:
    while True:
        try:
            [view] = await client.status(unit)
        except Exception:  # not known yet
            view = None
        if view is not None and view.status == status:
            return
        await trio.sleep(0.001)


def crash_to_dependent(socket: Path, rounds: int, folder: Path) -> list[float]:
    """Seconds from each crash to the dependent's `start` returning."""

    async def one(client: AsyncClient, i: int) -> float:
        unit, dependent = f"crash{i}", f"crash{i}-user"
        fifo = folder / f"crash{i}.fifo"
        os.mkfifo(fifo)
        await client.want(dependent, unit)
        run = spawn_run(
            socket, unit, "--ready-log", "^ready", "--restart", "on-failure",
            "--restart-delay", f"{DELAY * 1000:.0f}ms", "--", "sh", "-c", CRASHER, "sh", str(fifo),
        )  # fmt: skip
        try:
            await _until(client, unit, "completed")
            crashed = time.perf_counter()
            await trio.to_thread.run_sync(fifo.write_text, "crash\n")
            await _until(client, unit, "started")  # restarting: the dependent must wait
            await client.start(dependent)
            returned = time.perf_counter()
        finally:
            run.terminate()
            run.wait()
        return returned - crashed

    async def main() -> list[float]:
        async with await AsyncClient.connect(socket) as client:
            return [await one(client, i) for i in range(rounds)]

    return trio.run(main)


def stop_times(socket: Path, rounds: int) -> list[float]:
    """Seconds for the trio client's `stop` of a ready service that exits on SIGTERM."""

    async def one(client: AsyncClient, i: int) -> float:
        unit = f"stop{i}"
        run = spawn_run(socket, unit, "--ready-log", "^ready", "--", "sh", "-c",
                        "echo ready; exec sleep 600")  # fmt: skip
        try:
            await _until(client, unit, "completed")
            began = time.perf_counter()
            await client.stop(unit)
            took = time.perf_counter() - began
            run.wait(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        return took

    async def main() -> list[float]:
        async with await AsyncClient.connect(socket) as client:
            return [await one(client, i) for i in range(rounds)]

    return trio.run(main)


def waiting_cpu(socket: Path, folder: Path) -> float:
    """CPU seconds `run` uses over IDLE_SECONDS while its policy waits to restart."""
    fifo = folder / "idle.fifo"
    os.mkfifo(fifo)
    run = spawn_run(
        socket, "idle", "--ready-log", "^ready", "--restart", "on-failure",
        "--restart-delay", "1m", "--", "sh", "-c", CRASHER, "sh", str(fifo),
    )  # fmt: skip

    async def until(status: str) -> None:
        async with await AsyncClient.connect(socket) as client:
            await _until(client, "idle", status)

    try:
        trio.run(until, "completed")
        fifo.write_text("crash\n")
        trio.run(until, "started")
        time.sleep(0.2)  # its report made, its timer set
        before = cpu_seconds(run.pid)
        time.sleep(IDLE_SECONDS)
        return cpu_seconds(run.pid) - before
    finally:
        run.terminate()
        run.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    socket: Path, p50_p99_ms: Callable[[list[float]], tuple[float, float]], rounds: int
) -> list[tuple[str, str, str, bool, str]]:
    """(name, measured, target, met, note) for each figure."""
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory(prefix="us-bench-up-") as tmp:
        folder = Path(tmp)
        crashes = crash_to_dependent(socket, rounds, folder)
        p50, p99 = p50_p99_ms(crashes)
        target = (DELAY + SLACK) * 1000
        figures = [
            (
                "crash -> ready again -> waiting dependent's `start` returns, "
                f"delay {DELAY * 1000:.0f} ms",
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                f"p99 < {target:.0f} ms",
                p99 < target,
                f"{rounds} rounds, --ready-log; the delay, the respawn (sh), readiness, the "
                f"agent; {load}",
            )
        ]
        stops = stop_times(socket, rounds)
        p50, p99 = p50_p99_ms(stops)
        figures.append(
            (
                "`stop` of a service that exits on SIGTERM at once",
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                "p99 < 50 ms",
                p99 < 50,
                f"{rounds} rounds, the trio client's call; the group gone, `pending` durable",
            )
        )
        used = waiting_cpu(socket, folder)
        figures.append(
            (
                f"`run`'s CPU over {IDLE_SECONDS:g} s while its policy waits to restart",
                f"{used * 1000:.0f} ms",
                "0 (a timer)",
                used == 0,
                f"utime+stime from /proc, {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms ticks",
            )
        )
    return figures


if __name__ == "__main__":
    import run as bench

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    print(bench.machine(), flush=True)
    with bench.agent() as (agent_socket, _proc):
        for name, measured, target, met, note in measure(agent_socket, bench.p50_p99_ms, rounds):
            verdict = "met" if met else "NOT MET"
            print(f"  {name:<66} {measured:<30} target {target:<12} {verdict}")
            print(f"      {note}", flush=True)
