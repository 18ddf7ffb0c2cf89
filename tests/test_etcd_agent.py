"""`unitsync agent --store etcd://...` with its TLS and authentication options, end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from harness.etcd_cluster import ETCD, EtcdAgent, EtcdCluster, Tls, free_port


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--store", "etcd://127.0.0.1:2379"], "names no prefix"),
        (["--store", "redis://127.0.0.1/ws"], "unknown store 'redis://127.0.0.1/ws'"),
        (["--store", "etcd://127.0.0.1:99999/ws"], "is not HOST:PORT"),
        (["--etcd-ca", "ca.pem"], "--etcd-ca only apply with --store etcd://"),
        (["--store", "etcd://127.0.0.1/ws", "--etcd-user", "ann"], "go together"),
        (["--store", "etcd://127.0.0.1/ws", "--etcd-cert", "c.pem"], "go together"),
        (["--store", "etcd://127.0.0.1/ws", "--etcd-timeout", "0"], "must be more than 0"),
    ],
)
def test_a_store_option_that_cannot_work_is_refused_at_once(
    short_tmp: Path, options: list[str], message: str
) -> None:
    result = run_cli("agent", "--socket", str(short_tmp / "agent.sock"), *options)
    assert result.code == 2
    assert message in result.err


@pytest.fixture
def single(tmp_path: Path) -> Iterator[Callable[..., EtcdCluster]]:
    """A one-member cluster, made to order: `single(tls=..., auth=...)`."""
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    clusters: list[EtcdCluster] = []

    def make(tls: Tls | None = None) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path, size=1, tls=tls).start()
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


def test_agents_over_tls_with_client_certificates(
    single: Callable[..., EtcdCluster], tmp_path: Path, short_tmp: Path
) -> None:
    tls = Tls.issue(tmp_path)
    etcd = single(tls=tls)
    options = ("--etcd-ca", str(tls.ca), "--etcd-cert", str(tls.client_cert))
    options += ("--etcd-key", str(tls.client_key))
    agents = [EtcdAgent(short_tmp, f"a{i}", etcd.url("ws"), *options).start() for i in (1, 2)]
    try:
        assert agents[0].cli("want", "app", "db").returncode == 0
        shown = agents[1].cli("status", "app")
        assert shown.returncode == 0 and "db" in shown.stdout
    finally:
        for agent in agents:
            agent.close()


def test_an_agent_logged_in_as_an_etcd_user(
    single: Callable[..., EtcdCluster], tmp_path: Path, short_tmp: Path
) -> None:
    """The user and password file may come from the environment, as the store may."""
    etcd = single()
    etcd.enable_auth("ann", "ann-pw", "ws/")
    password = tmp_path / "password"
    password.write_text("ann-pw\n")
    options = ("--etcd-user", "ann", "--etcd-password-file", str(password))
    agent = EtcdAgent(short_tmp, "a", etcd.url("ws"), *options).start()
    try:
        assert agent.cli("want", "app", "db").returncode == 0
        assert agent.cli("complete", "db", "--force").returncode == 0
    finally:
        agent.close()
    wrong = tmp_path / "wrong"
    wrong.write_text("not-ann-pw\n")
    env = {
        "UNITSYNC_STORE": etcd.url("ws"),
        "UNITSYNC_ETCD_USER": "ann",
        "UNITSYNC_ETCD_PASSWORD_FILE": str(wrong),
    }
    refused = subprocess.run(
        [sys.executable, "-m", "unitsync.cli", "agent", "--socket", str(short_tmp / "b.sock")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert refused.returncode == 1
    assert "refused user 'ann'" in refused.stderr
    assert "check --etcd-user and the password file" in refused.stderr


def test_an_agent_waiting_for_etcd_says_so_and_stops_on_sigterm(short_tmp: Path) -> None:
    store = f"etcd://127.0.0.1:{free_port()}/ws"  # nobody listens there
    agent = subprocess.Popen(
        [sys.executable, "-m", "unitsync.cli", "agent", "--socket", str(short_tmp / "a.sock")],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "UNITSYNC_STORE": store},
    )
    assert agent.stderr is not None
    line = agent.stderr.readline()
    assert f"waiting for etcd at {store}" in line and "cannot connect" in line
    agent.send_signal(signal.SIGTERM)
    _out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0
    assert "stopped" in err
