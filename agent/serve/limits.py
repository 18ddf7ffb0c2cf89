"""What one connection may cost the agent (no trio here: the CLI reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_CONNECTIONS = 16_384
"""Far above any workspace's scripts, far below what the agent's memory would bear."""
DEFAULT_PARTIAL_FRAMES = 32 << 20
"""Bytes of frames not yet whole the agent holds across all connections (32 MiB): 32 frames
of the largest size in flight at once, hundreds of the largest real request (a `want` of
500 long names, 130 kB); a peer sending frames whole and promptly never comes near it."""


@dataclass(frozen=True)
class Limits:
    """Time and connection bounds. Waits and watches are never timed out."""

    hello_timeout: float = 10.0
    """From connecting to a complete hello."""
    frame_timeout: float = 10.0
    """From a frame's first byte to its last: a peer stalling mid-frame is dropped."""
    idle_timeout: float = 600.0
    """Between requests: an idle connection is closed (clients reconnect)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    partial_frames: int = DEFAULT_PARTIAL_FRAMES
    """Bytes held for frames not yet whole, across all connections (`partial_frames.py`)."""
