"""`sync run`: want, wait, run a command as the unit, then complete or fail it."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence

from unitsync.client.client import Client, UnitsyncError

from .progress import StartProgress

FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def run_unit(
    client: Client,
    unit: str,
    command: Sequence[str],
    wants: Sequence[str],
    timeout: float | None,
) -> int:
    """Exit with the command's status; if it never runs, with the start's exit code."""
    progress = StartProgress(unit, sys.stderr)
    try:
        if wants:
            client.want(unit, *wants)
        started = client.start(
            unit, timeout=timeout, on_progress=progress.update, tick=1.0 if progress.live else None
        )
    except UnitsyncError as exc:
        progress.clear()
        print(f"unitsync: {exc}; not running {command[0]}", file=sys.stderr)
        return exc.exit_code
    progress.done(started)
    status, reason = run_child(command)
    try:
        if status == 0:
            client.complete(unit)
        else:
            client.fail(unit, reason)
    except UnitsyncError as exc:
        print(f"unitsync: {unit} ran, but recording its end failed: {exc}", file=sys.stderr)
        return exc.exit_code if status == 0 else status
    return status


def run_child(command: Sequence[str]) -> tuple[int, str]:
    """Run `command` in the foreground, passing signals on; its status, shell-style."""
    try:
        child = subprocess.Popen(list(command))
    except FileNotFoundError:
        print(f"unitsync: command not found: {command[0]}", file=sys.stderr)
        return 127, f"command not found: {command[0]}"
    except PermissionError:
        print(f"unitsync: permission denied: {command[0]}", file=sys.stderr)
        return 126, f"permission denied: {command[0]}"
    previous = {sig: signal.signal(sig, _forward_to(child)) for sig in FORWARDED}
    # Ctrl-C on a terminal reaches the whole foreground group, the child included: we only
    # stay alive to report its end. Sent to us alone (no terminal), it is passed on.
    on_interrupt = signal.SIG_IGN if sys.stdin.isatty() else _forward_to(child)
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_interrupt)
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code < 0:
        name = signal.Signals(-code).name
        return 128 - code, f"killed by signal {name}"
    return code, f"exit status {code}"


def _forward_to(child: subprocess.Popen[bytes]):  # type: ignore[no-untyped-def]
    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    return forward
