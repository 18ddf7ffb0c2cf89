"""Fuzzing the command line: the real `unitsync` process, random words in every place.

Each run is a fresh `unitsync` process against one live agent (as scripts use it), its
command line drawn from a seeded generator: a command (or none, or a wrong one), its
options in random order, mixed in with its units, each value drawn from valid ones,
edge cases (empty, 4 KiB, names past 255 bytes, invisible characters, a leading `-`) and
random bytes that need not be UTF-8. Whatever it is given, `unitsync` must end with an
exit status of the table (README "Exit codes": 0-7, 130, 141; `run` also with its
command's) and never with a Python traceback; the agent must keep answering and log no
unexpected failure.

Runs go four at a time (a run is mostly process start-up). More runs, another seed:
`UNITSYNC_FUZZ_RUNS=3000 UNITSYNC_FUZZ_SEED=7 python -m pytest -q tests/test_cli_fuzz.py`.
Not drawn: values that make a run wait for minutes by design (`--timeout 0` or `5m` on a
start whose dependencies never complete, a service that never exits), `--store` (an etcd
that is not there is waited for), and `--install-completion` (it writes to the user's
shell files).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from conftest import AgentProcess

RUNS = int(os.environ.get("UNITSYNC_FUZZ_RUNS", "300"))
SEED = int(os.environ.get("UNITSYNC_FUZZ_SEED", "20"))
AT_ONCE = 4
RUN_LIMIT = 60.0
"""A run that takes this long is hung: nothing drawn waits more than a few seconds."""
TABLE = {0, 1, 2, 3, 4, 5, 6, 7, 130, 141}
"""Exit statuses of the README's table."""
COMMAND_STATUSES = {126, 127}
"""What `run` exits with when its command cannot be run (documented, as a shell's)."""
UNITSYNC = [sys.executable, "-m", "unitsync.cli"]

Draw = Callable[[random.Random], str]


def random_bytes(rng: random.Random) -> str:
    """Up to 12 random bytes, as Python hands them over from a command line."""
    data = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 13)))
    return os.fsdecode(data)


ODD = [
    "",
    "-",
    "--",
    "-x",
    "--help",
    " ",
    "a b",
    "\u200b",
    "x\u2028y",
    "\u202eabc",
    "é" * 128,
    "x" * 300,
    "😀" * 10,
    "\t",
    "a\nb",
    "=",
    "--timeout=1s",
]
NAMES = ["a", "b", "c", "app", "db", "web", "svc"]
DURATIONS = ["0.3s", "1s", "500ms", "1", "2s"]
BAD_DURATIONS = ["x", "-1", "5 minutes", "nan", "inf", "1e99", "99999999y", "1h 2m"]


def name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(NAMES)
    if roll < 0.8:
        return rng.choice(ODD)
    return random_bytes(rng)


def text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(["why", "it broke", "é" * 10, "x" * 4096, "x" * 4097])
    if roll < 0.7:
        return rng.choice(ODD)
    return random_bytes(rng)


def duration(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(DURATIONS)
    if roll < 0.9:
        return rng.choice(BAD_DURATIONS)
    return random_bytes(rng)


def number(rng: random.Random) -> str:
    return rng.choice(["1", "0", "-5", "2", "999999", "abc", "1.5", str(os.getpid())])


def choice(*values: str) -> Draw:
    return lambda rng: rng.choice([*values, *values, "bogus", random_bytes(rng)])


FLAG = None
"""An option that takes no value."""


@dataclass(frozen=True)
class Shape:
    """What a command takes: how many unit names, and its options (None: a flag)."""

    units: tuple[int, int]
    options: dict[str, Draw | None]
    waits: bool = False
    """It may wait: a `--timeout` of a few seconds is always given (in a random place)."""


SHAPES: dict[str, Shape] = {
    "ping": Shape((0, 0), {}),
    "want": Shape((1, 5), {"--once": FLAG}),
    "start": Shape((1, 1), {"--rerun": FLAG, "--once": FLAG, "--owner": number}, waits=True),
    "complete": Shape((1, 1), {"--force": FLAG, "--once": FLAG}),
    "fail": Shape((1, 1), {"--reason": text, "--force": FLAG}),
    "reset": Shape((0, 1), {"--all": FLAG}),
    "forget": Shape((1, 1), {}),
    "status": Shape((0, 1), {"-o": choice("table", "json", "dot", "mermaid"), "--watch": FLAG}),
    "run": Shape(
        (1, 1),
        {
            "--want": name,
            "--once": FLAG,
            "--ready-cmd": choice("true", "false", "exit 3"),
            "--ready-interval": duration,
            "--ready-log": choice("ready", "(", ".*"),
            "--notify": FLAG,
            "--ready-timeout": duration,
        },
        waits=True,
    ),
    "timeline": Shape((0, 0), {"--boot": number, "-o": choice("table", "json", "svg")}),
    "critical-chain": Shape((0, 1), {"--boot": number}),
    "blame": Shape((0, 0), {"--boot": number}),
}
RUN_COMMANDS: list[Callable[[random.Random], list[str]]] = [
    lambda rng: ["true"],
    lambda rng: ["false"],
    lambda rng: ["sh", "-c", "exit 3"],
    lambda rng: ["/bin/echo", name(rng), text(rng)],
    lambda rng: ["sleep", "0.2"],
    lambda rng: [random_bytes(rng)],  # no such command: 127
]


def command_line(rng: random.Random) -> list[str]:
    """One random `unitsync ...` command line (the words after `unitsync`)."""
    roll = rng.random()
    if roll < 0.03:
        return []
    if roll < 0.06:
        return [rng.choice(["sync", "bogus", random_bytes(rng), "--version", "-h"])]
    if roll < 0.09:
        return ["sync", rng.choice(["bogus", random_bytes(rng), "--help", ""])]
    command = rng.choice(list(SHAPES))
    shape = SHAPES[command]
    low, high = shape.units
    units = [name(rng) for _ in range(rng.randint(low, high))]
    if rng.random() < 0.05:  # one too many, or one too few
        units = [*units, name(rng)] if rng.random() < 0.5 else units[1:]
    options: list[list[str]] = []
    for option in rng.sample(list(shape.options), rng.randint(0, len(shape.options))):
        draw = shape.options[option]
        words = [option] if draw is None else [option, draw(rng)]
        if draw is not None and rng.random() < 0.1:
            words = [f"{option}={words[1]}"]
        if rng.random() < 0.05:
            words = words[:1]  # a value missing
        options.append(words)
    if shape.waits:
        options.append(["--timeout", rng.choice(DURATIONS + BAD_DURATIONS[:3])])
    if rng.random() < 0.1:
        options.append([rng.choice(["--bogus", "-q", "--socket"])])
    rng.shuffle(options)
    words: list[str] = [word for option in options for word in option]
    for unit in units:  # the units among the options, in order
        words.insert(rng.randint(0, len(words)), unit)
    if rng.random() < 0.1 and units:
        words = [word for word in words if word not in units] + ["--", *units]
    if command == "run" and rng.random() < 0.9:
        words += ["--", *rng.choice(RUN_COMMANDS)(rng)]
    return ["sync", command, *words]


@dataclass
class Outcome:
    words: list[str]
    code: int
    stderr: str

    def problem(self) -> str | None:
        allowed = TABLE | (COMMAND_STATUSES | {3} if self.words[1:2] == ["run"] else set())
        if "Traceback" in self.stderr:
            return "a traceback"
        if self.code not in allowed:
            return f"exit status {self.code}, not one of the table"
        return None

    def __str__(self) -> str:
        return f"unitsync {' '.join(map(repr, self.words))} -> {self.code}\n{self.stderr}"


def run_once(words: Sequence[str], socket: Path, cwd: Path, program: list[str]) -> Outcome:
    env = dict(os.environ, UNITSYNC_SOCKET=str(socket), UNITSYNC_AUTOSTART="0")
    watching = "--watch" in words
    proc = subprocess.Popen(
        [*program, *words],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    try:
        if watching:  # it runs until interrupted: interrupt it once it shows the units
            # (its first output on stdout; a refusal goes to stderr and exits): not after a
            # fixed second, when a busy machine may still be importing, and a Ctrl-C in the
            # middle of Python's imports is Python's traceback, not ours
            select.select([proc.stdout], [], [], RUN_LIMIT)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        return Outcome(list(words), -1, f"hung for {RUN_LIMIT:g}s\n" + err.decode(errors="replace"))
    return Outcome(list(words), proc.returncode, err.decode(errors="backslashreplace"))


def fuzz(
    socket: Path, cwd: Path, runs: int, seed: int, program: list[str] = UNITSYNC
) -> list[Outcome]:
    """Run `runs` random command lines; the outcomes that broke a rule."""
    rng = random.Random(seed)
    lines = [command_line(rng) for _ in range(runs)]
    with ThreadPoolExecutor(AT_ONCE) as pool:
        outcomes = list(pool.map(lambda words: run_once(words, socket, cwd, program), lines))
    return [outcome for outcome in outcomes if outcome.problem() is not None]


def test_random_command_lines_never_end_in_a_traceback(
    agent_process: AgentProcess, tmp_path: Path
) -> None:
    socket = agent_process.config.socket
    broken = fuzz(socket, tmp_path, RUNS, SEED)
    print(f"\n{RUNS} random command lines (seed {SEED}): {len(broken)} broke a rule")
    assert not broken, "\n\n".join(f"{o.problem()}: {o}" for o in broken[:5])
    from unitsync.client import Client

    with Client(socket) as client:  # the agent still serves
        assert client.ping().pid == agent_process.proc.pid  # type: ignore[union-attr]
    code, log = agent_process.stop()
    assert code == 0, log
    assert "failed unexpectedly" not in log and "Traceback" not in log, log


PLANTED = """
import sys
import unitsync.cli.hot as hot
import unitsync.cli.main as main
real = hot.change

def planted(socket, call):
    if any(not word.isascii() for word in sys.argv):
        raise RuntimeError("a bug planted where the fuzzer should find it")
    return real(socket, call)

hot.change = planted
main.main()
"""
"""`unitsync` with a bug: a change whose command line is not all ASCII raises."""


def test_the_fuzzer_finds_a_planted_traceback(agent_process: AgentProcess, tmp_path: Path) -> None:
    """The harness has teeth: with a bug planted in the command line, it reports it."""
    program = [sys.executable, "-c", PLANTED]
    broken = fuzz(agent_process.config.socket, tmp_path, 40, SEED, program)
    assert broken and all(outcome.problem() == "a traceback" for outcome in broken)
    assert "a bug planted where the fuzzer should find it" in broken[0].stderr
