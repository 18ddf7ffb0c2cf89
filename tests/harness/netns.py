"""Hosts as Linux network namespaces on one bridge, and partitions between them.

A `Network` makes one namespace per host and one more holding a bridge; each host has a
veth pair whose other end is a port of that bridge, and an address on a private subnet
(`SUBNET`). Every namespace, link, address and rule it makes lives inside namespaces it
made: the machine's own network is never touched, and the addresses exist nowhere else,
so two runs side by side (each with its own namespaces) cannot meet.

Faults, any set of hosts against any other:

- `cut(a, b)`: packets between the two sets dropped both ways, `one_way=True` from `a`
  to `b` only (nftables rules on the bridge's forward hook, in the bridge's namespace:
  IP only, so ARP still works and a heal is instant);
- `unplug(host)`: the host's bridge port set down, the whole host cut off;
- `heal()`: every rule and unplugged port undone, atomically (one nft transaction).

Processes run inside a host with `ip netns exec` (`Host.command`); Unix sockets are not
network-namespaced, so clients in the root namespace reach agents through their socket
files. `Host.run_inside(fn)` runs a Python callable in a thread that joined the host's
namespace (setns applies to one thread), for a test's own network calls.

Names are `unitsync-<pid>-<start ticks>-<n>-<host>`: unique per run, and `sweep()` finds
the namespaces of runs whose process is gone (killed before it could clean up), kills
what still runs inside them (by pid, from `ip netns pids`) and deletes them.

Errors: a failing `ip` or `nft` command raises `NetworkError` with its output; `close()`
never raises (it is the finalizer), and logs what it could not undo.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("unitsync.tests.netns")

NAME_PREFIX = "unitsync"
"""Every namespace this harness makes is named `NAME_PREFIX-<pid>-<ticks>-...`."""
SUBNET = "10.27.0"
"""Hosts get SUBNET.1, SUBNET.2, ... /24: private, and only ever inside our namespaces."""
BRIDGE = "br0"
TABLE = "unitsync"
"""The nftables table (bridge family) holding the drop rules, in the bridge's namespace."""
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
COMMAND_LIMIT = 60.0
"""An `ip` or `nft` command that takes this long is hung: only a broken kernel gets here."""

_runs = count()
_open: set[Network] = set()
"""Networks not closed yet: closed at interpreter exit if a test was interrupted."""


class NetworkError(Exception):
    """An `ip` or `nft` command failed; the message has its output."""


def unavailable() -> str | None:
    """Why namespaces cannot be made here (for a test's skip), or None when they can."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces (ip netns, nft); CI runs as root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt-get install iproute2 nftables)"
    probe = f"{_run_prefix()}-probe"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "exec", probe, "nft", "add", "table", "bridge", TABLE)
    except NetworkError as exc:
        return f"cannot make a network namespace with nftables here: {exc}"
    finally:
        with contextlib.suppress(NetworkError):
            _ip("netns", "del", probe)
    return None


@dataclass(eq=False)
class Host:
    name: str
    netns: str
    address: str
    port: str
    """The bridge's end of the host's veth pair (in the bridge's namespace)."""

    def command(self, args: Sequence[str]) -> list[str]:
        """`args` as a command run inside this host."""
        return ["ip", "netns", "exec", self.netns, *args]

    def run_inside(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)`, its sockets made inside this host (in a thread of its own)."""
        return run_in_netns(self.netns, fn, *args)


@dataclass(eq=False)
class Network:
    """Hosts `names` on one bridge; `close()` (or a crash, then `sweep()`) removes it all."""

    names: Sequence[str]
    hosts: dict[str, Host] = field(default_factory=dict)
    drops: set[tuple[str, str]] = field(default_factory=set)
    """(from, to) host pairs whose packets are dropped now."""
    unplugged: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.prefix = f"{_run_prefix()}-{next(_runs)}"
        self.bridge_netns = f"{self.prefix}-net"
        self._made: list[str] = []
        _open.add(self)
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def _make(self) -> None:
        self._add_netns(self.bridge_netns)
        net = self.bridge_netns
        _ip("-n", net, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", net, "link", "set", BRIDGE, "up")
        _nft(net, f"add table bridge {TABLE}\n" + _chain_definition())
        for i, name in enumerate(self.names, start=1):
            netns, port = f"{self.prefix}-{name}", f"h{i}"
            self._add_netns(netns)
            # Made straight inside the two namespaces: no interface ever appears in ours.
            _ip("link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", port,
                "netns", net)  # fmt: skip
            _ip("-n", net, "link", "set", port, "master", BRIDGE)
            _ip("-n", net, "link", "set", port, "up")
            address = f"{SUBNET}.{i}"
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            self.hosts[name] = Host(name, netns, address, port)

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # --- faults --------------------------------------------------------------------------------

    def cut(self, sources: Iterable[str], targets: Iterable[str], *, one_way: bool = False) -> None:
        """Drop every packet from each of `sources` to each of `targets` (and back, unless
        `one_way`), on top of the cuts already made."""
        sources, targets = list(sources), list(targets)
        pairs = {(a, b) for a in sources for b in targets if a != b}
        if not one_way:
            pairs |= {(b, a) for a, b in pairs}
        self.drops |= pairs
        self._apply()

    def unplug(self, *names: str) -> None:
        """Cut each host off from every other, both ways (its bridge port down)."""
        for name in names:
            _ip("-n", self.bridge_netns, "link", "set", self.hosts[name].port, "down")
            self.unplugged.add(name)

    def heal(self) -> None:
        """Every cut undone and every host plugged in again."""
        for name in sorted(self.unplugged):
            _ip("-n", self.bridge_netns, "link", "set", self.hosts[name].port, "up")
        self.unplugged.clear()
        self.drops.clear()
        self._apply()

    def reachable(self, a: str, b: str) -> bool:
        """Can packets go from host `a` to host `b` now?"""
        return a not in self.unplugged and b not in self.unplugged and (a, b) not in self.drops

    def _apply(self) -> None:
        """The drop rules, replaced in one nft transaction (never half a partition)."""
        rules = [f"flush chain bridge {TABLE} forward"]
        for a, b in sorted(self.drops):
            match = f"ip saddr {self.hosts[a].address} ip daddr {self.hosts[b].address}"
            rules.append(f"add rule bridge {TABLE} forward {match} drop")
        _nft(self.bridge_netns, "\n".join(rules))

    # --- cleaning up ---------------------------------------------------------------------------

    def close(self) -> None:
        """Kill whatever still runs in our namespaces, then delete them (links and rules
        go with them). Never raises."""
        _open.discard(self)
        for netns in reversed(self._made):
            _remove_netns(netns)
        self._made.clear()


def run_in_netns(netns: str, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in a new thread that joined network namespace `netns` first."""
    result: list[T] = []
    failure: list[BaseException] = []

    def inside() -> None:
        try:
            _join(netns)
            result.append(fn(*args))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=inside, name=f"netns {netns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _join(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(fd)


def sweep() -> list[str]:
    """Remove the namespaces of runs whose process is gone; the names removed."""
    removed = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in sorted(NETNS_DIR.iterdir()):
        parts = entry.name.split("-")
        if parts[0] != NAME_PREFIX or len(parts) < 3 or not parts[1].isdigit():
            continue
        if _start_ticks(int(parts[1])) == parts[2]:
            continue  # its run is alive: its own finalizers will clean up
        _remove_netns(entry.name)
        removed.append(entry.name)
    return removed


def _remove_netns(netns: str) -> None:
    """SIGKILL every process inside `netns` (by pid), then delete it. Never raises."""
    try:
        pids = _ip("netns", "pids", netns).split()
    except NetworkError as exc:
        pids = []
        log.warning("cannot list the processes in %s: %s", netns, exc)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGCONT)
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + COMMAND_LIMIT
    for pid in pids:  # a namespace outlives its name while a process is still in it
        while Path(f"/proc/{pid}").exists() and _is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
    try:
        _ip("netns", "del", netns)
    except NetworkError as exc:
        log.warning("cannot delete network namespace %s: %s", netns, exc)


def _is_running(pid: str) -> bool:
    """Not yet dead (a zombie waiting for its parent counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def _run_prefix() -> str:
    pid = os.getpid()
    return f"{NAME_PREFIX}-{pid}-{_start_ticks(pid)}"


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks (tells a reused pid apart), "" if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _chain_definition() -> str:
    return (
        f"add chain bridge {TABLE} forward "
        "{ type filter hook forward priority 0; policy accept; }"
    )


def _ip(*args: str) -> str:
    return _tool(["ip", *args])


def _nft(netns: str, script: str) -> None:
    _tool(["ip", "netns", "exec", netns, "nft", "-f", "-"], script)


def _tool(args: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            args, input=stdin, capture_output=True, text=True, timeout=COMMAND_LIMIT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{' '.join(args)}: {exc}") from None
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@atexit.register
def _close_open_networks() -> None:
    """An interrupted run (Ctrl-C) still removes what it made."""
    for network in list(_open):
        network.close()
