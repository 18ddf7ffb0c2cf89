"""docs/systemd.md under a real systemd user manager: run by `test_systemd.py` as root inside
a private mount namespace (`unshare -m`), never on its own.

    python systemd_user.py WORK UNITS_MD [sequence-6 | page | record-page]

It mounts a tmpfs over /run/systemd holding an empty `system/` (so that `systemd --user`
believes the machine was booted with systemd), starts `systemd --user` with HOME and
XDG_RUNTIME_DIR under WORK, installs docs/systemd.md's two units as they are written there,
with `unitsync` linked from `~/.local/bin` as the page says, and then either

- plays issue 19's sequence 6 (the default): five SIGKILLs of the agent in a few seconds
  until the socket unit fails with `service-start-limit-hit`; a `ping` that autostarts an
  agent; `reset-failed` and `start unitsync.socket`;
- or plays the page's console block in that account, as its reader would type it, the way
  every page is played (`console_session.py`); `record-page` prints what it really printed.

What it sees is printed as one JSON object on the last line of stdout; what it did, as it
goes, on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from console_session import play, record  # this folder: the script runs from it

LIMIT = 60.0
"""A safety net against a hung step, never a measure of speed."""

WORK = Path(sys.argv[1])
UNITS_MD = Path(sys.argv[2])
HOME, RUNTIME = WORK / "home", WORK / "rt"
SOCKET = RUNTIME / "unitsync" / "agent.sock"
STATE = HOME / ".local" / "state" / "unitsync"
ENV = {
    "HOME": str(HOME),
    "XDG_RUNTIME_DIR": str(RUNTIME),
    "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
    "LANG": "C.UTF-8",
}


def say(text: str) -> None:
    print(f"[systemd_user] {text}", file=sys.stderr, flush=True)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=LIMIT)
    say(
        f"$ {' '.join(args)} -> {result.returncode} {result.stdout.strip()} {result.stderr.strip()}"
    )
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("systemctl", "--user", *args, check=check)


def show(unit: str, prop: str) -> str:
    return systemctl("show", "-p", prop, "--value", unit).stdout.strip()


def until(what: str, check: object) -> None:
    deadline = time.monotonic() + LIMIT
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.05)


def listeners() -> int:
    """Sockets listening bound to SOCKET's path (/proc/net/unix), reachable or not."""
    count = 0
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(SOCKET) and int(fields[3], 16) & 0x10000:
            count += 1
    return count


def unit_files() -> dict[str, str]:
    """The two units, as docs/systemd.md shows them."""
    text = UNITS_MD.read_text()
    found = {}
    for name in ("unitsync.socket", "unitsync.service"):
        match = re.search(
            rf"`~/.config/systemd/user/{re.escape(name)}`:\n\n```ini\n(.*?)```", text, re.S
        )
        if match is None:
            raise SystemExit(f"docs/systemd.md shows no {name}")
        found[name] = match.group(1)
    return found


def pid_of_ping(output: str) -> int:
    match = re.search(r"\(pid (\d+)\)", output)
    if match is None:
        raise SystemExit(f"no pid in {output!r}")
    return int(match.group(1))


def _next(previous: int) -> bool:
    """Has systemd started an agent other than `previous`, or given up?"""
    return show("unitsync.service", "MainPID") not in ("0", str(previous)) or (
        show("unitsync.socket", "ActiveState") == "failed"
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def main() -> None:
    what = sys.argv[3] if len(sys.argv) > 3 else "sequence-6"
    plays = {"sequence-6": sequence_6, "page": the_page, "record-page": the_page_recorded}
    with user_manager():
        seen = plays[what]()
    print(json.dumps(seen))


@contextlib.contextmanager
def user_manager() -> Iterator[None]:
    """A user manager for HOME, with the page's units installed; stopped on the way out."""
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
    (Path("/run/systemd") / "system").mkdir()
    for folder in (HOME / ".config" / "systemd" / "user", HOME / ".local" / "bin", RUNTIME):
        folder.mkdir(parents=True, exist_ok=True)
    RUNTIME.chmod(0o700)
    for name, text in unit_files().items():
        (HOME / ".config" / "systemd" / "user" / name).write_text(text)
    (HOME / ".local" / "bin" / "unitsync").symlink_to(Path(sys.executable).with_name("unitsync"))

    manager = subprocess.Popen(
        ["systemd", "--user"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        until(
            "the user manager",
            lambda: (
                systemctl("is-system-running", check=False).stdout.strip()
                in ("running", "degraded")
            ),
        )
        yield
    finally:
        manager.terminate()
        manager.wait(timeout=LIMIT)


PAGE_ACCOUNT = (HOME, {**ENV, "PATH": f"{HOME / '.local' / 'bin'}:{ENV['PATH']}"})
"""The page's reader: this manager's user, with `unitsync` found where the page links it."""


def the_page() -> dict[str, object]:
    """The page's console block, typed in order; its differences from the page, if any."""
    try:
        return {"played": play(UNITS_MD, WORK, account=PAGE_ACCOUNT), "difference": None}
    except AssertionError as difference:
        return {"played": None, "difference": str(difference)}


def the_page_recorded() -> dict[str, object]:
    return {"recorded": record(UNITS_MD, WORK, account=PAGE_ACCOUNT)}


def sequence_6() -> dict[str, object]:
    """Issue 19, sequence 6: systemd gives up on the agent, and the way back."""
    seen: dict[str, object] = {}
    systemctl("daemon-reload")
    systemctl("enable", "--now", "unitsync.socket")
    first = run("unitsync", "sync", "ping")
    seen["first_ping_pid"] = pid_of_ping(first.stdout)
    seen["first_ping_autostarted"] = "started an agent" in first.stderr

    # Sequence 6: SIGKILL the agent until systemd gives up on it (Restart=on-failure
    # starts it again after each kill, until the start limit).
    kills, killed = 0, 0
    while show("unitsync.socket", "ActiveState") != "failed" and kills < 12:
        until("a new agent, or the socket failed", lambda previous=killed: _next(previous))
        if show("unitsync.socket", "ActiveState") == "failed":
            break
        killed = int(show("unitsync.service", "MainPID"))
        os.kill(killed, 9)
        kills += 1
    seen["kills"] = kills
    seen["socket_state"] = show("unitsync.socket", "ActiveState")
    seen["socket_result"] = show("unitsync.socket", "Result")
    seen["socket_file_after_failure"] = SOCKET.exists()

    # The next command finds no agent and no socket: it starts one (as without systemd).
    autostarted = run("unitsync", "sync", "ping")
    agent = pid_of_ping(autostarted.stdout)
    seen["autostarted"] = "started an agent" in autostarted.stderr
    seen["listeners_with_autostarted_agent"] = listeners()

    # The documented way back: reset-failed, start the socket.
    systemctl("reset-failed")
    systemctl("start", "unitsync.socket")
    seen["socket_state_restarted"] = show("unitsync.socket", "ActiveState")
    ping = run("unitsync", "sync", "ping")  # goes to systemd's socket, never to `agent`
    seen["ping_after_restart_pid"] = pid_of_ping(ping.stdout)
    seen["service_pid"] = int(show("unitsync.service", "MainPID"))
    until("the autostarted agent to step aside", lambda: not alive(agent))
    seen["listeners_after"] = listeners()
    log = (STATE / "agent.log").read_text()
    seen["autostarted_agent_said"] = [
        line.split(": ", 1)[1]
        for line in log.splitlines()
        if f"{SOCKET}" in line and "now holds another socket" in line
    ]
    later = run("unitsync", "sync", "ping")
    seen["later_ping_pid"] = pid_of_ping(later.stdout)
    seen["service_state"] = show("unitsync.service", "ActiveState")
    seen["listeners_at_the_end"] = listeners()
    systemctl("stop", "unitsync.socket", "unitsync.service")
    seen["socket_file_after_stop"] = SOCKET.exists()
    return seen


if __name__ == "__main__":
    main()
