"""Bounds and bad bytes through the real command line, against real agent processes (SPEC §12).

Each measured failure, as measured, now ending the documented way: a command past a bound
is refused naming it; a state dir written before the bounds (`tests/fixtures/
journal-oversize`) loads and every view of it works and says what it cut; bytes that are
not UTF-8 are one line and exit 2 for every command; `run` passes them on to its command.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unitsync.agent.serve.server import AgentConfig
from unitsync.client import Client
from unitsync.wire.bounds import MAX_DEPS

from conftest import AgentProcess, run_cli, spawn_cli

FIXTURE = Path(__file__).parent / "fixtures" / "journal-oversize"


# --- bounds ------------------------------------------------------------------------------------


def test_wanting_25000_dependencies_is_refused_and_status_goes_on(
    agent_process: AgentProcess,
) -> None:
    """The measured command (`want big $(seq -f 'dep%g' 1 25000)`) broke `status` for
    everyone, for good: it is refused, naming the bound and what to do."""
    socket = agent_process.config.socket
    deps = [f"dep{i}" for i in range(1, 25_001)]
    refused = run_cli("sync", "want", "big", *deps, socket=socket)
    assert refused.code == 1, refused.err
    assert refused.err.count("\n") == 1 and "Traceback" not in refused.err
    assert f"a unit may want at most {MAX_DEPS}" in refused.err and "group them" in refused.err
    fits = run_cli("sync", "want", "big", *deps[:MAX_DEPS], socket=socket)
    assert fits.code == 0, fits.err
    one_more = run_cli("sync", "want", "big", "dep-extra", socket=socket)
    assert one_more.code == 1 and f"would want {MAX_DEPS + 1} units" in one_more.err
    for args in (["status"], ["status", "big"], ["status", "-o", "json"]):
        shown = run_cli("sync", *args, socket=socket)
        assert shown.code == 0, shown.err


def test_a_reason_past_its_bound_is_refused_and_the_longest_fit(
    agent_process: AgentProcess,
) -> None:
    socket = agent_process.config.socket
    long = run_cli("sync", "fail", "x", "--force", "--reason", "é" * 2049, socket=socket)
    assert long.code == 1 and "longer than 4096 bytes (it is 4098)" in long.err
    for i in range(100):  # a full history of the longest reasons
        with Client(socket) as client:
            client.fail("poison", f"{i:03d}" + "p" * 4093, force=True)
    shown = run_cli("sync", "status", "poison", "-o", "json", socket=socket)
    assert shown.code == 0, shown.err
    view = json.loads(shown.out)
    assert len(view["history"]) == 100 and view["cut"] == []


def test_a_unit_wanted_by_more_units_than_a_view_lists_says_so(
    agent_process: AgentProcess,
) -> None:
    socket = agent_process.config.socket
    with Client(socket) as client:
        for i in range(600):
            client.want(f"w{i:03d}", "base")
    shown = run_cli("sync", "status", "base", socket=socket)
    assert shown.code == 0, shown.err
    assert "cut:        dependents: 100 of 600 not listed (a view lists the first 500" in shown.out
    table = run_cli("sync", "status", socket=socket)
    assert table.out.rstrip().endswith(
        "cut: the views of base leave something out; `unitsync sync status UNIT` says what"
    )


# --- a state dir written before the bounds -----------------------------------------------------


@pytest.fixture
def oversize(short_tmp: Path) -> AgentProcess:
    """An agent on a copy of the pinned state dir written before the bounds."""
    state = short_tmp / "state"
    state.mkdir(mode=0o700)
    for name in ("journal.log", "snapshot.bin"):
        shutil.copy(FIXTURE / name, state / name)
        (state / name).chmod(0o600)
    config = AgentConfig(socket=short_tmp / "run" / "agent.sock", state_dir=state)
    agent = AgentProcess(config, extra=("--boot-id", "fixture-boot")).start()
    yield agent
    if agent.proc is not None and agent.proc.poll() is None:
        agent.kill()


def test_a_journal_written_before_the_bounds_loads_and_every_view_shows_the_cut(
    oversize: AgentProcess,
) -> None:
    socket = oversize.config.socket
    table = run_cli("sync", "status", socket=socket)
    assert table.code == 0, table.err
    assert "cut: the views of big, svc leave something out" in table.out

    big = run_cli("sync", "status", "big", socket=socket)
    assert big.code == 0, big.err
    assert "cut:        dependencies: 17,500 of 18,000 not listed (stored before that bound)" in (
        big.out
    )
    svc = run_cli("sync", "status", "svc", socket=socket)
    assert svc.code == 0, svc.err
    assert "cut:        owner: its command cut to 1,024 of 100,006 bytes" in svc.out

    everything = run_cli("sync", "status", "-o", "json", socket=socket)
    assert everything.code == 0, everything.err
    units = {unit["name"]: unit for unit in json.loads(everything.out)["units"]}
    assert len(units) == 18_000 + 9
    assert len(units["big"]["dependencies"]) == MAX_DEPS and units["big"]["cut"]
    assert units["app"]["cut"] == []

    watch = spawn_cli("sync", "status", "--watch", "-o", "json", socket=socket)
    assert watch.stdout is not None
    first = json.loads(watch.stdout.readline())
    watch.send_signal(signal.SIGINT)
    watch.communicate(timeout=60)
    shown = {unit["name"]: unit for unit in first["units"]}
    assert first["event"] == "snapshot" and shown["big"]["cut"] == units["big"]["cut"]

    timeline = run_cli("sync", "timeline", socket=socket)
    assert timeline.code == 0, timeline.err
    assert "cut: the agent's views of big leave something out" in timeline.out
    timeline_json = run_cli("sync", "timeline", "-o", "json", socket=socket)
    assert json.loads(timeline_json.out)["cut"] == ["big"]
    chain = run_cli("sync", "critical-chain", "app", socket=socket)
    assert chain.code == 0, chain.err


def test_units_named_before_the_name_rules_stay_usable(oversize: AgentProcess) -> None:
    socket = oversize.config.socket
    for name in (" ", "zero\u200bwidth", "nel\u0085x"):
        shown = run_cli("sync", "status", "--", name, socket=socket)
        assert shown.code == 0, shown.err
        assert run_cli("sync", "complete", "--", name, socket=socket).code == 0
    assert run_cli("sync", "forget", "--", "nel\u0085x", socket=socket).code == 0
    refused = run_cli("sync", "want", "big", "d18001", socket=socket)
    assert refused.code == 1 and "would want 18001 units" in refused.err
    assert run_cli("sync", "want", "big", "d17", socket=socket).code == 0  # already: no-op


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("a\u0085b", "U+0085"),
        ("a\u2028b", "U+2028 (LINE SEPARATOR), a line separator"),
        ("abc\u202e", "U+202E (RIGHT-TO-LEFT OVERRIDE), a format character"),
        ("a\u200bb", "U+200B (ZERO WIDTH SPACE), a format character"),
        (" ", "is only whitespace"),
    ],
    ids=["NEL", "U+2028", "bidi override", "zero width", "a lone space"],
)
def test_names_that_hide_or_break_their_line_are_refused(
    agent_process: AgentProcess, name: str, said: str
) -> None:
    result = run_cli("sync", "want", "--", name, "base", socket=agent_process.config.socket)
    assert result.code == 1, result.err
    assert said in result.err and "Unicode categories Cc, Cf, Zl, Zp" in result.err
    assert result.err.count("\n") == 1


# --- bytes that are not UTF-8 ------------------------------------------------------------------

BAD = "a\udcff"
"""`a` then the byte 0xff, as Python hands over a command line that is not UTF-8."""


@pytest.mark.parametrize(
    "args",
    [
        ["want", BAD, "base"],
        ["want", "app", "ok", BAD],
        ["start", BAD, "--timeout", "1s"],
        ["complete", BAD],
        ["fail", BAD],
        ["fail", "base", "--force", "--reason", "oops\udcff"],
        ["reset", BAD],
        ["forget", BAD],
        ["status", BAD],
        ["status", BAD, "-o", "json"],
        ["status", BAD, "--watch", "-o", "json"],
        ["run", BAD, "--", "true"],
        ["run", "r", "--want", BAD, "--", "true"],
        ["run", "r", "--ready-log", "\udcff", "--", "true"],
        ["critical-chain", BAD],
    ],
    ids=lambda args: " ".join(args).replace("\udcff", "\\xff"),
)
def test_an_argument_that_is_not_utf8_is_one_line_and_exit_2(
    agent_process: AgentProcess, args: list[str]
) -> None:
    result = run_cli("sync", *args, socket=agent_process.config.socket)
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    assert "\\xff'" in result.err and "not valid UTF-8" in result.err


@pytest.mark.parametrize("option", ["--boot-id", "--host-id"])
def test_an_agent_option_kept_as_text_that_is_not_utf8_is_refused(
    short_tmp: Path, option: str
) -> None:
    """The agent keeps these in its journal and shows them: they are text too."""
    state = short_tmp / "state"
    result = run_cli("agent", "--state-dir", str(state), option, BAD, timeout=60)
    assert result.code == 2, result.err
    assert result.err == f"unitsync agent: {option} 'a\\xff' is not valid UTF-8 (the bytes " + (
        "shown as \\xNN); give it in UTF-8\n"
    )
    assert not state.exists()  # refused before anything was made


def test_run_passes_bytes_that_are_not_utf8_to_its_command_and_shows_them_escaped(
    agent_process: AgentProcess,
) -> None:
    socket = agent_process.config.socket
    env_socket = {"UNITSYNC_SOCKET": str(socket)}
    echo = subprocess.run(
        [sys.executable, "-m", "unitsync.cli", "sync", "run", "r2", "--", "/bin/echo", "\udcff"],
        capture_output=True,
        env={**_environ(), **env_socket},
        timeout=60,
    )
    assert echo.returncode == 0, echo.stderr
    assert echo.stdout == b"\xff\n"

    command = ["/bin/sh", "-c", "sleep 60", "x\udcfe"]
    running = subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", "sync", "run", "r3", "--", *command],
        stderr=subprocess.PIPE,
        env={**_environ(), **env_socket},
    )
    try:
        deadline = time.monotonic() + 60
        shown = ""
        while "owner:" not in shown and time.monotonic() < deadline:
            shown = run_cli("sync", "status", "r3", socket=socket).out
        assert "(/bin/sh -c 'sleep 60' $'x\\xfe'), `unitsync sync run`, running" in shown
    finally:
        running.send_signal(signal.SIGTERM)
        running.communicate(timeout=60)


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


# --- critical-chain ----------------------------------------------------------------------------


def test_a_deep_critical_chain_prints_in_proportion_to_its_length(
    agent_process: AgentProcess,
) -> None:
    """A 5,000-deep chain printed 25 MB (its indentation grew with depth); from the 16th
    step on, a step says its depth instead."""
    socket = agent_process.config.socket
    depth = 400
    with Client(socket) as client:
        for i in range(1, depth):
            client.want(f"c{i}", f"c{i - 1}")
        for i in range(depth):
            client.start(f"c{i}")
            client.complete(f"c{i}")
    chain = run_cli("sync", "critical-chain", f"c{depth - 1}", socket=socket)
    assert chain.code == 0, chain.err
    lines = chain.out.splitlines()
    assert len(lines) == depth + 3
    assert max(len(line) for line in lines) < 120
    assert f"└─[{depth - 1}] c0 @" in lines[-1]
