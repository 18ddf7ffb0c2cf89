"""`UNITSYNC_AUTOSTART`: whether a call that finds no agent starts one (SPEC §7).

Error rules: the usual spellings of on and off, in any case, are accepted; anything else is
a `UsageError` (exit 2) naming the value and the spellings, never a guess (a typo for "0"
must not start agents). Unset or empty: on. Read by the command line at start-up and by
the blocking client when it would start an agent; no I/O beyond the environment.
"""

from __future__ import annotations

import os

from unitsync.wire.errors import UsageError

ENV = "UNITSYNC_AUTOSTART"
ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")


def autostart_enabled() -> bool:
    """True unless UNITSYNC_AUTOSTART says off; UsageError if it says neither."""
    value = os.environ.get(ENV, "").strip()
    if not value or value.lower() in ON:
        return True
    if value.lower() in OFF:
        return False
    raise UsageError(
        f"{ENV}={value!r} is neither on nor off: use {', '.join(ON)} (start an agent when "
        f"none answers) or {', '.join(OFF)} (never)"
    )
