"""Being told that files in a folder changed (Linux inotify, through ctypes), or not.

`Changes` watches a folder and its parent (so a folder that does not exist yet is
noticed when it is made): its descriptor becomes readable when a file in it is created,
written or removed, and `drain` empties it. Where inotify is missing (not Linux, no ctypes,
the watch limit reached) `fileno` is None and the caller polls every POLL seconds instead.

Why inotify and not a short poll: a follower waits for hours between lines; inotify costs
nothing meanwhile and wakes it within a millisecond of a write, where a poll costs a wake-up
and a folder listing every POLL and adds up to POLL to each line's delay.

Resource rules: a `Changes` owns its inotify descriptor, closed by `close`.
"""

from __future__ import annotations

import contextlib
import os

POLL = 0.025
"""Seconds between looks when inotify is missing: half of `logs -f`'s 50 ms budget."""
_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x2, 0x8, 0x80, 0x100, 0x200
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class Changes:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._fd: int | None = None
        self._libc = None
        self._watched: set[str] = set()
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (ImportError, OSError, AttributeError):
            return
        if fd < 0:
            return
        self._fd, self._libc = fd, libc
        self.rearm()

    def fileno(self) -> int | None:
        return self._fd

    def rearm(self) -> None:
        """Watch the folder once it exists (and its parent until then)."""
        if self._fd is None or self._libc is None:
            return
        for path in (os.path.dirname(self.folder), self.folder):
            if (
                path not in self._watched
                and os.path.isdir(path)
                and self._libc.inotify_add_watch(self._fd, os.fsencode(path), _MASK) >= 0
            ):
                self._watched.add(path)

    def drain(self) -> None:
        """Forget the changes so far (the caller reads the folder anew)."""
        if self._fd is None:
            return
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):
                pass
        if self.folder not in self._watched:
            self.rearm()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
