"""The plain forms of the hot commands, recognised before cyclopts is imported.

Importing cyclopts and building the app is most of a call's cost (about 50 ms of 75), paid by
every `sync start` and `sync run` of a workspace's start-up. `parse` recognises the forms a
script writes (`sync want A B`, `sync start db --timeout 5m`, `sync run api --want db -- ./api`,
options in any order, `--opt=value`, `--`, `UNITSYNC_SOCKET`) and says which body of `hot` to
call with which arguments: exactly the call the cyclopts command of that name would make
with them. Anything else, it declines (None), and the command line goes to cyclopts unchanged:
help, `--version`, completion, every usage error, an option or a command not in `FORMS` (so
a new one needs nothing here), a repeated option, an option's value that begins with `-`, a
flag given a value, a unit name after `--` that begins with `-`, a value its converter refuses.

`tests/test_shortcut.py` proves it: thousands of command lines generated from the cyclopts
app's own parameters, each either declined or parsed to the call cyclopts makes.

Error rules: none of its own. A line it cannot answer exactly as cyclopts would, it declines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from unitsync.wire.host.paths import SOCKET_ENV

from .durations import parse_duration, parse_interval
from .sizes import parse_log_limit


class Call(msgspec.Struct, frozen=True):
    command: str
    """The name of the body in `hot` (and of the cyclopts command)."""
    args: tuple[str, ...]
    kwargs: dict[str, Any]


def _flag(_text: str) -> bool:
    return True


def _whole(text: str) -> int:
    if not (text.isascii() and text.isdigit()):  # cyclopts takes `0x10`, `5_0`, ` 5`: rare
        raise ValueError(text)
    return int(text)


def _many(text: str) -> str:
    return text


def _socket_path(text: str) -> str:
    """`--socket`'s value as cyclopts' `Path` would name it, kept a `str` (`pathlib` is a
    tenth of a call: see `wire.host.paths`): a path already in Path's normal form is taken
    as it is; one that Path would rewrite (`a//b`, `s/`, `./s`, `""`) is left to cyclopts."""
    parts = text.split("/")
    if text.startswith("/"):
        parts = parts[1:]
    if not text or any(part in ("", ".") for part in parts):
        raise ValueError(text)
    return text


FLAG: Callable[[str], Any] = _flag
"""An option that takes no value (`--once`)."""
MANY: Callable[[str], Any] = _many
"""An option that may be repeated, its values collected in order (`--want A --want B`)."""
SOCKET = {"--socket": _socket_path}


class Form(msgspec.Struct, frozen=True):
    least: int
    """How many positional words (UNIT, DEP...) at least."""
    most: int | None
    """And at most (None: no limit)."""
    options: Mapping[str, Callable[[str], Any]]
    """Each option the command takes, and what makes its value (a ValueError: decline)."""


FORMS = {
    "ping": Form(0, 0, SOCKET),
    "want": Form(2, None, {"--once": FLAG, **SOCKET}),
    "start": Form(
        1,
        1,
        {"--timeout": parse_duration, "--rerun": FLAG, "--once": FLAG, "--owner": _whole, **SOCKET},
    ),
    "complete": Form(1, 1, {"--force": FLAG, "--once": FLAG, **SOCKET}),
    "fail": Form(1, 1, {"--reason": str, "--force": FLAG, **SOCKET}),
    "run": Form(
        1,
        1,  # UNIT; the command is every word after `--`
        {
            "--want": MANY,
            "--timeout": parse_duration,
            "--ready-cmd": str,
            "--ready-interval": parse_interval,
            "--ready-log": str,
            "--notify": FLAG,
            "--ready-timeout": parse_duration,
            "--once": FLAG,
            "--rerun": FLAG,
            "--log-limit": parse_log_limit,
            **SOCKET,
        },
    ),
}
"""The hot commands and the options the shortcut knows of each (a subset is fine: a line
with any other goes to cyclopts)."""
ENVIRONMENT = {"--socket": SOCKET_ENV}
"""Options cyclopts fills from the environment when they are not given."""


class _Decline(Exception):
    pass


def parse(argv: list[str], environ: Mapping[str, str]) -> Call | None:
    """The call cyclopts would make for `argv` (the words after `unitsync`), or None."""
    if len(argv) < 2 or argv[0] != "sync" or argv[1] not in FORMS:
        return None
    form = FORMS[argv[1]]
    try:
        positional, after, kwargs = _words(argv[2:], form)
    except (_Decline, ValueError):
        return None
    args = (*positional, *(after or ()))
    if argv[1] == "run":
        if len(positional) != 1 or not after:  # `run` is UNIT [OPTIONS] -- COMMAND...
            return None
    else:
        if any(word.startswith("-") for word in after or ()):  # cyclopts' (and its warnings)
            return None
        if len(args) < form.least or (form.most is not None and len(args) > form.most):
            return None
    for option, variable in ENVIRONMENT.items():
        name = _name(option)
        if option in form.options and name not in kwargs and variable in environ:
            try:
                kwargs[name] = form.options[option](environ[variable])
            except ValueError:
                return None
    return Call(argv[1].replace("-", "_"), args, kwargs)


def _words(words: list[str], form: Form) -> tuple[list[str], list[str] | None, dict[str, Any]]:
    """The positional words before `--`, the words after it (None: no `--`), the options."""
    positional: list[str] = []
    kwargs: dict[str, Any] = {}
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            return positional, words[index:], kwargs
        if not word.startswith("-"):
            positional.append(word)
            continue
        option, equals, value = word.partition("=")
        make = form.options.get(option)
        if make is None:
            raise _Decline
        if make is FLAG:
            if equals:
                raise _Decline
        elif not equals:
            if index == len(words) or words[index].startswith("-"):
                raise _Decline
            value = words[index]
            index += 1
        name = _name(option)
        if make is MANY:
            kwargs[name] = (*kwargs.get(name, ()), value)
        elif name in kwargs:
            raise _Decline
        else:
            kwargs[name] = make(value)
    return positional, None, kwargs


def _name(option: str) -> str:
    return option[2:].replace("-", "_")
