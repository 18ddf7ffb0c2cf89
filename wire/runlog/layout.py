"""Where a unit's output log lives, and the rules its folders follow.

    STATE_DIR/logs/                    LOGS_DIR, 0700, made by the agent (and by `run`)
    STATE_DIR/logs/<unit key>/         one folder per unit, 0700
        000003.000000.log              run 3, its first file (segment 0); files 0600
        000003.000001.log              run 3, the next file once the first was full

A unit's key is its name made safe for a file name (at most KEY_PREFIX characters of it,
others as `_`) and 64 bits of checksums of the whole name, so any name (`/`, spaces, 255 bytes of
UTF-8) gets its own folder of a legal length. Files sort by run, then segment.

Error rules: a folder owned by another user or writable by others is refused with
`Untrusted`, whose message names it and what to do, as the agent refuses such a state
dir (SPEC §5); a folder that does not exist is not an error (no output recorded yet).

Paths are `str` (given: any path-like): `run` reaches this module at each start, and
`pathlib` is 4 ms of its start-up (see `wire.host.paths`).
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib

from unitsync.wire.host.private import problem

PathLike = str | os.PathLike[str]

LOGS_DIR = "logs"
KEY_PREFIX = 40
"""Characters of the name kept readable in its folder's name (a hash follows)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_FILE = re.compile(r"^(\d{6,})\.(\d{6,})\.log$")


class Untrusted(Exception):
    """A log folder that is not private to us: the message says which and what to do."""


def logs_folder(state_dir: PathLike) -> str:
    return os.path.join(state_dir, LOGS_DIR)


def unit_key(unit: str) -> str:
    data = unit.encode("utf-8", "surrogateescape")
    digest = f"{zlib.crc32(data):08x}{zlib.adler32(data[::-1]):08x}"  # (hashlib: 8 ms to import)
    return f"{_UNSAFE.sub('_', unit[:KEY_PREFIX])}.{digest}"


def unit_folder(logs: PathLike, unit: str) -> str:
    return os.path.join(logs, unit_key(unit))


def file_name(run: int, segment: int) -> str:
    return f"{run:06d}.{segment:06d}.log"


def log_files(folder: PathLike) -> list[tuple[int, int, str]]:
    """(run, segment, path) of every log file in `folder`, oldest first; [] if none."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if match := _FILE.match(name):
            found.append((int(match[1]), int(match[2]), os.path.join(folder, name)))
    found.sort()
    return found


ADVICE = {
    "not a folder": "remove it",
    "not ours": "remove it, or choose another --state-dir",
    "open to others": "run `chmod 700 {path}`",
}
"""What to do about a log folder that is not private (`wire.host.private`)."""


def check_private(path: PathLike) -> bool:
    """True if `path` is a folder of ours that others cannot write; False if it does not
    exist; `Untrusted` otherwise."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    found = problem(path, info)
    if found is not None:
        raise Untrusted(f"{found.words}; {ADVICE[found.kind].format(path=path)}")
    return True


def make_private(path: PathLike) -> None:
    """Create `path` (0700) if it is missing; `Untrusted` if it is there and not ours."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode=0o700)
    check_private(path)


def remove_unit(logs: PathLike, unit: str) -> bool:
    """Remove `unit`'s log (forget); True if there was one."""
    folder = unit_folder(logs, unit)
    if not os.path.exists(folder):
        return False
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return True
