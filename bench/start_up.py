"""SPEC §6, round 3: a workspace's start-up, and what one call costs (issue 22).

    python bench/start_up.py               # both figure sets (about two minutes)
    python bench/start_up.py --calls       # only the hot calls
    python bench/start_up.py --workspace   # only the 50-unit start-up

Both measure `unitsync` as the README's first command installs it: `pip install .` (not
editable; bytecode compiled at install), into a scratch venv that takes its dependencies
from this one.

- **A workspace's start-up**: a seeded DAG of 50 units (10 layers of 5, each wanting 2 of
  the previous layer, each doing `sleep 0.05`), all 50 scripts launched at once in a seeded
  random order, as a workspace agent launches them, ordered by: one `run --want A --want B
  -- ...` per script; `want` + `start` + `complete`; flag files polled every second (what
  `coder exp sync start` does); a systemd user manager with 50 oneshot units (Requires= and
  After=; where one can run: as root, in a private mount namespace, `systemd_dag.py`); and
  the in-process ideal (a thread per unit, an event per unit). Repetitions are interleaved
  (every way once, then again), and each run's order is checked from what the units' work
  recorded: no unit's work began before every dependency's work had ended (`check_order`).
- **A hot call** (`ping`, `want`, `start` of a ready unit, `complete`, `fail`, `run --
  true`): the CPU of the whole process (`resource.getrusage(RUSAGE_CHILDREN)`), beside
  `python -c pass` and `python -c "import msgspec"` of the same interpreter, interleaved.

Nothing here is a test; the figures are printed beside their targets.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 22
LAYERS, WIDTH, FAN_IN = 10, 5, 2
WORK_SECONDS = 0.05
POLL_SECONDS = 1.0
"""`coder exp sync start`'s poll: the figure unitsync must beat by 3×."""
WORK = (
    'echo "begin {unit} $EPOCHREALTIME" >>{log}; sleep 0.05; '
    'echo "end {unit} $EPOCHREALTIME" >>{log}'
)
"""Each unit's work: `sleep 0.05`, between two stamps that the order check reads (bash's
clock, no process of its own; each line one O_APPEND write)."""
ENVIRONMENT = {"LC_ALL": "C"}  # `$EPOCHREALTIME` with a dot
PIP = [sys.executable, "-m", "pip"]
"""This venv's pip installs into the scratch venv (`--python`); it compiles the bytecode."""
NAMESPACE = ["unshare", "-m", "--propagation", "private"]


@dataclass
class Figure:
    name: str
    measured: str
    target: str
    met: bool | None
    note: str = ""


# --- the installed command ------------------------------------------------------------------


@contextlib.contextmanager
def installed(source: Path = ROOT) -> Iterator[Path]:
    """A scratch venv with this checkout (or `source`) `pip install`ed (not editable, bytecode
    compiled), its dependencies taken from this venv by a path line; yields its `bin` folder."""
    base = Path(tempfile.mkdtemp(prefix="us-install-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", base], check=True)
        where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        purelib = subprocess.run(
            [base / "bin" / "python", "-c", where],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run(
            [*PIP, "--python", base / "bin" / "python", "install", "-q", "--no-deps", source],
            check=True,
            capture_output=True,
        )
        yield base / "bin"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def agent(bin: Path) -> Iterator[tuple[dict[str, str], subprocess.Popen[str]]]:
    """A fresh agent (socket and state dir of its own); yields the scripts' environment."""
    base = Path(tempfile.mkdtemp(prefix="us-startup-"))
    environ = dict(
        os.environ,
        **ENVIRONMENT,
        UNITSYNC_SOCKET=str(base / "run" / "agent.sock"),
        UNITSYNC_STATE_DIR=str(base / "state"),
        UNITSYNC_AUTOSTART="0",
        PATH=f"{bin}:{os.environ['PATH']}",
    )
    proc = subprocess.Popen(
        [bin / "unitsync", "agent"], env=environ, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line:
            break
    else:
        raise RuntimeError("the agent did not start")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # its log: never a full pipe
    try:
        yield environ, proc
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the DAG and its order ------------------------------------------------------------------


def dag(seed: int = SEED, layers: int = LAYERS, width: int = WIDTH) -> dict[str, list[str]]:
    """Each unit and the units it wants: `l0u0`.. ; each unit of a layer wants FAN_IN of the
    previous layer's, picked by the seed."""
    pick = random.Random(seed)
    units: dict[str, list[str]] = {}
    for layer in range(layers):
        for index in range(width):
            before = [f"l{layer - 1}u{i}" for i in range(width)] if layer else []
            units[f"l{layer}u{index}"] = sorted(pick.sample(before, FAN_IN)) if before else []
    return units


def _stamps(log: str) -> dict[tuple[str, str], list[float]]:
    """The work's stamps: ("begin" or "end", unit) -> the times written."""
    stamps: dict[tuple[str, str], list[float]] = {}
    for line in log.splitlines():
        what, unit, when = line.split()
        stamps.setdefault((what, unit), []).append(float(when))
    return stamps


def check_order(units: dict[str, list[str]], log: str) -> list[str]:
    """What was wrong with the order the work's stamps show (empty: right): every unit's work
    ran once, and began after every dependency's work had ended."""
    stamps = _stamps(log)
    problems = [
        f"{unit}'s work ran {len(stamps.get(('begin', unit), []))} times"
        for unit in units
        if len(stamps.get(("begin", unit), [])) != 1 or len(stamps.get(("end", unit), [])) != 1
    ]
    for unit, deps in units.items():
        for dep in deps:
            begun, ended = stamps.get(("begin", unit)), stamps.get(("end", dep))
            if begun and ended and begun[0] < ended[0]:
                problems.append(f"{unit} began {ended[0] - begun[0]:.3f}s before {dep} ended")
    return problems


def handoff(units: dict[str, list[str]], log: str) -> float:
    """The median time from a unit's last dependency's end to the unit's own work's begin
    (seconds; units that wait on none left out): what ordering costs on the chain, apart
    from the start-up of the processes."""
    stamps = _stamps(log)
    gaps = [
        stamps[("begin", unit)][0] - max(stamps[("end", dep)][0] for dep in deps)
        for unit, deps in units.items()
        if deps
    ]
    return statistics.median(gaps)


def scripts(way: str, units: dict[str, list[str]], log: Path, flags: Path) -> dict[str, str]:
    """Each unit's script (sh), written the way `way` orders units."""
    found = {}
    for unit, deps in units.items():
        work = WORK.format(unit=unit, log=log)
        quoted = "'" + work.replace("'", "'\\''") + "'"
        if way == "run":
            wants = "".join(f" --want {dep}" for dep in deps)
            found[unit] = f"unitsync sync run {unit}{wants} -- bash -c {quoted}"
        elif way == "want-start-complete":
            want = f"unitsync sync want {unit} {' '.join(deps)} && " if deps else ""
            found[unit] = (
                f"{want}unitsync sync start {unit} && bash -c {quoted} && "
                f"unitsync sync complete {unit}"
            )
        elif way == "poll":
            missing = " || ".join(f"[ ! -e {flags / dep} ]" for dep in deps) or "false"
            found[unit] = (
                f"while {missing}; do sleep {POLL_SECONDS:g}; done; bash -c {quoted}; "
                f"touch {flags / unit}"
            )
        elif way == "unordered":  # no ordering at all: what the order check must catch
            found[unit] = f"bash -c {quoted}"
        else:
            raise ValueError(way)
    return found


@dataclass
class Outcome:
    wall: float
    scripts_cpu: float
    agent_cpu: float
    problems: list[str]
    handoff: float = 0.0
    """Median seconds from a dependency's end to its dependent's begin (`handoff`)."""


def launch(way: str, units: dict[str, list[str]], bin: Path, seed: int = SEED) -> Outcome:
    """All the scripts launched at once, in a seeded random order; until the last one ends."""
    folder = Path(tempfile.mkdtemp(prefix="us-dag-"))
    log, flags = folder / "work.log", folder / "flags"
    flags.mkdir()
    texts = scripts(way, units, log, flags)
    order = list(texts)
    random.Random(seed).shuffle(order)
    needs_agent = way in ("run", "want-start-complete")
    with contextlib.ExitStack() as stack:
        if needs_agent:
            environ, agent_proc = stack.enter_context(agent(bin))
        else:
            environ = dict(os.environ, **ENVIRONMENT)
        cpu_before, started = _children_cpu(), time.perf_counter()
        procs = [
            subprocess.Popen(
                ["sh", "-c", texts[unit]],
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for unit in order
        ]
        codes = [proc.wait() for proc in procs]
        wall = time.perf_counter() - started
        scripts_cpu = _children_cpu() - cpu_before
        agent_cpu = _cpu_of(agent_proc.pid) if needs_agent else 0.0
    problems = [f"a script exited {code}" for code in codes if code]
    text = log.read_text() if log.exists() else ""
    problems += check_order(units, text)
    shutil.rmtree(folder, ignore_errors=True)
    gap = 0.0 if problems else handoff(units, text)
    return Outcome(wall, scripts_cpu, agent_cpu, problems, gap)


def ideal(units: dict[str, list[str]], seed: int = SEED) -> Outcome:
    """The same work in one process: a thread per unit, started in the same random order,
    waiting on its dependencies' events."""
    folder = Path(tempfile.mkdtemp(prefix="us-dag-"))
    log = folder / "work.log"
    done = {unit: threading.Event() for unit in units}
    environ = dict(os.environ, **ENVIRONMENT)

    def one(unit: str) -> None:
        for dep in units[unit]:
            done[dep].wait()
        subprocess.run(["bash", "-c", WORK.format(unit=unit, log=log)], env=environ, check=True)
        done[unit].set()

    order = list(units)
    random.Random(seed).shuffle(order)
    cpu_before, self_before = _children_cpu(), time.process_time()
    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(unit,)) for unit in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before + time.process_time() - self_before
    text = log.read_text()
    problems = check_order(units, text)
    shutil.rmtree(folder, ignore_errors=True)
    return Outcome(wall, cpu, 0.0, problems, 0.0 if problems else handoff(units, text))


def systemd(units: dict[str, list[str]], seed: int = SEED) -> Outcome | str:
    """The same DAG as 50 oneshot units of a systemd user manager (`systemd_dag.py`, in a
    private mount namespace); a string says why it cannot run here."""
    if os.geteuid() != 0:
        return "needs root (a private mount namespace and a tmpfs over /run/systemd)"
    for tool in ("systemd", "systemctl", "unshare", "mount", "bash"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    import json

    folder = Path(tempfile.mkdtemp(prefix="us-systemd-"))
    try:
        result = subprocess.run(
            [
                *NAMESPACE,
                sys.executable,
                Path(__file__).with_name("systemd_dag.py"),
                folder,
                str(seed),
            ],
            input=json.dumps(units),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            return f"systemd_dag.py failed: {result.stderr.strip()[-300:]}"
        seen = json.loads(result.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    problems = check_order(units, seen["log"])
    return Outcome(
        seen["wall"], seen["cpu"], 0.0, problems, 0.0 if problems else handoff(units, seen["log"])
    )


WAYS = {
    "run": "unitsync, one `run --want A --want B -- ...` per script",
    "want-start-complete": "unitsync, `want` + `start` + `complete`",
    "poll": "flag files polled every 1 s (`coder exp sync start`)",
    "systemd": "systemd user manager, 50 oneshot units, Requires=/After=",
    "ideal": "ideal: in-process threads and events",
}


def workspace(repetitions: int = 5) -> list[Figure]:
    units = dag()
    outcomes: dict[str, list[Outcome]] = {way: [] for way in WAYS}
    why_not: dict[str, str] = {}
    with installed() as bin:
        for repetition in range(repetitions):  # interleaved: drift hits every way alike
            for way in WAYS:
                if way in why_not:
                    continue
                if way == "ideal":
                    outcome: Outcome | str = ideal(units, SEED + repetition)
                elif way == "systemd":
                    outcome = systemd(units, SEED + repetition)
                else:
                    outcome = launch(way, units, bin, SEED + repetition)
                if isinstance(outcome, str):
                    why_not[way] = outcome
                    continue
                outcomes[way].append(outcome)
                if outcome.problems:
                    raise SystemExit(f"{way}: wrong order: {outcome.problems[:3]}")

    def median(way: str, field: str) -> float:
        return statistics.median(getattr(o, field) for o in outcomes[way])

    base = median("ideal", "wall")
    poll = median("poll", "wall")
    targets = {"run": 2.5, "want-start-complete": 6.0}
    figures = []
    for way, title in WAYS.items():
        if way in why_not:
            figures.append(Figure(f"50 units: {title}", "not run", "", None, why_not[way]))
            continue
        wall = median(way, "wall")
        agent_cpu = f", agent {median(way, 'agent_cpu'):.2f} s" if way in targets else ""
        measured = f"{wall:.2f} s, {wall / base:.2f}x ideal"
        target, met = "", None
        if way in targets:
            measured += f", poll / this {poll / wall:.2f}x"
            target = f"<= {targets[way]:g}x, >= 3x"
            met = wall / base <= targets[way] and poll / wall >= 3
        figures.append(
            Figure(
                f"50 units: {title}",
                measured,
                target,
                met,
                f"median of {len(outcomes[way])} interleaved runs, order checked each run; "
                f"CPU of the scripts {median(way, 'scripts_cpu'):.2f} s{agent_cpu}; a dependency's "
                f"end to its dependent's begin {median(way, 'handoff') * 1000:.0f} ms",
            )
        )
    return figures


# --- hot calls ------------------------------------------------------------------------------


def _cpu_and_wall(command: list[str | Path], environ: dict[str, str]) -> tuple[float, float]:
    cpu, started = _children_cpu(), time.perf_counter()
    subprocess.run(command, env=environ, capture_output=True, check=True)
    return _children_cpu() - cpu, time.perf_counter() - started


def hot_calls(runs: int = 30) -> list[Figure]:
    """Each hot call's CPU, whole process, beside `python -c pass` and `import msgspec`."""
    samples: dict[str, list[tuple[float, float]]] = {}
    with installed() as bin, agent(bin) as (environ, _proc):
        python, unitsync = bin / "python", bin / "unitsync"
        for i in range(runs):  # interleaved: drift in the machine hits every command alike
            calls: dict[str, list[str | Path]] = {
                "python -c pass": [python, "-c", "pass"],
                'python -c "import msgspec"': [python, "-c", "import msgspec"],
                "ping": [unitsync, "sync", "ping"],
                "want": [unitsync, "sync", "want", f"w{i}", "dep"],
                "start (a ready unit)": [unitsync, "sync", "start", f"s{i}"],
                "complete": [unitsync, "sync", "complete", f"s{i}"],
                "fail": [unitsync, "sync", "fail", f"w{i}", "--reason", "bench"],
                "run -- true": [unitsync, "sync", "run", f"r{i}", "--", "true"],
            }
            for name, command in calls.items():
                samples.setdefault(name, []).append(_cpu_and_wall(command, environ))

    def median(name: str, which: int) -> float:
        return statistics.median(sample[which] for sample in samples[name]) * 1000

    floor = median("python -c pass", 0)
    figures = [
        Figure(
            f"hot call: {name}",
            f"{median(name, 0):.1f} ms CPU, {median(name, 0) / floor:.2f}x"
            if name.startswith("python") is False
            else f"{median(name, 0):.1f} ms CPU",
            "<= 40 ms, <= 3x" if not name.startswith("python") else "(reference)",
            median(name, 0) <= 40 and median(name, 0) <= 3 * floor
            if not name.startswith("python")
            else None,
            f"median of {runs} interleaved runs, whole process; wall {median(name, 1):.1f} ms",
        )
        for name in samples
    ]
    return figures


def show(figures: list[Figure]) -> None:
    for figure in figures:
        verdict = {True: "met", False: "NOT MET", None: ""}[figure.met]
        print(f"  {figure.name:<58} {figure.measured:<38} target {figure.target:<12} {verdict}")
        if figure.note:
            print(f"      {figure.note}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", action="store_true", help="only the hot calls")
    parser.add_argument("--workspace", action="store_true", help="only the 50-unit start-up")
    args = parser.parse_args()
    steps: list[Callable[[], list[Figure]]] = []
    if not args.workspace:
        steps.append(hot_calls)
    if not args.calls:
        steps.append(workspace)
    for step in steps:
        show(step())
