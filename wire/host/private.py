"""Whether a folder is private to this user: SPEC §4's rule, for every folder unitsync keeps
(the state dir, the socket's folder, the runs' log folders).

Error rules: nothing is raised here. `problem` says what is wrong with a folder in words that
name it, and which of the three ways it fails; each caller adds what to do in its own terms
(`--state-dir`, `chmod`, remove it) and raises its own error.
"""

from __future__ import annotations

import os
import stat
from typing import Literal

import msgspec


class Problem(msgspec.Struct, frozen=True):
    kind: Literal["not a folder", "not ours", "open to others"]
    words: str
    """What is wrong, naming the folder: `refusing to use P: it belongs to uid 0, ...`."""


def problem(path: str | os.PathLike[str], info: os.stat_result) -> Problem | None:
    """What makes `path` (whose `lstat` is `info`) unfit to hold private files; None if
    it is a folder of ours that nobody else can write."""
    if not stat.S_ISDIR(info.st_mode):
        return Problem("not a folder", f"{path} is not a folder (a symlink or file is in the way)")
    if info.st_uid != os.getuid():
        return Problem(
            "not ours",
            f"refusing to use {path}: it belongs to uid {info.st_uid}, not to you "
            f"(uid {os.getuid()})",
        )
    if info.st_mode & 0o022:
        mode = stat.S_IMODE(info.st_mode)
        return Problem(
            "open to others", f"refusing to use {path}: it is writable by others (mode {mode:04o})"
        )
    return None
