"""`sync run`: want, wait, run a command as the unit, then complete or fail it (SPEC §2, §8).

The command's life (spawn, signals, readiness, output, exit) is `supervisor.ServiceRun`'s;
every agent call `run` makes is here and in `started`: `run_unit` declares and starts the
unit (and waits), then `started.UnitAgent` tells the agent what the command's events mean
for it. What only a started unit needs is imported once the wait is over.

Plain `run` completes the unit when the command exits 0. With a readiness option the
command is a service: the unit completes when the service is ready and fails when it
exits (before or after), or when it is not ready in time (`run` then exits 5).

The command's output is kept in the unit's log as it passes through (`recorder`, SPEC
§15), in the folder the agent's welcome names (on this host, in etcd mode too), unless
`--log-limit 0`; a failed unit's reason ends with the last line the command wrote to
stderr (`exit status 1: Error: port 5432 in use`).

A `run` whose run a newer one supersedes (`run --rerun`, `start --rerun`, `reset --force`:
SPEC §11) stops its command the documented way, says so, reports nothing more (the unit is
the newer run's) and exits EXIT_SUPERSEDED.

What each end of the command leads to (the restart policy, the agent's orders: supersede,
`sync stop`, `sync restart`) is `follow.Follower`'s; the calls it makes are `UnitAgent`'s.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import msgspec

from unitsync.client import Client, UnitsyncError
from unitsync.client.owners import owner
from unitsync.wire.errors import EXIT_INTERRUPTED, EXIT_USAGE, AlreadyDone
from unitsync.wire.host.processes import shortened
from unitsync.wire.protocol import Owner, Waiting

from ..progress import StartProgress
from ..say import say
from ..sizes import LOG_LIMIT
from ..words import shell_line, shell_word
from .policy import NEVER, Policy
from .readiness.options import PLAIN, BadOption, ReadyOptions, detector_for

Progress = Callable[[Waiting | UnitsyncError], None]


def run_unit(
    client: Client,
    unit: str,
    command: Sequence[str],
    wants: Sequence[str],
    timeout: float | None,
    readiness: ReadyOptions = PLAIN,
    *,
    once: bool = False,
    rerun: bool = False,
    log_limit: int = LOG_LIMIT,
    policy: Policy = NEVER,
) -> int:
    """Exit with the command's status; if it never runs, with the start's exit code.

    `log_limit`: bytes of the unit's log kept (0: its output is not recorded)."""
    try:
        detector, ready_timeout = detector_for(readiness, once=once)
    except BadOption as exc:  # the command line checks first (`cli.app.run`); others may not
        say(f"unitsync: run: {exc}")
        return EXIT_USAGE
    progress = StartProgress(unit, sys.stderr)
    try:
        if wants:
            client.want(unit, *wants)
        started = client.start(
            unit,
            rerun=rerun,
            timeout=timeout,
            on_progress=_loading_while_waiting(progress.update),
            tick=progress.tick,
            once=once,
            owner=_run_owner(command),
            hold=True,
        )
    except AlreadyDone as exc:
        progress.clear()
        say(f"{unit}: {exc}; not running {shell_word(command[0])}")
        return 0
    except UnitsyncError as exc:
        progress.clear()
        say(f"unitsync: {exc}; not running {shell_word(command[0])}")
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C while waiting: as `start` says it
        progress.interrupted()
        return EXIT_INTERRUPTED
    progress.done(started)
    from .started import run_started  # (loaded already if the unit waited)

    return run_started(client, unit, command, readiness, detector, ready_timeout, log_limit, policy)


def _loading_while_waiting(update: Progress) -> Progress:
    """`update`, and the first time the unit waits, load what runs a started unit
    (`started`: its supervisor, output relay and log recorder).

    Loaded during the wait, they are not loaded between the dependencies' end and the
    command's start, where every layer of a start-up pays for them: in the 50-unit start-up
    (`bench/start_up.py`) that gap fell from 24-29 to 13-18 ms. A unit that need not wait
    loads them after its start, as it must anyway.
    """

    def on_progress(event: Waiting | UnitsyncError) -> None:
        update(event)  # (said first: the wait is news)
        if isinstance(event, Waiting):
            from . import started  # noqa: F401

    return on_progress


def _run_owner(command: Sequence[str]) -> Owner | None:
    """`run` itself owns the run; it is named by the command it runs, which is what a
    person looking at `status` or at a lost run's reason recognises (bytes that are not
    UTF-8 escaped, as a shell takes them back: `/bin/echo $'\\xff'`)."""
    me = owner(os.getpid(), "run")
    if me is None:
        return None
    return msgspec.structs.replace(me, command=shortened(shell_line(command)))
