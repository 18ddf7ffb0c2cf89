"""`run`'s readiness options as given on the command line, and the detector they ask for.

Error rules: options that conflict, or one that needs another, raise `BadOption` naming
them and what to do; `run` says it and exits 2 before anything is asked of the agent.
Each detector's module is imported only when its option is given.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from .detector import Detector

DEFAULT_INTERVAL = 1.0
"""How often `--ready-cmd`'s probe runs unless told: a server is seen up within a second,
for the cost of one short process a second while it starts."""


class ReadyOptions(msgspec.Struct, frozen=True):
    """How a service says it is ready, as given on the command line."""

    command: str | None = None
    interval: float | None = None
    """Seconds between probes (None: DEFAULT_INTERVAL)."""
    log: str | None = None
    notify: bool = False
    timeout: float | None = None
    """Seconds to be ready in (None: no limit)."""


PLAIN = ReadyOptions()
"""No readiness option: a plain `run`, whose command's exit is the unit's end."""


class BadOption(ValueError):
    """A readiness option that makes no sense; the message says which and why."""


def detector_for(
    options: ReadyOptions, *, once: bool = False
) -> tuple[Detector | None, float | None]:
    """The detector and ready timeout the options ask for; BadOption if they conflict (or
    make a one-time unit, `once`, a service)."""
    kinds = [
        name
        for name, given in (
            ("--ready-cmd", options.command is not None),
            ("--ready-log", options.log is not None),
            ("--notify", options.notify),
        )
        if given
    ]
    if len(kinds) > 1:
        raise BadOption(f"{' and '.join(kinds)} cannot be combined: choose one way to be ready")
    if options.interval is not None and options.command is None:
        raise BadOption("--ready-interval is the interval of --ready-cmd's probe: add --ready-cmd")
    if options.timeout is not None and not kinds:
        raise BadOption(
            "--ready-timeout needs a way to be ready: --ready-cmd, --ready-log or --notify"
        )
    if once and kinds:
        raise BadOption(
            "--once is for one-time setup, not services: a service must start again in every "
            "boot, or its dependents would trust one that is not running"
        )
    timeout = options.timeout
    if options.command is not None:
        from .probe import ProbeReady

        return ProbeReady(options.command, options.interval or DEFAULT_INTERVAL), timeout
    if options.log is not None:
        from .output import LogReady

        try:
            pattern = re.compile(options.log)
        except re.error as exc:
            raise BadOption(
                f"--ready-log: {options.log!r} is not a valid regular expression: {exc}"
            ) from None
        return LogReady(pattern), timeout
    if options.notify:
        from .notify_socket import NotifyReady

        return NotifyReady(), timeout
    return None, None
