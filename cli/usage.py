"""Usage errors as one plain line, in unitsync's own style (`unitsync: ...`), with the usage.

cyclopts reports parse errors as rich panels, names parameters the user never typed
(`--dep`), and lists leftovers as Python lists. A log file wants neither box drawing nor
guesswork: this names what was typed, what is missing, and shows the command's usage
line as the README writes it.

The tables below are written by hand, as the README writes them (no signature says
`[--timeout 5m]`), and read at start-up without building anything; `tests/test_usage.py`
checks them against the cyclopts app: every option a command takes is on its usage line and
no other, and `TAKE_UNITS` and `DURATION_OPTIONS` are what the signatures say.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyclopts.exceptions import CoercionError, CycloptsError

USAGE = {
    "agent": "unitsync agent [--socket P] [--state-dir D] [--boot-id ID] [--log-level L] "
    "[--salvage] [--reclaim-grace 10s] [--max-connections N] [--store etcd://... [--host-id H] "
    "[--etcd-* ...]]",
    "ping": "unitsync sync ping",
    "want": "unitsync sync want UNIT DEP [DEP...] [--on completed|started|finished] [--once]",
    "start": "unitsync sync start UNIT [--timeout 5m] [--rerun] [--once] [--owner PID]",
    "complete": "unitsync sync complete UNIT [--force] [--once]",
    "fail": "unitsync sync fail UNIT [--reason TEXT] [--force]",
    "reset": "unitsync sync reset UNIT | --all | --failed [--force]",
    "forget": "unitsync sync forget UNIT",
    "stop": "unitsync sync stop UNIT [--timeout 10s]",
    "restart": "unitsync sync restart UNIT [--timeout 10s]",
    "status": "unitsync sync status [UNIT] [-o table|json|dot|mermaid] [--watch]",
    "run": "unitsync sync run UNIT [--want DEP]... [--timeout 5m] [--once] [--rerun] "
    "[--ready-cmd CMD [--ready-interval 1s] | --ready-log REGEX | --notify] "
    "[--ready-timeout D] [--log-limit 8M] [--restart no|on-failure|always [--restart-delay 1s] "
    "[--restart-limit 5] [--restart-window 5m]] -- COMMAND [ARGS...]",
    "logs": "unitsync sync logs UNIT [-f] [--run N | --boot N | --all] [--since TIME] "
    "[--tail N] [--stream stdout|stderr|terminal] [--timestamps] [--prefix] [-o text|json]",
    "timeline": "unitsync sync timeline [--boot N] [-o table|json|svg]",
    "critical-chain": "unitsync sync critical-chain [UNIT] [--boot N]",
    "blame": "unitsync sync blame [--boot N]",
}
"""Each command's usage line, as the README's command table writes it."""

TAKE_UNITS = {
    "want",
    "start",
    "complete",
    "fail",
    "reset",
    "forget",
    "stop",
    "restart",
    "status",
    "critical-chain",
    "logs",
}
"""Commands whose positional words are unit names."""
DURATION_OPTIONS = {
    "--timeout",
    "--ready-timeout",
    "--ready-interval",
    "--reclaim-grace",
    "--etcd-timeout",
    "--etcd-watch-silence",
    "--restart-delay",
    "--restart-window",
}
"""Options whose value is a duration (`--help` writes them `DURATION`): a stray word after one
is most likely the rest of a duration typed with a space (`--timeout 5 m`)."""
DURATION_HINT = "a duration is one word: 30s, 5m, 1h30m, 500ms, 90 (seconds), or 0 for forever"


def command_options(command: str) -> list[str]:
    """The options a command's usage line names (`--timeout`, `-o`, ...)."""
    return re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", USAGE[command])


def describe(exc: CycloptsError, argv: list[str]) -> tuple[str, str | None]:
    """What was wrong, in words about what the user typed; and the usage line to show."""
    from cyclopts.exceptions import (  # here: the hot commands read USAGE without cyclopts
        CoercionError,
        MissingArgumentError,
        UnknownCommandError,
        UnknownOptionError,
        UnusedCliTokensError,
    )

    chain = list(exc.command_chain or [])
    command = chain[-1] if chain else None
    usage = USAGE.get(command) if command else None
    where = f"{command}: " if command in USAGE else ""
    if isinstance(exc, MissingArgumentError) and exc.argument is not None:
        name = exc.keyword or exc.argument.name
        if name.startswith("-"):
            if negative := _negative_duration(name, argv):
                return f"{where}{name} {negative}: a duration cannot be negative", usage
            hint = f" ({DURATION_HINT})" if name == "--timeout" else ""
            return f"{where}{name} needs a value{hint}", usage
        return f"{where}missing {name}", usage
    if isinstance(exc, UnknownOptionError):
        token = str(getattr(exc.token, "keyword", None) or exc.token.value)
        return f"{where}unknown option {token!r}{_unknown_option_hint(command, token, argv)}", usage
    if isinstance(exc, UnusedCliTokensError):
        extra = list(exc.unused_tokens or [])
        first = extra[0] if extra else ""
        if command not in USAGE:  # `unitsync sync bogus`: a command that does not exist
            see = " ".join(["unitsync", *chain[-1:], "--help"])
            return f"unknown command {first!r}; see `{see}`", None
        after = (_token_before(argv, first) or "").split("=")[0]
        if after in DURATION_OPTIONS:
            return f"{where}unexpected {first!r} after {after}: {DURATION_HINT}", usage
        words = " ".join(repr(token) for token in extra)
        if command in TAKE_UNITS:
            return f"{where}unexpected {words} (quote a name that has spaces)", usage
        return f"{where}unexpected {words}: `{command}` takes no such argument", usage
    if isinstance(exc, CoercionError):
        name = exc.argument.name if exc.argument is not None else "a value"
        value = exc.token.value if exc.token is not None else ""
        why = exc.msg if isinstance(exc.msg, str) else _choices(exc)
        return f"{where}invalid value {value!r} for {name}: {why}", usage
    if isinstance(exc, UnknownCommandError):
        token = exc.unused_tokens[0] if exc.unused_tokens else ""
        return f"unknown command {token!r}; see `unitsync --help`", None
    return _plain(exc), usage


def _unknown_option_hint(command: str | None, token: str, argv: list[str]) -> str:
    """What to do about an unknown option: it depends on where it was and what it may be."""
    if "--" in argv and token in argv[argv.index("--") + 1 :]:
        return "; options go before `--`, not after it"
    if command == "run" and "--" in argv:
        return (
            f"; if it is a unit name, put it between two `--`, with the options before "
            f"(unitsync sync run [OPTIONS] -- {token} -- COMMAND)"
        )
    if command == "run":
        return "; put `--` before the command, so that its options are its own (see the usage)"
    if command in TAKE_UNITS:
        return (
            f"; if it is a unit name, put it after `--`, with the options before "
            f"(unitsync sync {command} [OPTIONS] -- {token})"
        )
    return ""


def _negative_duration(option: str, argv: list[str]) -> str | None:
    """The word after a duration option when it is a negative duration (`--timeout -5s`),
    which the parser took for an option, so the option seemed to have no value."""
    if option not in DURATION_OPTIONS or option not in argv:
        return None
    index = argv.index(option) + 1
    word = argv[index] if index < len(argv) else ""
    if not word.startswith("-") or word == "-":
        return None
    from .durations import parse_duration

    try:
        parse_duration(word[1:])
    except ValueError:
        return None
    return word


def _token_before(argv: list[str], token: str) -> str | None:
    if token in argv:
        index = argv.index(token)
        for previous in reversed(argv[:index]):
            if previous.startswith("-"):
                return previous
    return None


def _choices(exc: CoercionError) -> str:
    from typing import get_args

    choices = get_args(exc.target_type) if exc.target_type is not None else ()
    if choices:
        return f"choose one of {', '.join(map(str, choices))}"
    return "a whole number is needed" if exc.target_type is int else "not valid here"


def _plain(exc: CycloptsError) -> str:
    return " ".join(str(exc).split())
