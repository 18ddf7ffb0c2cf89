"""The newcomer's path, round three (issue 23): each defect a new user met, through the real
CLI against a real agent (a pseudo-terminal where the terminal matters)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unitsync.cli.usage import USAGE

from conftest import AgentProcess, run_cli, sock

# --- 6. a negative duration is said to be one ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["start", "foo", "--timeout", "-5s"],
            "start: --timeout -5s: a duration cannot be negative",
        ),
        (
            ["run", "foo", "--ready-cmd", "true", "--ready-interval", "-1s", "--", "true"],
            "run: --ready-interval -1s: a duration cannot be negative",
        ),
        (["start", "foo", "--timeout"], "start: --timeout needs a value"),
    ],
)
def test_a_negative_duration_is_refused_as_negative(
    short_tmp: Path, args: list[str], said: str
) -> None:
    result = run_cli("sync", *args, socket=short_tmp / "none.sock")
    assert result.code == 2
    first, usage = result.err.splitlines()
    assert first.startswith(f"unitsync: {said}"), result.err
    assert usage == f"usage: {USAGE[args[0]]}"


# --- 9. forgotten names, options after `--`, the autostart switch -------------------------------


def test_a_forgotten_unit_is_said_to_be_forgotten_and_when(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    assert run_cli("sync", "want", "clade", "git", socket=s).code == 0
    assert run_cli("sync", "forget", "clade", socket=s).code == 0
    reset = run_cli("sync", "reset", "clade", socket=s)
    assert reset.code == 1
    assert "unknown unit 'clade': it was forgotten at 20" in reset.err
    assert "(`forget`); check the name" in reset.err
    failed = run_cli("sync", "fail", "clade", socket=s)
    assert failed.code == 1 and "it was forgotten at" in failed.err
    assert "(or use --force to declare it failed anyway)" in failed.err
    never = run_cli("sync", "status", "ghost", socket=s)
    assert (
        never.err == "unitsync: unknown unit 'ghost': never named (or forgotten); check the name\n"
    )
    # Named again, it is a unit again, and no longer "forgotten".
    assert run_cli("sync", "want", "clade", "git", socket=s).code == 0
    assert run_cli("sync", "forget", "clade", socket=s).code == 0
    assert run_cli("sync", "start", "clade", socket=s).code == 0
    assert "forgotten" not in run_cli("sync", "reset", "clade", socket=s).err


def test_a_name_after_dashes_that_is_an_option_is_warned_of(agent_process: AgentProcess) -> None:
    s = sock(agent_process)
    result = run_cli("sync", "want", "--", "-weird2", "-other", "--once", socket=s)
    assert result.code == 0, result.err
    assert result.out == "-weird2 now wants -other, --once\n"
    assert result.err == (
        "unitsync: warning: '--once' after `--` is taken as a unit name, not as the option "
        "--once; options go before `--`\n"
    )
    plain = run_cli("sync", "want", "--", "-weird3", "-other", socket=s)
    assert plain.code == 0 and plain.err == ""  # names that are no option: nothing to say


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF", " off "])
def test_autostart_off_in_any_usual_spelling(
    short_tmp: Path, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNITSYNC_AUTOSTART", value)
    result = run_cli("sync", "ping", socket=short_tmp / "run" / "a.sock")
    assert result.code == 3 and "no agent is listening" in result.err
    assert not (short_tmp / "run").exists()  # nothing was started, not even its folder


@pytest.mark.parametrize("value", ["maybe", "2", "disabled"])
def test_autostart_set_to_neither_on_nor_off_is_refused_in_one_line(
    short_tmp: Path, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNITSYNC_AUTOSTART", value)
    result = run_cli("sync", "ping", socket=short_tmp / "run" / "a.sock")
    assert result.code == 2
    assert result.err == (
        f"unitsync: UNITSYNC_AUTOSTART={value!r} is neither on nor off: use 1, true, yes, on "
        "(start an agent when none answers) or 0, false, no, off (never)\n"
    )
