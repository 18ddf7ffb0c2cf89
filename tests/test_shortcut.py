"""The hot commands' shortcut (issue 22): the language cyclopts accepts, exactly, or nothing.

`cli/shortcut.py` answers a hot command's plain form before cyclopts is imported. These tests
hold it to the cyclopts app, which stays the definition of the command line:

- thousands of seeded command lines, generated from the app's own commands and parameters
  (a command or an option added to the app is generated too, with no change here): for each,
  the shortcut declines, or its call is the one cyclopts makes for the same line and
  environment;
- each hot command of the app calls its body in `cli/hot.py` with what it parsed, and the
  body takes the command's parameters with the same defaults (one implementation, two ways
  in);
- the real `unitsync`, answering each hot command, never imports cyclopts, rich or trio.
"""

from __future__ import annotations

import inspect
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unitsync.cli import hot, shortcut
from unitsync.cli.app import app
from unitsync.cli.sizes import log_limit_option

from conftest import AgentProcess, read_until, run_cli

SEED = 22
LINES = 4000

UNIT_WORDS = [
    "db",
    "web-1",
    "a b",
    "",
    "ünïcode",
    "a=b",
    "0",
    "x\ty",
    "-",
    "-x",
    "-5",
    "--",
    "--once",
    "--help",
    "-h",
    "名前",
]
"""Positional words: plain and odd unit names, and words that look like options."""
VALUES = {
    "duration": ["5s", "0", "1h30m", "500ms", "90", " 5s", "-5s", "5 m", "x", "", "1e3", "inf"],
    "int": ["7", "007", "0", "-1", "0x10", "5_0", " 5", "x", "", "٣"],
    "path": ["/tmp/us.sock", "", "rel/s", "-x", "rel//s", "s/", "./s", "/a/./s", "//s", "/"],
    "size": ["8M", "0", "512K", "1g", "65536", "64k", "10", "-1", "1.5M", "x", ""],
    "text": ["port in use", "", "-x", "--force", "a=b", "^Serving", "ünï"],
}
ENV_VALUES = ["/tmp/env.sock", "", "rel", "/tmp/env.sock", "rel/"]
STRAY_OPTIONS = ["--bogus", "-z", "--help", "-h", "--version", "--no-once", "--want-", "--TIMEOUT"]


def _commands() -> Iterator[tuple[list[str], Any]]:
    """Every command of the app that takes arguments, as (words before its own, its app)."""
    for name in app:
        sub = app[name]
        if name.startswith("-") or sub is app:
            continue
        if name == "sync":
            for inner in sub:
                if not inner.startswith("-"):
                    yield ["sync", inner], sub[inner]
        else:
            yield [name], sub


def _kind(argument: Any) -> str:
    hint = str(argument.hint)
    if argument.parameter.converter is log_limit_option:
        return "size"
    if argument.parameter.converter is not None or "float" in hint:
        return "duration"
    if "int" in hint and "str" not in hint:
        return "int"
    if "Path" in hint:
        return "path"
    return "text"


def _line(pick: random.Random, prefix: list[str], command: Any) -> tuple[list[str], dict[str, str]]:
    """One command line for `command`, and the environment it runs in."""
    positional: list[str] = []
    options: list[list[str]] = []
    environ: dict[str, str] = {}
    arguments = command.assemble_argument_collection()
    named = sum(argument.name.startswith("-") for argument in arguments)
    given = min(0.3, 2.5 / max(named, 1))  # about two options a line, however many there are
    for argument in arguments:
        if argument.parameter.env_var and pick.random() < 0.4:
            environ[argument.parameter.env_var[0]] = pick.choice(ENV_VALUES)
        if not argument.name.startswith("-"):  # positional: most often the right count
            many = argument.field_info.kind == inspect.Parameter.VAR_POSITIONAL
            count = pick.choice([0, 1, 1, 2, 3]) if many else pick.choice([0, 1, 1, 1, 1, 2])
            positional += [
                pick.choice(UNIT_WORDS) if pick.random() < 0.3 else f"u{pick.randrange(9)}"
                for _ in range(count)
            ]
            continue
        if pick.random() >= given:
            continue
        names = list(argument.names) + list(getattr(argument, "negatives", ()) or ())
        for _ in range(pick.choice([1, 1, 1, 2])):  # sometimes repeated
            name = pick.choice(names)
            if argument.is_flag():
                form = pick.random()
                value = pick.choice(["true", "false", "x"])
                options.append([name] if form < 0.85 else [f"{name}={value}"])
                continue
            pool = VALUES[_kind(argument)]
            value = pick.choice(pool[:4] if pick.random() < 0.75 else pool)  # mostly plain
            form = pick.random()
            if form < 0.55:
                options.append([name, value])
            elif form < 0.9:
                options.append([f"{name}={value}"])
            else:
                options.append([name])  # its value missing, or taken from the next word
    if pick.random() < 0.15:
        options.append([pick.choice(STRAY_OPTIONS)])
    words: list[list[str]] = options + [[word] for word in positional]
    pick.shuffle(words)
    line = [word for group in words for word in group]
    if prefix[-1] == "run" and pick.random() < 0.85:  # `run UNIT [OPTIONS] -- COMMAND`
        unit = [pick.choice(["api", "-x", ""])] if pick.random() < 0.9 else []
        command_words = pick.choice([["true"], ["sh", "-c", "exit 2"], ["--help"], ["a", "--"]])
        line = unit + [word for group in options for word in group]
        if pick.random() < 0.1:
            line += positional
        line += ["--", *command_words]
    elif pick.random() < 0.25:
        at = pick.randrange(len(line) + 1)
        line = [*line[:at], "--", *line[at:]]
    return prefix + line, environ


def _lines() -> Iterator[tuple[str, list[str], dict[str, str]]]:
    pick = random.Random(SEED)
    commands = list(_commands())
    for _ in range(LINES):
        prefix, command = pick.choice(commands)
        yield (prefix[-1], *_line(pick, prefix, command))


def _cyclopts_call(
    argv: list[str], environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict[str, Any]]:
    """What cyclopts calls for `argv` in `environ`: the command's name, its arguments."""
    with monkeypatch.context() as patch:
        for name, value in environ.items():
            patch.setenv(name, value)
        function, bound, _ = app.parse_args(argv, exit_on_error=False, print_error=False)
    bound.apply_defaults()
    return function.__name__, _socket_as_text(dict(bound.arguments))


def _as_bound(call: shortcut.Call) -> dict[str, Any]:
    """The shortcut's call, bound as cyclopts binds: to the app command's own signature."""
    command = app["sync"][call.command.replace("_", "-")].default_command
    bound = inspect.signature(command).bind(*call.args, **call.kwargs)
    bound.apply_defaults()
    return _socket_as_text(dict(bound.arguments))


def _socket_as_text(arguments: dict[str, Any]) -> dict[str, Any]:
    """The socket as the client takes it (`os.fspath`): cyclopts gives a `Path`, the shortcut
    the same path's text, which must be the text of cyclopts' `Path` (`s/` is `s` to it)."""
    if arguments.get("socket") is not None:
        arguments["socket"] = os.fspath(arguments["socket"])
    return arguments


def test_the_shortcut_makes_the_call_cyclopts_makes_or_declines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every generated line: declined, or the same command with the same arguments."""
    for name in ("UNITSYNC_SOCKET",):
        monkeypatch.delenv(name, raising=False)
    accepted: dict[str, int] = {}
    seen: dict[str, int] = {}
    for command_name, argv, environ in _lines():
        seen[command_name] = seen.get(command_name, 0) + 1
        call = shortcut.parse(argv, environ)
        if call is None:
            continue
        accepted[call.command] = accepted.get(call.command, 0) + 1
        try:
            name, arguments = _cyclopts_call(argv, environ, monkeypatch)
        except Exception as error:
            pytest.fail(f"the shortcut took {argv} ({environ}), which cyclopts refuses: {error!r}")
        assert (call.command, _as_bound(call)) == (name, arguments), (argv, environ)
    print(f"\n{LINES} lines (seed {SEED}): taken by the shortcut {accepted}, of {seen}")
    for command in shortcut.FORMS:  # the comparison is not empty: most plain lines are taken
        assert accepted.get(command.replace("-", "_"), 0) >= 0.1 * seen[command], command


def test_each_hot_command_calls_its_one_body_with_what_it_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cyclopts command and the shortcut end in the same body, with the same call; the
    body takes the command's parameters, with the same defaults."""
    lines = {
        "ping": ["sync", "ping", "--socket", "/tmp/s"],
        "want": ["sync", "want", "a", "b", "c", "--once"],
        "start": ["sync", "start", "db", "--timeout=5m", "--owner", "1", "--rerun"],
        "complete": ["sync", "complete", "db", "--force"],
        "fail": ["sync", "fail", "--reason", "no", "db"],
        "run": ["sync", "run", "api", "--want", "db", "--notify", "--", "./api", "-v"],
    }
    assert set(lines) == set(shortcut.FORMS)
    for name, argv in lines.items():
        command = app["sync"][name].default_command
        body = getattr(hot, name)
        assert _parameters(body) == _parameters(command), name
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        monkeypatch.setattr(hot, name, _recorder(calls))
        function, bound, _ = app.parse_args(argv, exit_on_error=False, print_error=False)
        function(*bound.args, **bound.kwargs)
        call = shortcut.parse(argv, {})
        assert call is not None and call.command == name
        by_cyclopts = inspect.signature(body).bind(*calls[0][0], **calls[0][1])
        by_shortcut = inspect.signature(body).bind(*call.args, **call.kwargs)
        by_cyclopts.apply_defaults()
        by_shortcut.apply_defaults()
        assert _socket_as_text(by_cyclopts.arguments) == by_shortcut.arguments, name


def _recorder(calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> Any:
    def record(*args: Any, **kwargs: Any) -> int:
        calls.append((args, kwargs))
        return 0

    return record


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


HOT_LINES = [
    ["sync", "ping"],
    ["sync", "want", "w", "dep"],
    ["sync", "start", "s"],
    ["sync", "complete", "s"],
    ["sync", "fail", "w", "--reason", "test"],
    ["sync", "run", "r", "--want", "s", "--", "true"],
]
FORBIDDEN = ("cyclopts", "rich", "trio")
NEVER_HOT = (
    "pathlib",
    "tempfile",
    "socket",
    "subprocess",
    "platformdirs",
    "platform",
    "inspect",
)
"""What a hot call never imports either: `pathlib`, `tempfile` and `socket` were 9 ms of a
40 ms call (issue 22), `subprocess` 2 ms of `run`'s (which starts its command with
`posix_spawn`); msgspec's first import is made without `platform` and `typing_extensions`
(whose `inspect` is the sign: `-X importtime` lists the refused attempt to import
`typing_extensions` itself): see `cli.main._import_msgspec`."""


def _imported(argv: list[str], socket: Path) -> tuple[int, set[str]]:
    """The real `unitsync` (its installed entry point), and every module the call imported
    (after Python's own start-up, `site`)."""
    environ = dict(os.environ, UNITSYNC_SOCKET=str(socket))
    # The editable install's finder imported pathlib (at `site`) before the call: forgotten,
    # so that the call's own import of it is seen.
    entry = "import sys; del sys.modules['pathlib']; from unitsync.cli.main import main; main()"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", entry, *argv],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    names = [
        line.split("|")[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    ]
    return result.returncode, set(names[names.index("site") + 1 :])  # the call's own


def test_the_hot_commands_never_import_cyclopts_rich_or_trio(
    agent_process: AgentProcess,
) -> None:
    socket = agent_process.config.socket
    for argv in HOT_LINES:
        code, modules = _imported(argv, socket)
        assert code == 0, argv
        loaded = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)
        assert not loaded, f"{' '.join(argv)} imported {loaded[:5]}"
        heavy = sorted(m for m in modules if m.split(".")[0] in NEVER_HOT)
        assert not heavy, f"{' '.join(argv)} imported {heavy}"
    # The check sees such imports: a line the shortcut declines goes to cyclopts.
    code, modules = _imported(["sync", "start", "s2", "--timeout", "5", "m"], socket)
    assert code == 2 and "cyclopts" in modules


def test_a_run_loads_what_runs_its_command_while_it_waits(agent_process: AgentProcess) -> None:
    """A plain `run` asks for its start before it loads what runs its command (no detector,
    no `subprocess`: the sooner it asks, the sooner its wait begins), and loads that while
    its unit waits, not after the dependency ends, where every layer of a start-up would pay
    for it."""
    socket = agent_process.config.socket
    entry = "from unitsync.cli.main import main; main()"
    argv = ["sync", "run", "late", "--want", "early", "--", "true"]
    late = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-c", entry, *argv],
        stderr=subprocess.PIPE,
        env=dict(os.environ, UNITSYNC_SOCKET=str(socket)),
    )
    try:
        seen = read_until(late.stderr.fileno(), b"late: waiting for early", limit=120)  # type: ignore[union-attr]
        assert b"late: waiting for early" in seen
        assert run_cli("sync", "run", "early", "--", "true", socket=socket).code == 0
        _out, rest = late.communicate(timeout=120)
    finally:
        late.kill()
    assert late.returncode == 0
    lines = (seen + rest).decode().splitlines()
    waiting = next(i for i, line in enumerate(lines) if "late: waiting for early" in line)
    started = next(i for i, line in enumerate(lines) if "late: started" in line)
    loaded = {
        line.split("|")[-1].strip(): i
        for i, line in enumerate(lines)
        if line.startswith("import time:")
    }
    for module in ("unitsync.cli.run.children", "unitsync.cli.run.started"):
        assert waiting < loaded[module] < started, module


def test_what_msgspec_was_imported_without_is_the_real_thing_afterwards() -> None:
    """The modules hidden while the command line first imports msgspec (`typing_extensions`,
    `platform`) are imported for real by whoever asks later, and what `uuid` learnt from the
    stand-in is what `platform` says."""
    check = (
        "import sys\n"
        "from unitsync.cli.main import _import_msgspec\n"
        "_import_msgspec()\n"
        "import platform, typing_extensions, uuid, msgspec\n"
        "assert platform.python_version() and platform.machine()\n"
        "assert typing_extensions.get_type_hints\n"
        "assert (uuid._AIX, uuid._LINUX) == (platform.system() == 'AIX', "
        "platform.system() == 'Linux')\n"
        "u = uuid.uuid4()\n"
        "assert msgspec.json.decode(msgspec.json.encode(u), type=uuid.UUID) == u\n"
        "print('same')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "same\n", result.stderr
