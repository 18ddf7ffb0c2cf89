"""SPEC §15's figures: what keeping a run's output costs, and how fast `logs` shows it.

    python bench/logs.py             # the three figures (about a minute)

- `run -- cat BIGFILE > /dev/null` on a 200 MB file, recording (the default) against not
  (`--log-limit 0`, where the command writes to /dev/null itself): the ratio of their wall
  times, whole commands (the agent calls included), median of 5 alternated pairs; beside it,
  in the same minutes, the floor any recording meets: `cat` alone and `cat | cat` (one pipe,
  no Python), since every byte kept must first cross a pipe into the recorder;
- `logs UNIT > /dev/null` of a full 8 MiB log (short lines): wall time to the last byte,
  median of 5;
- `logs -f` delay: a command writes a line every 20 ms stamped with the time of its write;
  the follower's output is read here and each line's arrival compared with its stamp
  (p50, p99 of 300 lines).

`unitsync` is measured as the README's first command installs it (`start_up.installed`: not
editable, bytecode compiled). Medians from one run; nothing here is a test.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import python_speed
from start_up import Figure, agent, installed

UNITSYNC = Path("unitsync")
"""As `start_up.installed` installs it (`pip install .`, bytecode compiled): what users run."""
BIG = 200 * 1000 * 1000
PAIRS = 5


CPU: list[float] = []
"""The CPU time (user + system) of each `_run`, children included: on a busy machine it
says more than the wall time."""


def _run(env: dict[str, str], *args: str, stdout: object = subprocess.DEVNULL) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run([str(UNITSYNC), "sync", *args], stdout=stdout, check=True, env=env)  # type: ignore[arg-type]
    took = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return took


def _pipe_floor(big: Path) -> tuple[float, float, float]:
    """Wall seconds of `cat BIG` to /dev/null: alone, through the least a pipe costs (1 MiB,
    drained by splice(2): no byte copied out of the kernel), and `cat BIG | cat`."""
    began = time.perf_counter()
    subprocess.run(["cat", str(big)], stdout=subprocess.DEVNULL, check=True)
    alone = time.perf_counter() - began
    began = time.perf_counter()
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1024 * 1024)
    writer = subprocess.Popen(["cat", str(big)], stdout=write_fd)
    os.close(write_fd)
    with open(os.devnull, "wb") as null:
        while os.splice(read_fd, null.fileno(), 1024 * 1024):
            pass
    os.close(read_fd)
    writer.wait()
    spliced = time.perf_counter() - began
    began = time.perf_counter()
    writer = subprocess.Popen(["cat", str(big)], stdout=subprocess.PIPE)
    subprocess.run(["cat"], stdin=writer.stdout, stdout=subprocess.DEVNULL, check=True)
    writer.stdout.close()  # type: ignore[union-attr]
    writer.wait()
    return alone, spliced, time.perf_counter() - began


def throughput(env: dict[str, str], folder: Path) -> list[Figure]:
    big = folder / "big"
    with open(big, "wb") as f:
        line = b"x" * 99 + b"\n"
        f.write(line * (BIG // len(line)))
    subprocess.run(["cat", str(big)], stdout=subprocess.DEVNULL, check=True)  # in the page cache
    recording, plain, cpu_rec, cpu_bare, floors = [], [], [], [], []
    for _ in range(PAIRS):
        floors.append(_pipe_floor(big))
        recording.append(_run(env, "run", "cat-rec", "--", "cat", str(big)))
        cpu_rec.append(CPU[-1])
        plain.append(_run(env, "run", "cat-plain", "--log-limit", "0", "--", "cat", str(big)))
        cpu_bare.append(CPU[-1])
    rec, bare = statistics.median(recording), statistics.median(plain)
    cat_alone, cat_spliced, cat_piped = (statistics.median(f) for f in zip(*floors, strict=True))
    pipe_cost = cat_spliced - cat_alone
    ratio = bare / rec
    big.unlink()
    return [
        Figure(
            "run -- cat 200 MB > /dev/null: recording ÷ not (throughput)",
            f"{ratio:.2f}× ({rec * 1000:.0f} ms recording, {bare * 1000:.0f} ms not)",
            "≥ 0.9×",
            ratio >= 0.9,
            f"CPU {statistics.median(cpu_rec) * 1000:.0f} ms recording, "
            f"{statistics.median(cpu_bare) * 1000:.0f} ms not (cat's included)",
        ),
        Figure(
            "  the floor: cat 200 MB > /dev/null alone, through a spliced pipe, | cat",
            f"{cat_alone * 1000:.0f} ms alone, {cat_spliced * 1000:.0f} ms through the least "
            f"a pipe costs, {cat_piped * 1000:.0f} ms through `| cat`",
            "reference",
            None,
            f"the pipe alone costs {pipe_cost * 1000:.0f} ms; `run`'s recording beyond it "
            f"{(rec - bare - pipe_cost) * 1000:.0f} ms",
        ),
    ]


def read_all(env: dict[str, str]) -> list[Figure]:
    code = (
        "import sys\n"
        "w = sys.stdout.write\n"
        "for i in range(200000): w(f'line {i:07d} of a log that fills its limit ......\\n')\n"
    )
    _run(env, "run", "full", "--", sys.executable, "-c", code)
    times, cpu, ping = [], [], []
    for _ in range(5):
        with tempfile.TemporaryFile() as out:
            times.append(_run(env, "logs", "full", stdout=out))
            cpu.append(CPU[-1])
            size = out.tell()
        ping.append(_run(env, "ping"))
    median = statistics.median(times)
    return [
        Figure(
            "logs of a full 8 MiB log, to the last byte",
            f"{median * 1000:.0f} ms ({size / 2**20:.1f} MiB shown)",
            "< 300 ms",
            median < 0.3,
            f"CPU {statistics.median(cpu) * 1000:.0f} ms; `sync ping` beside it: "
            f"{statistics.median(ping) * 1000:.0f} ms",
        )
    ]


def follow_delay(env: dict[str, str]) -> list[Figure]:
    code = (
        "import sys, time\n"
        "for i in range(300):\n"
        "    print(f'{time.time():.6f}', flush=True)\n"
        "    time.sleep(0.02)\n"
    )
    _run(env, "run", "ticker", "--", "true")
    follower = subprocess.Popen(
        [str(UNITSYNC), "sync", "logs", "-f", "ticker"], stdout=subprocess.PIPE, env=env
    )
    time.sleep(1.0)  # the follower is reading the first run
    writer = subprocess.Popen(
        [str(UNITSYNC), "sync", "run", "ticker", "--", sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    delays: list[float] = []
    buffer = b""
    fd = follower.stdout.fileno()  # type: ignore[union-attr]
    deadline = time.monotonic() + 60
    while len(delays) < 300 and time.monotonic() < deadline:
        if not select.select([fd], [], [], 1.0)[0]:
            continue
        buffer += os.read(fd, 65536)
        now = time.time()
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):  # (a run's header)
                delays.append(now - float(line))
    writer.wait()
    follower.kill()
    follower.wait()
    delays.sort()
    p50 = delays[len(delays) // 2]
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    return [
        Figure(
            "logs -f: a line's write to its print, p99",
            f"{p99 * 1000:.1f} ms (p50 {p50 * 1000:.1f} ms, {len(delays)} lines)",
            "< 50 ms",
            p99 < 0.05,
        )
    ]


def main() -> None:
    figures: list[Figure] = [python_speed()]
    with (
        installed() as bin,
        agent(bin) as (env, _process),
        tempfile.TemporaryDirectory() as folder,
    ):
        figures += throughput(env, Path(folder))
        figures += read_all(env)
        figures += follow_delay(env)
    for figure in figures:
        mark = {True: "met", False: "MISSED", None: ""}[figure.met]
        print(f"{figure.name}: {figure.measured} (target {figure.target}) {mark} {figure.note}")


if __name__ == "__main__":
    main()
