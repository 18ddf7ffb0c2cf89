"""A time axis people can read: ticks on round durations, labelled as durations.

Shared by the terminal chart and the SVG so both show the same ticks. Pure.
"""

from __future__ import annotations

NICE_STEPS = (
    *(m * 10.0**e for e in range(-3, 1) for m in (1, 2, 5)),  # 1ms ... 5s
    10.0, 15.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
    3600.0, 7200.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0,
)  # fmt: skip
"""Round steps: decimal below ten seconds, then on the clock's own divisions (15s, 5m, 1h)."""


def step_for(span: float, max_ticks: int) -> float:
    """The smallest round step that puts at most `max_ticks` intervals over `span`."""
    wanted = span / max(max_ticks, 1)
    for step in NICE_STEPS:
        if step >= wanted:
            return step
    days = -(-wanted // 86400)  # beyond a day: whole days
    return days * 86400


def ticks(span: float, max_ticks: int) -> tuple[float, list[float]]:
    """The step and the tick positions (seconds from the axis' start) covering [0, span]."""
    step = step_for(span, max_ticks)
    count = int(span / step + 1e-9)
    return step, [i * step for i in range(count + 1)]


def label(seconds: float, step: float) -> str:
    """A tick's label, as precise as the step needs: 0s, 250ms, 1.5s, 45s, 2m, 1h30m."""
    if seconds == 0:
        return "0s"
    if step < 1:
        if seconds < 1:
            return f"{seconds * 1000:.0f}ms"
        decimals = 3 if step < 0.01 else 2 if step < 0.1 else 1
        return f"{seconds:.{decimals}f}".rstrip("0").rstrip(".") + "s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h" if hours else f"{days}d"
