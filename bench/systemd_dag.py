"""The 50-unit start-up under a real systemd user manager: run by `start_up.py` as root inside a
private mount namespace (`unshare -m`), never on its own.

    python systemd_dag.py WORK SEED < units.json

As `tests/harness/systemd_user.py` does: a tmpfs over /run/systemd holding an empty
`system/` (so that `systemd --user` believes the machine was booted with systemd), then
`systemd --user` with HOME and XDG_RUNTIME_DIR under WORK. Each unit of the DAG is a oneshot
service (`RemainAfterExit=yes`, so a finished dependency is not run again) with `Requires=`
and `After=` its dependencies, doing the same work as the other ways (`start_up.WORK`, from a
script file: systemd would expand `$EPOCHREALTIME` in `ExecStart=` itself). The 50 "scripts"
are 50 `systemctl --user start UNIT` launched at once in the seeded random order, each
returning when its unit has run.

Prints one JSON object on its last line: the wall time from the first launch until the last
`systemctl` returned, the CPU of the `systemctl` processes and of the manager, and the work's
log for the order check.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from start_up import ENVIRONMENT, WORK  # this folder: the script runs from it

LIMIT = 120.0
"""A safety net against a hung step, never a measure of speed."""

FOLDER = Path(sys.argv[1])
SEED = int(sys.argv[2])
HOME, RUNTIME = FOLDER / "home", FOLDER / "rt"
ENV = {
    "HOME": str(HOME),
    "XDG_RUNTIME_DIR": str(RUNTIME),
    "PATH": "/usr/bin:/bin",
    **ENVIRONMENT,
}


def unit_file(deps: list[str], script: Path, unit: str) -> str:
    needs = " ".join(f"{dep}.service" for dep in deps)
    ordering = f"Requires={needs}\nAfter={needs}\n" if deps else ""
    return (
        f"[Unit]\n{ordering}\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        f"Environment=LC_ALL=C\nExecStart=/bin/bash {script} {unit}\n"
    )


def main() -> None:
    units: dict[str, list[str]] = json.loads(sys.stdin.read())
    log = FOLDER / "work.log"
    script = FOLDER / "work.sh"
    script.write_text(WORK.format(unit='"$1"', log=log) + "\n")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
    (Path("/run/systemd") / "system").mkdir()
    folder = HOME / ".config" / "systemd" / "user"
    folder.mkdir(parents=True)
    RUNTIME.mkdir(mode=0o700)
    for unit, deps in units.items():
        (folder / f"{unit}.service").write_text(unit_file(deps, script, unit))
    manager = subprocess.Popen(
        ["systemd", "--user"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + LIMIT
        while subprocess.run(
            ["systemctl", "--user", "is-system-running"], env=ENV, capture_output=True, text=True
        ).stdout.strip() not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise SystemExit("the user manager did not start")
            time.sleep(0.05)
        order = list(units)
        random.Random(SEED).shuffle(order)
        manager_cpu = _cpu_of(manager.pid)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started, launched = time.perf_counter(), time.time()
        starts = [
            subprocess.Popen(["systemctl", "--user", "start", f"{unit}.service"], env=ENV)
            for unit in order
        ]
        codes = [proc.wait(timeout=LIMIT) for proc in starts]
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        manager_cpu = _cpu_of(manager.pid) - manager_cpu
    finally:
        manager.terminate()
        manager.wait(timeout=LIMIT)
    if any(codes):
        raise SystemExit(f"systemctl start exited {sorted(set(codes))}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    seen = {"wall": wall, "cpu": cpu, "manager_cpu": manager_cpu, "launched": launched}
    print(json.dumps({**seen, "log": log.read_text()}))


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
