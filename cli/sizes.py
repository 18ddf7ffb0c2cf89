"""Sizes as typed on the command line: `8M`, `512K`, `1G`, `65536`; 0 means none.

Binary units (K = 1024 bytes), as `du` and `journalctl --vacuum-size` read them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyclopts import Token

LOG_LIMIT = 8 * 1024 * 1024
"""`run --log-limit`'s default: a unit's output kept, runs and all (here, not in the recorder,
so that parsing `run` never imports the recorder)."""
MIN_LIMIT = 64 * 1024
"""Below this a run's header and a few lines would not fit: refused as a usage error."""

_SIZE = r"(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?"
"""Compiled (and cached by `re`) at its first use: most calls never parse a size."""
_FACTOR = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
EXAMPLES = "e.g. 8M, 512K, 1G, 65536 (bytes), or 0 to keep nothing"


def parse_size(text: str) -> int:
    match = re.fullmatch(_SIZE, text.strip(), re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a size: {text!r} ({EXAMPLES})")
    return int(float(match[1]) * _FACTOR[match[2].upper()])


def parse_log_limit(text: str) -> int:
    """`--log-limit`'s value: 0, or at least MIN_LIMIT bytes."""
    size = parse_size(text)
    if 0 < size < MIN_LIMIT:
        raise ValueError(
            f"{text!r} is too small to hold a run: give at least "
            f"{MIN_LIMIT // 1024}K, or 0 to keep no output"
        )
    return size


def log_limit_option(_hint: object, tokens: Sequence[Token]) -> int:
    """cyclopts converter for `--log-limit`."""
    return parse_log_limit(tokens[0].value)
