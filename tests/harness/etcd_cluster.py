"""Real etcd clusters for tests, and real agents that share a graph through them.

Members are real `etcd` processes (Debian's etcd-server; `.ci/run` installs it) on free
loopback ports, with their data in a temp dir. Tests kill and restart them (SIGTERM,
SIGKILL, SIGSTOP), and the agents too, to see what users would see. Everything here is
blocking on purpose: it runs in fixtures, outside trio, or in `trio.to_thread`.

Members and agents may also run on hosts of their own (`harness/hosts.py`): each member
then has its host's address and a command prefix (`ip netns exec ...`), and the cluster's
own calls to its members go through `reach` (run inside a namespace that can see them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

ETCD = shutil.which("etcd")
T = TypeVar("T")
PROGRESS_INTERVAL = "500ms"
"""Progress notifications this often, so a test can show a silent watch being given up."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Tls:
    """Files for a cluster that requires TLS and client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def issue(cls, folder: Path) -> Tls:
        """A new CA, a certificate for the members (127.0.0.1) and one for a client."""
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("unitsync-agent")
        names = ("ca", "server", "server-key", "client", "client-key")
        files = cls(*(folder / f"{name}.pem" for name in names))
        ca.cert_pem.write_to_path(str(files.ca))
        server.cert_chain_pems[0].write_to_path(str(files.server_cert))
        server.private_key_pem.write_to_path(str(files.server_key))
        client.cert_chain_pems[0].write_to_path(str(files.client_cert))
        client.private_key_pem.write_to_path(str(files.client_key))
        return files

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    address: str = "127.0.0.1"
    wrap: list[str] = field(default_factory=list)
    """A prefix of its command (`ip netns exec HOST`): where it runs."""

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    base: Path
    size: int = 3
    tls: Tls | None = None
    extra: list[str] = field(default_factory=list)
    """More `etcd` options for every member."""
    members: list[Member] = field(default_factory=list)
    hosts: list[tuple[str, list[str]]] | None = None
    """Each member's (address, command prefix), when each runs on a host of its own; the
    members then use etcd's usual ports on their own addresses."""
    reach: Callable[[Callable[[], T]], T] | None = None
    """Runs the cluster's own calls to its members where they can be reached (default:
    here)."""

    def __post_init__(self) -> None:
        token = f"unitsync-test-{time.monotonic_ns()}"
        self.token = token
        for i in range(self.size):
            if self.hosts is None:
                address, wrap, ports = "127.0.0.1", [], (free_port(), free_port())
            else:
                (address, wrap), ports = self.hosts[i], (2379, 2380)
            self.members.append(
                Member(
                    f"m{i}",
                    *ports,
                    self.base / f"m{i}.data",
                    self.base / f"m{i}.log",
                    address=address,
                    wrap=wrap,
                )
            )

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def url(self, prefix: str, order: list[int] | None = None) -> str:
        """The `--store` URL; `order` lists the members in the order the agent tries them."""
        chosen = [self.members[i] for i in order] if order else self.members
        return f"etcd://{','.join(m.endpoint for m in chosen)}/{prefix}"

    # --- processes -----------------------------------------------------------------------------

    def start(self) -> EtcdCluster:
        for i in range(self.size):
            self.start_member(i, wait=False)
        self.wait_healthy()
        return self

    def start_member(self, i: int, *, wait: bool = True) -> None:
        assert ETCD is not None
        member = self.members[i]
        peers = ",".join(f"{m.name}=http://{m.address}:{m.peer_port}" for m in self.members)
        client_url = f"{self.scheme}://{member.address}:{member.client_port}"
        peer_url = f"http://{member.address}:{member.peer_port}"
        args = [
            *member.wrap,
            ETCD,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", peers,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--experimental-watch-progress-notify-interval", PROGRESS_INTERVAL,
        ]  # fmt: skip
        if self.tls is not None:
            args += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        args += self.extra
        with open(member.log, "ab") as log:
            member.proc = subprocess.Popen(args, stdout=log, stderr=log)
        if wait:
            self.wait_healthy()

    def stop_member(self, i: int, signum: int = signal.SIGTERM) -> None:
        member = self.members[i]
        assert member.proc is not None
        if signum == signal.SIGSTOP:
            member.proc.send_signal(signum)
            return
        member.proc.send_signal(signal.SIGCONT)
        member.proc.send_signal(signum)
        member.proc.wait(timeout=30)

    def resume_member(self, i: int) -> None:
        proc = self.members[i].proc
        assert proc is not None
        proc.send_signal(signal.SIGCONT)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        for i, member in enumerate(self.members):
            if member.running:
                self.stop_member(i, signum)

    def close(self) -> None:
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                member.proc.send_signal(signal.SIGCONT)
                member.proc.kill()
                member.proc.wait(timeout=30)

    # --- talking to it directly ----------------------------------------------------------------

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until every running member has a leader and answers a read."""
        deadline = time.monotonic() + timeout
        for member in self.members:
            while member.running:
                with contextlib.suppress(OSError, ValueError):
                    if self._get(member, "/health").get("health") == "true":
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"etcd member {member.name} not healthy after {timeout}s:\n"
                        + member.log.read_text()[-3000:]
                    )
                time.sleep(0.1)

    def call(self, path: str, body: dict, token: str | None = None) -> dict:
        """POST a gateway call to a running member (for test set-up), waiting out an election."""
        deadline = time.monotonic() + 30
        context = self.tls.context() if self.tls else None
        while True:
            member = next(m for m in self.members if m.running)
            request = urllib.request.Request(
                f"{self.scheme}://{member.endpoint}{path}",
                data=json.dumps(body).encode(),
                headers={"Authorization": token} if token else {},
            )
            try:
                return self._fetch(request, 10, context)
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or time.monotonic() > deadline:
                    raise
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def leader(self) -> int:
        """The index of the member that leads the cluster now."""
        self.wait_healthy()
        ids = {}
        for i, member in enumerate(self.members):
            if member.running:
                status = self._post(member, "/v3/maintenance/status")
                ids[status["header"]["member_id"]] = i
                leader = status["leader"]
        return ids[leader]

    def put(self, key: bytes, value: bytes, token: str | None = None) -> int:
        reply = self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, token)
        return int(reply["header"]["revision"])

    def get(self, key: bytes, token: str | None = None) -> list[dict]:
        reply = self.call("/v3/kv/range", {"key": _b64(key)}, token)
        return reply.get("kvs", [])

    def enable_auth(self, user: str, password: str, prefix: str) -> None:
        """A root user, and `user` allowed to read and write keys under `prefix` only."""
        for path, body in [
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/add", {"name": "root", "password": "root-pw"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/role/add", {"name": "unitsync"}),
            (
                "/v3/auth/role/grant",
                {
                    "name": "unitsync",
                    "perm": {
                        "permType": "READWRITE",
                        "key": _b64(prefix.encode()),
                        "range_end": _b64(prefix.encode()[:-1] + bytes([prefix.encode()[-1] + 1])),
                    },
                },
            ),
            ("/v3/auth/user/add", {"name": user, "password": password}),
            ("/v3/auth/user/grant", {"user": user, "role": "unitsync"}),
            ("/v3/auth/enable", {}),
        ]:
            self.call(path, body)

    def _post(self, member: Member, path: str) -> dict:
        context = self.tls.context() if self.tls else None
        request = urllib.request.Request(f"{self.scheme}://{member.endpoint}{path}", b"{}")
        return self._fetch(request, 10, context)

    def _get(self, member: Member, path: str) -> dict:
        context = self.tls.context() if self.tls else None
        url = f"{self.scheme}://{member.endpoint}{path}"
        try:
            return self._fetch(urllib.request.Request(url), 2, context)
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def _fetch(
        self, request: urllib.request.Request, timeout: float, context: ssl.SSLContext | None
    ) -> dict:
        """The JSON reply to `request`, made from where the members can be reached."""

        def fetch() -> dict:  # (a socket, once connected, is read from anywhere)
            with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
                return json.loads(reply.read())

        return fetch() if self.reach is None else self.reach(fetch)


def _b64(data: bytes) -> str:
    return b64encode(data).decode()


class EtcdAgent:
    """A real `unitsync agent --store etcd://...` process, its log in a file."""

    def __init__(
        self, base: Path, name: str, url: str, *options: str, wrap: list[str] | None = None
    ) -> None:
        self.socket = base / name / "agent.sock"
        self.state_dir = base / name / "state"
        self.log = base / f"{name}.log"
        self.url, self.options = url, options
        self.wrap = wrap or []
        """A prefix of its command (`ip netns exec HOST`): where it runs."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            *self.wrap,
            sys.executable, "-m", "unitsync.cli", "agent",
            "--socket", str(self.socket),
            "--state-dir", str(self.state_dir),
            "--store", self.url,
            *self.options,
        ]  # fmt: skip

    def start(self, *, wait: bool = True) -> EtcdAgent:
        """Start the agent; with `wait`, until it listens (it must reach etcd for that)."""
        already = self.log.read_text() if self.log.exists() else ""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command, stderr=log)
        if not wait:
            return self
        deadline = time.monotonic() + 60
        while "listening on" not in self.log.read_text()[len(already) :]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the agent did not start:\n{self.log.read_text()}")
            time.sleep(0.02)
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`unitsync sync ARGS...` against this agent, as a script on its host runs it."""
        return subprocess.run(
            [sys.executable, "-m", "unitsync.cli", "sync", *args],
            capture_output=True,
            text=True,
            env=dict(os.environ, UNITSYNC_SOCKET=str(self.socket)),
            timeout=120,
        )


# --- what the agents show --------------------------------------------------------------------

AGREE_LIMIT = 120.0
"""How long replicas may take to agree (a healed partition included): only a hang gets here."""


def statuses(agent: EtcdAgent) -> dict[str, tuple]:
    """Each unit's (status, dependencies, history) as `status -o json` shows it."""
    result = agent.cli("status", "-o", "json")
    assert result.returncode == 0, result.stderr
    return {
        unit["name"]: (unit["status"], [d["unit"] for d in unit["dependencies"]], unit["history"])
        for unit in json.loads(result.stdout)["units"]
    }


def agreed(*agents: EtcdAgent) -> dict[str, tuple]:
    """What every agent shows once their replicas agree: an agent acknowledges a change once
    its own replica has it, and the others' watches bring it a moment later."""
    deadline = time.monotonic() + AGREE_LIMIT
    while True:
        views = [statuses(agent) for agent in agents]
        if all(view == views[0] for view in views[1:]) or time.monotonic() > deadline:
            for view in views[1:]:
                assert view == views[0]
            return views[0]
        time.sleep(0.05)


def blocked(waiter: subprocess.Popen[str]) -> subprocess.Popen[str]:
    """Once the waiting `start` says it waits (one line on stderr: it is not a terminal)."""
    assert waiter.stderr is not None
    assert "waiting for" in waiter.stderr.readline()
    return waiter
