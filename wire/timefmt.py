"""Times and durations as people read them, the same in the agent's messages and the CLI."""

from __future__ import annotations

import datetime
import time


def timestamp(at: float) -> str:
    """A moment in full, for messages that may be read days later: 2026-11-25T12:21:16+00:00."""
    return datetime.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def clock(at: float) -> str:
    """A moment on today's clock, for tables and live views: 12:21:16."""
    return time.strftime("%H:%M:%S", time.localtime(at))


def duration(seconds: float) -> str:
    """Compact and readable: 850ms, 4.2s, 3m05s, 1h02m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
