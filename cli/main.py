"""`unitsync`'s entry point: the shortcut for a hot command's plain form, cyclopts for the rest.

A script's call (`sync start db`, `sync run api --want db -- ./api`) is answered by
`shortcut` and the command's body in `hot`, without importing cyclopts (most of a call's
cost before); every other command line, and any form the shortcut does not recognise,
goes to the cyclopts app (`app._main`) unchanged.

Exit codes are the errors' own (`unitsync.wire.errors`): 0 success, 1 refused, 2 usage,
3 no agent, 4 a dependency failed, 5 timed out, 6 not durable; 130 (128+N) when
interrupted by a signal; a broken pipe on stdout (`| head`) exits 141 quietly, as a
writer killed by SIGPIPE would.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys


def main() -> None:
    _exit_now(_main(sys.argv[1:]))


def _main(argv: list[str]) -> int:
    _whole_lines()
    gc.disable()  # while importing: thousands of objects, all kept; no cycle to collect
    try:
        _import_msgspec()
        from . import hot, shortcut

        hot.typed(argv)  # both ways in: `run` checks the words before `--`
        call = shortcut.parse(argv, os.environ)
        if call is not None and call.command == "run":  # what it imports, in the same window
            from .run import command  # noqa: F401
    finally:
        gc.freeze()  # what was imported stays: a collection need never walk it (1.5 ms)
        gc.enable()
    from unitsync.client.agent_switch import autostart_enabled
    from unitsync.wire.errors import EXIT_INTERRUPTED, UnitsyncError

    if argv[:1] == ["sync"] and not may_print_help(argv):
        try:  # said at once, whether or not this call would have started an agent
            autostart_enabled()
        except UnitsyncError as exc:
            return hot.error_exit(exc)
    if call is None:
        from .app import _main as by_cyclopts

        return by_cyclopts(argv)
    try:
        return getattr(hot, call.command)(*call.args, **call.kwargs)
    except KeyboardInterrupt:
        print("\nunitsync: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return stdout_gone()


def may_print_help(argv: list[str]) -> bool:
    """Whether `argv` may ask for help (no command checks run then, and the help formatter
    is worth choosing: it costs an import)."""
    return len(argv) < 2 or "--help" in argv or "-h" in argv


def _import_msgspec() -> None:
    """msgspec, without two modules its first import would load for nothing: a third of a hot
    call's imports. Each is hidden only while msgspec is first imported; whatever imports it
    later (cyclopts does `typing_extensions`) gets the real module.

    - `typing_extensions`, when it is installed (cyclopts brings it): msgspec imports it for
      `get_type_hints`, `Required` and `NotRequired` only, and falls back to `typing`'s,
      which Python 3.11 has and which read the protocol's types alike. It imports `inspect`
      (with `ast`, `dis`, `tokenize`): about 10 ms of CPU.
    - `platform`, on Linux before Python 3.13: msgspec imports `uuid`, which imports
      `platform` there only to ask `platform.system()` (2.3 ms of every call: it compiles
      nine regexes). Python 3.13's `uuid` no longer asks on Linux; here a stand-in that knows
      only `system()` answers it, with what `platform.system()` answers (`os.uname()`).
    """
    if "msgspec" in sys.modules:
        return
    stand_ins: dict[str, object] = {"typing_extensions": None}  # None: "not installed"
    if sys.platform == "linux" and sys.version_info < (3, 13):
        stand_ins["platform"] = _platform_system_only()
    hidden = {name: module for name, module in stand_ins.items() if name not in sys.modules}
    sys.modules.update(hidden)  # type: ignore[arg-type]
    try:
        import msgspec  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


def _platform_system_only() -> object:
    """A `platform` module that answers `system()` alone, as `platform.system()` does."""
    import types

    stand_in = types.ModuleType("platform", "unitsync's stand-in while msgspec is imported")
    stand_in.system = lambda: os.uname().sysname  # type: ignore[attr-defined]
    return stand_in


def _whole_lines() -> None:
    """Every line leaves in one write, even under PYTHONUNBUFFERED (where `print` writes a
    line and its newline separately): scripts run side by side share a terminal or a log,
    and another process's line must never land inside one of ours."""
    # A terminal or pipe that is not UTF-8 gets what it cannot show escaped, not a traceback.
    sys.stdout.reconfigure(write_through=False, errors="backslashreplace")  # type: ignore[union-attr]
    sys.stderr.reconfigure(write_through=False, line_buffering=True)  # type: ignore[union-attr]


def stdout_gone() -> int:
    """The reader of our stdout went away (`| head`): say nothing more, exit as SIGPIPE would."""
    from unitsync.wire.errors import EXIT_BROKEN_PIPE

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the final flush cannot fail again
    return EXIT_BROKEN_PIPE


def _exit_now(status: int) -> None:
    """Exit without interpreter teardown: ~15 ms of a ~100 ms run, paid by every call.

    Only stdout and stderr hold anything to write, so flush them and go.
    """
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the last lines could not be written: `| head` again
        status = stdout_gone()
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(status)
