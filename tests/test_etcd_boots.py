"""Boots belong to hosts (SPEC §7 with §10): in a graph shared through etcd, a workspace
restart of one host starts over the units whose latest run that host started, and no other
host's. Real etcd members, real agent processes, each with its own host id and boot id."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from harness.etcd_cluster import EtcdAgent, EtcdCluster


def units(agent: EtcdAgent) -> dict[str, dict]:
    result = agent.cli("status", "-o", "json")
    assert result.returncode == 0, result.stderr
    return {unit["name"]: unit for unit in json.loads(result.stdout)["units"]}


def eventually(agent: EtcdAgent, check: Callable[[dict[str, dict]], bool]) -> dict[str, dict]:
    """The agent's view once its replica shows what `check` wants (bounded)."""
    deadline = time.monotonic() + 30
    while not check(seen := units(agent)):
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    return seen


def test_a_workspace_restart_of_one_host_starts_over_only_its_own_units(
    etcd: EtcdCluster, etcd_agents: Callable[..., EtcdAgent]
) -> None:
    url = etcd.url("boots")
    host_a = etcd_agents(url, "--host-id", "host-a", "--boot-id", "a-1")
    host_b = etcd_agents(url, "--host-id", "host-b", "--boot-id", "b-1")
    for agent, unit in ((host_a, "db"), (host_b, "web"), (host_a, "clone")):
        assert agent.cli("start", unit, *(["--once"] if unit == "clone" else [])).returncode == 0
        assert agent.cli("complete", unit).returncode == 0
    assert host_b.cli("want", "web", "db").returncode == 0
    eventually(host_b, lambda seen: {"db", "web", "clone"} <= set(seen))

    host_a.close()  # host A's workspace restarts: its agent comes back in a new boot
    host_a.options = ("--host-id", "host-a", "--boot-id", "a-2")
    host_a.start()
    after = eventually(host_b, lambda seen: seen["db"]["status"] == "pending")
    assert (after["db"]["status"], after["db"]["reason"]) == ("pending", "workspace restarted")
    assert after["web"]["status"] == "completed"  # host B's unit: untouched
    assert after["clone"]["status"] == "completed"  # a one-time unit stays done
    assert after["db"]["history"][-1]["boot"] == 2  # host A's second boot
    assert "boot 2 since" in host_a.cli("ping").stdout
    assert "boot 1 since" in host_b.cli("ping").stdout

    host_a.close()  # an agent restart within the same boot changes nothing more
    host_a.start()
    assert units(host_a)["db"]["history"] == after["db"]["history"]
    assert host_a.cli("start", "db").returncode == 0  # the same script runs again, exit 0
