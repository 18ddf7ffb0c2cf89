"""Durations as typed on the command line: `30s`, `5m`, `1h30m`; 0 means forever.

(Writing durations for people is `unitsync.wire.timefmt.duration`.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from unitsync.client.retry import DEFAULT_WAIT

if TYPE_CHECKING:
    from cyclopts import Token

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h)"
"""Compiled (and cached by `re`) at its first use: most calls never parse a duration."""
EXAMPLES = "e.g. 30s, 5m, 1h30m, 500ms, 90 (seconds), or 0 to wait forever"
LONGEST = 366 * 86400.0
"""A longer wait is a typo for a shorter one or for forever (0), and would overflow the
clocks and socket timeouts it ends up in."""
DEFAULT_TIMEOUT = DEFAULT_WAIT
"""How long `start` and `run` wait for their dependencies unless told (5m)."""


def parse_duration(text: str) -> float | None:
    """Seconds for `text`, or None for `0` (no limit)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = _parse_units(text)
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {text!r} ({EXAMPLES})")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {text!r} ({EXAMPLES})")
    if seconds > LONGEST:
        raise ValueError(f"{text!r} is longer than a year: give 0 to wait forever")
    return None if seconds == 0 else seconds


def _parse_units(text: str) -> float:
    parts = re.findall(_PART, text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} ({EXAMPLES})")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def duration_option(_hint: object, tokens: Sequence[Token]) -> float | None:
    """cyclopts converter for `--timeout`: a ValueError becomes a usage error naming the flag."""
    return parse_duration(tokens[0].value)


def delay_option(_hint: object, tokens: Sequence[Token]) -> float:
    """cyclopts converter for a delay: a duration, 0 for none (not "forever")."""
    text = tokens[0].value
    if text.strip().startswith("-"):
        raise ValueError(f"a delay cannot be negative: {text!r} (e.g. 500ms, 1s, 0 for none)")
    return parse_duration(text) or 0.0


def interval_option(_hint: object, tokens: Sequence[Token]) -> float:
    """cyclopts converter for an interval: a duration above 0."""
    return parse_interval(tokens[0].value)


def parse_interval(text: str) -> float:
    """Seconds for `text`, a duration above 0."""
    seconds = parse_duration(text)
    if seconds is None:
        raise ValueError("the probe needs an interval above 0, e.g. 200ms, 1s, 5s")
    return seconds
