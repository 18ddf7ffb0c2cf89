"""Where the agent keeps the graph: `--store` (SPEC §10), parsed without importing trio or httpx.

    file:                                   the journal in the state dir (the default)
    etcd://HOST:PORT[,HOST:PORT...]/PREFIX  one graph shared by every agent on that etcd prefix

With `--etcd-ca` or a client certificate the agent talks TLS to etcd; with `--etcd-user` it
authenticates (the password comes from a file, never from the command line).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ETCD_PORT = 2379
DEFAULT_TIMEOUT = 10.0
"""How long a change waits for etcd (a leader election takes one or two seconds) before the
command fails with `NotDurable`."""
DEFAULT_WATCH_SILENCE = 15 * 60.0
"""A watch that shows nothing for this long, not even a progress notification, is presumed
stuck and reopened on another member. etcd sends one every 10 minutes by default
(--experimental-watch-progress-notify-interval); set this to about twice the cluster's."""


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]
    """`host:port` of each member, tried in this order."""
    prefix: str
    """Every key unitsync writes starts with `prefix/`."""
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    watch_silence: float = DEFAULT_WATCH_SILENCE

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    @property
    def url(self) -> str:
        """The store as the user wrote it (for logs and messages)."""
        return f"etcd://{','.join(self.endpoints)}/{self.prefix}"


def parse_store(url: str | None) -> EtcdConfig | None:
    """`None` for the local journal, or the etcd cluster and prefix `url` names.

    Raises ValueError with a message saying what is wrong and what is expected.
    """
    if url is None or url in ("", "file:"):
        return None
    scheme, sep, rest = url.partition("://")
    if scheme != "etcd" or not sep:
        raise ValueError(
            f"unknown store {url!r}: use 'file:' (the journal in the state dir) or "
            "etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
        )
    hosts, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not prefix:
        raise ValueError(
            f"the store {url!r} names no prefix: agents sharing a graph must agree on one, "
            "e.g. etcd://127.0.0.1:2379/my-workspace"
        )
    endpoints = tuple(_endpoint(part, url) for part in hosts.split(","))
    return EtcdConfig(endpoints=endpoints, prefix=prefix)


def _endpoint(part: str, url: str) -> str:
    part = part.strip()
    if part.startswith("["):  # an IPv6 address: [::1] or [::1]:2379
        host, _, port = part.partition("]")
        host, port = host + "]", port.removeprefix(":")
    else:
        host, _, port = part.partition(":")
    port = port or str(DEFAULT_ETCD_PORT)
    if host in ("", "[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"{part!r} in the store {url!r} is not HOST:PORT (e.g. 127.0.0.1:2379 or [::1]:2379)"
        )
    return f"{host}:{int(port)}"
