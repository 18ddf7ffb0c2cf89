"""`cli/usage.py`'s tables, written by hand as the README writes them, checked against the
cyclopts app they describe (issue 21): a command's usage line names every option the command
takes and no other; the duration options are those that take a duration; the commands said
to take unit names are those whose positional words are unit names.

The tables stay hand-written (the usage lines are the README's, `[--timeout 5m]` and all,
which no signature says) and `cli/app.py` reads them at start-up without building anything;
this is what keeps them true.
"""

from __future__ import annotations

import re

import pytest
from cyclopts import App
from cyclopts.argument import Argument

from unitsync.cli.app import app, sync
from unitsync.cli.durations import duration_option, interval_option
from unitsync.cli.usage import DURATION_OPTIONS, TAKE_UNITS, USAGE

EVERY_SYNC_COMMAND = {"--socket"}
"""Options every `sync` command takes (or its UNITSYNC_SOCKET): the README says so once, and
the usage lines leave them out."""
UNIT_WORDS = {"UNIT", "DEP", "DEP..."}
"""The positional words that are unit names (`want UNIT DEP [DEP...]`); not `COMMAND`."""
OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*\*?)")
"""An option as a usage line writes it: `--timeout`, `-o`, `--etcd-*` (every --etcd- option)."""


def commands() -> dict[str, App]:
    """Every command with a usage line: `agent`, and each of `sync`'s."""
    found = {"agent": app["agent"]}
    found.update({name: sync[name] for name in sync if not name.startswith("-")})
    return found


def arguments(command: App) -> list[Argument]:
    return [argument for argument in command.assemble_argument_collection() if argument.parse]


def options(command: App) -> list[Argument]:
    return [argument for argument in arguments(command) if argument.name.startswith("-")]


def positionals(command: App) -> list[Argument]:
    return [argument for argument in arguments(command) if not argument.name.startswith("-")]


def test_every_command_shows_its_own_usage_line() -> None:
    assert set(USAGE) == set(commands())
    for name, command in commands().items():
        assert command.usage == f"Usage: {USAGE[name]}", name


@pytest.mark.parametrize("name", sorted(USAGE))
def test_a_usage_line_names_every_option_of_its_command_and_no_other(name: str) -> None:
    command = commands()[name]
    written = set(OPTION.findall(USAGE[name]))
    prefixes = {option[:-1] for option in written if option.endswith("*")}
    exempt = set() if name == "agent" else EVERY_SYNC_COMMAND

    def shown(option: str) -> bool:
        return option in written or any(option.startswith(prefix) for prefix in prefixes)

    taken = options(command)
    missing = [
        argument.name
        for argument in taken
        if argument.name not in exempt and not any(map(shown, argument.names))
    ]
    assert missing == [], f"{name} takes {missing}, which its usage line does not show"
    names = {option for argument in taken for option in argument.names}
    unknown = sorted(option for option in written - names if not option.endswith("*"))
    assert unknown == [], f"the usage line of {name} shows {unknown}, which it does not take"
    for prefix in prefixes:
        assert any(option.startswith(prefix) for option in names), prefix


def test_the_duration_options_are_exactly_those_that_take_a_duration() -> None:
    taking = set()
    for name, command in commands().items():
        for argument in options(command):
            converted = argument.parameter.converter in (duration_option, interval_option)
            if converted or argument.parameter.metavar == "DURATION":
                # one spelling in --help for every duration option, however it is parsed
                assert argument.parameter.metavar == "DURATION", (name, argument.name)
                taking.add(argument.name)
    assert taking == DURATION_OPTIONS


def test_the_commands_said_to_take_units_are_those_whose_words_are_unit_names() -> None:
    taking = {
        name
        for name, command in commands().items()
        if (words := positionals(command)) and all(word.name in UNIT_WORDS for word in words)
    }
    assert taking == TAKE_UNITS
