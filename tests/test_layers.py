"""What each package may import (issue 9): the layers the README's Layout describes.

- Importing the command line or the blocking client never imports trio: a script calls
  `unitsync` dozens of times at start-up, and trio's import is most of a call's cost. The
  blocking client is generated from the trio one; `unitsync.client.AsyncClient` is imported
  only when asked for.
- The agent never imports the client or the command line, and `wire/` (what both sides
  share) imports neither side: a change on one side cannot reach the other unseen.
- Inside the agent (issue 21): `agent/core/` is pure (no trio, and nothing of the agent
  outside the core), so a replay and a test run exactly the code a request does; the
  stores (`agent/store/`) know nothing of serving a socket (`agent/serve/`); and `wire/`
  outside `wire/host/` is sans-IO: no trio, on either side of a connection.
- The command line never imports the agent, except `unitsync agent` itself.
- `wire/host/` (the OS mechanisms: paths, /proc, peers, sd_notify, pidfds) imports nothing
  else of unitsync: the protocol, the agent and the clients build on it, never the reverse.

Each check imports modules one at a time in a fresh interpreter and names the first one
that brings in what it must not, so a failure says where to look.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

NEEDS_TRIO = {"unitsync.agent.serve.frames", "unitsync.client._async", "unitsync.client._backends"}
"""Trio's own I/O loops (the trio client and its backend): everything else a client or the
command line imports is trio-free."""

RUNS_THE_AGENT = {"unitsync.cli.agent_command"}
"""`unitsync agent`: the one command that imports the agent (its options' types and
defaults; the agent's I/O lazily, when run)."""
HOST = "unitsync.wire.host"


def modules(package: str) -> list[str]:
    """Every module of `package`, in its sub-packages too."""
    found = importlib.import_module(package)
    return sorted(
        info.name
        for info in pkgutil.walk_packages(found.__path__, prefix=f"{package}.")
        if not info.name.endswith(".__main__")  # runs the command line on import
    )


def within(name: str, packages: set[str]) -> bool:
    """Whether module `name` is one of `packages` or lies below one of them."""
    return any(name == p or name.startswith(f"{p}.") for p in packages)


def first_to_import(names: list[str], forbidden: list[str]) -> str | None:
    """In a fresh interpreter, import `names` in order; the first after which a module of
    `forbidden` (or below it) is loaded, as "module -> what it loaded"; None if none."""
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"    bad = sorted(m for m in sys.modules for f in {forbidden!r}\n"
        "                 if m == f or m.startswith(f + '.'))\n"
        "    if bad:\n"
        "        print(name, '->', ', '.join(bad[:3]))\n"
        "        break\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return result.stdout.strip() or None


@pytest.mark.parametrize("package", ["unitsync.cli", "unitsync.client", "unitsync.wire"])
def test_the_command_line_and_the_blocking_client_never_import_trio(package: str) -> None:
    names = [m for m in modules(package) if not within(m, NEEDS_TRIO | RUNS_THE_AGENT)]
    assert names
    assert first_to_import(names, ["trio"]) is None


def test_the_blocking_client_never_imports_trio_and_the_trio_client_only_when_asked() -> None:
    """The blocking client is generated from the trio one (issue 21): the generated module
    must not bring trio in, and `unitsync.client.AsyncClient` is imported on first use."""
    blocking = ["unitsync.client", "unitsync.client._sync.client"]
    assert first_to_import(blocking, ["trio"]) is None
    script = (
        "import sys, unitsync.client as client\n"
        "before = 'trio' in sys.modules\n"
        "client.AsyncClient\n"
        "print(before, 'trio' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True"], result.stderr


def test_the_agent_imports_neither_the_client_nor_the_command_line() -> None:
    names = modules("unitsync.agent")
    assert "unitsync.agent.service" in names and "unitsync.agent.serve.server" in names
    assert first_to_import(names, ["unitsync.client", "unitsync.cli"]) is None


def test_the_shared_package_imports_neither_side() -> None:
    names = modules("unitsync.wire")
    assert first_to_import(names, ["unitsync.agent", "unitsync.client", "unitsync.cli"]) is None


def test_the_command_line_imports_the_agent_only_to_run_it() -> None:
    names = [m for m in modules("unitsync.cli") if not within(m, RUNS_THE_AGENT)]
    assert "unitsync.cli.run.command" in names and "unitsync.cli.timeline.model" in names
    assert first_to_import(names, ["unitsync.agent"]) is None


def beside_the_host() -> list[str]:
    """Everything of unitsync the host package must not import: every other package and
    every module of `wire/` but the host package itself."""
    wire = [m for m in modules("unitsync.wire") if not m.startswith(f"{HOST}.") and m != HOST]
    return ["unitsync.agent", "unitsync.client", "unitsync.cli", *wire]


def test_the_host_package_imports_nothing_else_of_unitsync() -> None:
    names = modules(HOST)
    assert f"{HOST}.notify" in names and f"{HOST}.processes" in names
    assert first_to_import(names, beside_the_host()) is None


def test_the_check_names_the_module_that_breaks_a_rule() -> None:
    """The harness has teeth: trio's own client is caught, and named; so is a module of
    `wire/` that builds on the host package (as the host package must not on it)."""
    found = first_to_import(["unitsync.wire.session", "unitsync.client._async.client"], ["trio"])
    assert found is not None and found.startswith("unitsync.client._async.client -> trio")
    found = first_to_import([f"{HOST}.paths", "unitsync.wire.session"], beside_the_host())
    assert found is not None and found.startswith("unitsync.wire.session -> unitsync.wire.")


def test_the_core_of_the_agent_is_pure() -> None:
    """No trio, no store, no service: only the core's own modules (and the wire's)."""
    core = "unitsync.agent.core"
    names = modules(core)
    assert f"{core}.graph" in names
    outside = [m for m in modules("unitsync.agent") if not within(m, {core})]
    assert first_to_import(names, ["trio", *outside]) is None


def test_the_stores_know_nothing_of_serving_a_socket() -> None:
    names = modules("unitsync.agent.store")
    assert "unitsync.agent.store.journal.writer" in names
    assert "unitsync.agent.store.etcd.store" in names
    assert first_to_import(names, ["unitsync.agent.serve"]) is None


def test_the_wire_outside_the_host_is_sans_io_on_both_sides() -> None:
    names = [m for m in modules("unitsync.wire") if not m.startswith("unitsync.wire.host")]
    assert "unitsync.wire.serving" in names and "unitsync.wire.session" in names
    assert first_to_import(names, ["trio"]) is None


def test_the_new_rules_catch_what_they_forbid() -> None:
    """The harness has teeth for the agent's rooms too: the service is not the core's, and
    the server is not a store's."""
    found = first_to_import(["unitsync.agent.core.graph", "unitsync.agent.service"], ["trio"])
    assert found is not None and found.startswith("unitsync.agent.service -> trio")
    serve = first_to_import(["unitsync.agent.serve.server"], ["unitsync.agent.serve.connection"])
    assert serve is not None
