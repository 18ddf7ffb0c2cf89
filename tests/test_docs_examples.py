"""The workspace examples of docs/coder.md and docs/devcontainer.md, run as written.

Each doc's scripts are read from its text (the blocks after a `<!-- docs-example -->`
comment) and run as their platform runs them, against a real agent that the scripts start
themselves (`UNITSYNC_AUTOSTART=1`, a private socket and state dir): Coder's `coder_script`s
all at once, each `sh -c` in a session of its own with its output on pipes (Coder waits for
those pipes to close); a dev container's hooks one after the other, each entry `/bin/sh -c`
on a pseudo-terminal of its own that hangs up when its shell exits (as the dev containers
CLI does), `postStartCommand`'s entries at once. Then the workspace restarts: every process
carrying the workspace's mark in its environment is SIGKILLed (the agent included), the
container's folders go or stay as the platform keeps them, and the same scripts run again
with a new `UNITSYNC_BOOT_ID`. Every script must exit 0 every time, and the one-time clone
must happen once.

Stand-ins replace what is not here (`git clone`, `make`, `npm`, `claude`); the dev server is a
real `python3 -m http.server` and the readiness probes a real `curl`. The only edits to the
docs' text: the server's port (a free one) and `/tmp/` (the container's own).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import agents_running, run_cli

DOCS = Path(__file__).resolve().parent.parent / "docs"
HANG = 120.0
"""A bound on a hang, not a timing assertion: a script still running then has failed."""
MARK = "UNITSYNC_DOCS_WORKSPACE"
"""An environment variable every process of a simulated workspace inherits (the agent too):
how its processes are found to be killed, as a container's end would kill them."""

# --- the docs' text ---------------------------------------------------------------------------

EXAMPLE = re.compile(r"<!-- docs-example:.*?-->\s*```(\w+)\n(.*?)\n```", re.DOTALL)
CODER_SCRIPT = re.compile(
    r'resource "coder_script" "(\w+)" \{.*?script\s*=\s*<<-EOT\n(.*?)\n\s*EOT\n', re.DOTALL
)


def examples(doc: str) -> list[tuple[str, str]]:
    """(language, text) of each block the doc marks as run by this test, in order."""
    return EXAMPLE.findall((DOCS / doc).read_text())


def coder_scripts() -> dict[str, str]:
    """The `script` of each `coder_script` resource, as Terraform's `<<-EOT` leaves it."""
    hcl = next(text for language, text in examples("coder.md") if language == "hcl")
    return {name: textwrap.dedent(body) for name, body in CODER_SCRIPT.findall(hcl)}


def without_comments(jsonc: str) -> str:
    """JSON with comments (devcontainer.json's dialect) as plain JSON: `//` outside strings."""
    plain, in_string, escaped, i = [], False, False, 0
    while i < len(jsonc):
        char = jsonc[i]
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif jsonc.startswith("//", i):
            i = jsonc.find("\n", i)
            continue
        plain.append(char)
        i += 1
    return "".join(plain)


# --- stand-ins ------------------------------------------------------------------------------

STANDINS = {
    "git": r"""
        # `git clone URL DIR` makes DIR/.git, refusing an existing DIR as git does;
        # `git -C DIR ...` succeeds in a clone.
        case $1 in
          clone)
            if [ -e "$3" ]; then
              echo "fatal: destination path '$3' already exists and is not an empty directory." >&2
              exit 128
            fi
            echo "Cloning into '$3'..." >&2
            mkdir -p "$3/.git" && echo "$2" >> "$STANDIN_LOG/clones" ;;
          -C) test -d "$2/.git" ;;
          *) exit 2 ;;
        esac
    """,
    "make": r"""
        # `make -C DIR dev` serves DIR over HTTP; `make -C DIR test` asks it for /healthz.
        cd "$2" || exit 2
        case $3 in
          dev) touch healthz; exec python3 -m http.server "$DEV_PORT" ;;
          test) curl -fsS -o /dev/null "http://localhost:$DEV_PORT/healthz" &&
                  echo "3 passed" && echo . >> "$STANDIN_LOG/tests" ;;
          *) exit 2 ;;
        esac
    """,
    "claude": r"""
        # Needs a clone in its working folder.
        test -d .git || { echo "claude: no repository in $PWD" >&2; exit 1; }
        echo "claude: working in $PWD" && echo . >> "$STANDIN_LOG/claude"
    """,
    "npm": r"""
        # `npm ci`, `npm run dev` (an HTTP server), `npm run seed` (asks the server).
        case "$1 $2" in
          "ci ") mkdir -p node_modules && echo . >> "$STANDIN_LOG/npm-ci" ;;
          "run dev") exec python3 -m http.server "$DEV_PORT" ;;
          "run seed") curl -fsS -o /dev/null "http://localhost:$DEV_PORT/" &&
                        echo "seeded" && echo . >> "$STANDIN_LOG/seeded" ;;
          *) exit 2 ;;
        esac
    """,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- a simulated workspace ------------------------------------------------------------------


@dataclass
class Workspace:
    """A private machine: a volume that lasts, a container that may not, a boot counter."""

    root: Path
    port: int = field(default_factory=free_port)
    boot: int = 0

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.log = self.root / "standins"
        for folder in (self.bin, self.log):
            folder.mkdir(parents=True)
        for name, body in STANDINS.items():
            path = self.bin / name
            path.write_text("#!/bin/sh\n" + textwrap.dedent(body).lstrip())
            path.chmod(0o755)

    @property
    def container(self) -> Path:
        """What a new container starts without: its /tmp (the socket, logs), maybe its home."""
        return self.root / "container"

    @property
    def socket(self) -> Path:
        return self.container / "tmp" / "unitsync" / "agent.sock"

    def adapt(self, text: str, port: int) -> str:
        """The docs' text for this machine: its free port, its container's /tmp."""
        return text.replace(f"localhost:{port}", f"localhost:{self.port}").replace(
            "/tmp/", f"{self.container}/tmp/"
        )

    def environ(self, home: Path, **extra: str) -> dict[str, str]:
        (self.container / "tmp").mkdir(parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        environ = {
            "PATH": f"{self.bin}:{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "UNITSYNC_SOCKET": str(self.socket),
            "UNITSYNC_AUTOSTART": "1",
            "UNITSYNC_BOOT_ID": f"boot-{self.boot}",
            "DEV_PORT": str(self.port),
            "STANDIN_LOG": str(self.log),
            MARK: str(self.root),
        }
        environ.update({k: v for k, v in os.environ.items() if k.startswith("PYTHON")})
        environ.update(extra)
        return environ

    def next_boot(self) -> None:
        self.boot += 1

    def stop(self, keep_container: bool) -> None:
        """The container stops: SIGKILL to every process of it; its folders go unless kept."""
        deadline = time.monotonic() + HANG
        while pids := self.processes():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            assert time.monotonic() < deadline, f"still running after SIGKILL: {pids}"
            time.sleep(0.01)
        if not keep_container:
            shutil.rmtree(self.container)

    def processes(self) -> list[int]:
        """Live processes that carry this workspace's mark (zombies are dead enough)."""
        needle = f"{MARK}={self.root}\0".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle not in (entry / "environ").read_bytes():
                    continue
                state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue  # gone meanwhile
            if state != b"Z":
                found.append(int(entry.name))
        return found

    def count(self, what: str) -> int:
        """How many times a stand-in did `what` (clones, tests, claude, npm-ci, seeded)."""
        path = self.log / what
        return len(path.read_text().splitlines()) if path.exists() else 0

    def units(self) -> dict:
        printed = run_cli("sync", "status", "-o", "json", socket=self.socket)
        assert printed.code == 0, printed.err
        return json.loads(printed.out)

    def wait_until(self, condition: Callable[[dict], bool], what: str) -> dict:
        deadline = time.monotonic() + HANG
        while not condition(state := self.units()):
            assert time.monotonic() < deadline, f"never happened: {what}\n{state}"
            time.sleep(0.05)
        return state


@pytest.fixture
def workspace(short_tmp: Path) -> Iterator[Workspace]:
    machine = Workspace(short_tmp)
    yield machine
    machine.stop(keep_container=True)


@dataclass
class Ran:
    code: int
    output: str


def status_of(state: dict, unit: str) -> str:
    return next(u["status"] for u in state["units"] if u["name"] == unit)


def moved(state: dict, unit: str, to: str) -> float:
    """When `unit` last moved to `to` in the current boot."""
    unit_view = next(u for u in state["units"] if u["name"] == unit)
    return max(
        entry["at"]
        for entry in unit_view["history"]
        if entry["to"] == to and entry["boot"] == state["boot"]
    )


# --- Coder ------------------------------------------------------------------------------------


def run_coder_scripts(workspace: Workspace, scripts: dict[str, str]) -> dict[str, Ran]:
    """Every script at once, as Coder's agent runs them: `sh -c` in a session of its own,
    output on pipes; a script is over when it has exited and its pipes are closed."""
    home = workspace.root / "home"  # the home volume: it outlives the container
    environ = workspace.environ(home)
    started = {
        name: subprocess.Popen(
            ["sh", "-c", workspace.adapt(script, 3000)],
            cwd=home,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        for name, script in scripts.items()
    }
    ran = {}
    for name, proc in started.items():
        try:
            output, _ = proc.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            pytest.fail(f"coder_script {name} did not end, or left its output pipes open")
        ran[name] = Ran(proc.returncode, output)
    return ran


def coder_start(workspace: Workspace, scripts: dict[str, str]) -> tuple[dict[str, Ran], dict]:
    """The workspace starts (a new boot): its scripts run; then the background `run`s end
    (claude) or get ready (dev)."""
    workspace.next_boot()
    ran = run_coder_scripts(workspace, scripts)
    for name, result in ran.items():
        assert result.code == 0, f"boot {workspace.boot}: {name} exited {result.code}:\n{result}"
    state = workspace.wait_until(
        lambda s: status_of(s, "claude") == "completed" and status_of(s, "dev") == "completed",
        "claude done and dev ready",
    )
    assert state["boot"] == workspace.boot
    assert len(agents_running(str(workspace.socket))) == 1, "the scripts started one agent"
    return ran, state


@pytest.mark.parametrize("clone", ["run --once", "start --once"])
def test_the_coder_scripts_survive_a_workspace_restart(workspace: Workspace, clone: str) -> None:
    scripts = coder_scripts()
    assert set(scripts) == {"git_clone", "claude", "dev_server", "tests"}
    if clone == "start --once":  # the doc's variant of the clone script, in its place
        scripts["git_clone"] = next(text for lang, text in examples("coder.md") if lang == "sh")

    ran, state = coder_start(workspace, scripts)
    assert "3 passed" in ran["tests"].output
    assert moved(state, "dev", "started") >= moved(state, "git", "completed")
    assert moved(state, "claude", "started") >= moved(state, "git", "completed")
    assert moved(state, "tests", "started") >= moved(state, "dev", "completed")

    workspace.stop(keep_container=False)  # Coder removes the container; the home volume stays
    ran, state = coder_start(workspace, scripts)
    assert "one-time unit" in ran["git_clone"].output
    assert "3 passed" in ran["tests"].output
    assert moved(state, "tests", "started") >= moved(state, "dev", "completed")
    git = next(u for u in state["units"] if u["name"] == "git")
    assert git["status"] == "completed" and git["once"]
    assert all(entry["boot"] == 1 for entry in git["history"]), "git did not run in boot 2"
    assert workspace.count("clones") == 1
    assert workspace.count("claude") == workspace.count("tests") == 2


# --- dev containers ---------------------------------------------------------------------------


def _take_the_terminal() -> None:
    """In the child, after setsid(): its terminal (stdin) becomes its controlling one."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def on_terminals(commands: dict[str, str], cwd: Path, environ: dict[str, str]) -> dict[str, Ran]:
    """Run each command at once as `/bin/sh -c`, session leader on a pseudo-terminal of its
    own, as the dev containers CLI runs a lifecycle hook's entries; a terminal is closed when
    its shell has exited (so it hangs up on whatever the entry left behind)."""
    running = {}
    for name, command in commands.items():
        leader, follower = os.openpty()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=environ,
            stdin=follower,
            stdout=follower,
            stderr=follower,
            start_new_session=True,
            preexec_fn=_take_the_terminal,
        )
        os.close(follower)
        running[name] = (proc, leader, bytearray())
    deadline = time.monotonic() + HANG
    ran = {}
    while running:
        assert time.monotonic() < deadline, f"hook entries still running: {list(running)}"
        readable, _, _ = select.select([leader for _, leader, _ in running.values()], [], [], 0.1)
        for name, (proc, leader, output) in list(running.items()):
            # Asked before looking: once the shell has exited, all it wrote is in the terminal,
            # even what came after the select above.
            exited = proc.poll() is not None
            chunk = b""
            if leader in readable or (exited and select.select([leader], [], [], 0)[0]):
                with contextlib.suppress(OSError):  # EIO: nothing holds the terminal any more
                    chunk = os.read(leader, 65536)
                output += chunk
            if not chunk and exited:
                os.close(leader)
                ran[name] = Ran(proc.returncode, output.decode(errors="replace"))
                del running[name]
    return ran


@dataclass
class DevContainer:
    """A dev container of `workspace` configured by the doc's devcontainer.json."""

    workspace: Workspace
    config: dict
    web_sh: str

    @classmethod
    def from_doc(cls, workspace: Workspace) -> DevContainer:
        config, web_sh = (text for _, text in examples("devcontainer.md"))
        return cls(workspace, json.loads(without_comments(config)), web_sh)

    @property
    def folder(self) -> Path:
        """The workspace folder: on the volume, it outlives every container."""
        return self.workspace.root / "workspace"

    def environ(self) -> dict[str, str]:
        folder = str(self.folder)
        extra = {
            name: value.replace("${containerWorkspaceFolder}", folder)
            for name, value in self.config.get("containerEnv", {}).items()
        }
        return self.workspace.environ(self.workspace.container / "home", **extra)

    def hook(self, name: str) -> dict[str, Ran]:
        command = self.config[name]
        entries = command if isinstance(command, dict) else {name: command}
        return on_terminals(
            {entry: self.workspace.adapt(text, 5173) for entry, text in entries.items()},
            self.folder,
            self.environ(),
        )

    def check_out(self) -> None:
        """The workspace folder holds the project: here, the doc's `.devcontainer/web.sh`."""
        web_sh = self.folder / ".devcontainer" / "web.sh"
        web_sh.parent.mkdir(parents=True, exist_ok=True)
        web_sh.write_text(self.workspace.adapt(self.web_sh, 5173) + "\n")
        web_sh.chmod(0o755)

    def start(self, *, created: bool) -> dict[str, Ran]:
        """The container starts (a new boot): its hooks in order; every entry must succeed."""
        self.workspace.next_boot()
        self.check_out()
        hooks = ["postCreateCommand"] if created else []
        ran: dict[str, Ran] = {}
        for hook in [*hooks, "postStartCommand", "postAttachCommand"]:
            for entry, result in self.hook(hook).items():
                assert result.code == 0, f"boot {self.workspace.boot}: {entry}: {result}"
                ran[entry] = result
        return ran


def test_the_dev_container_hooks_survive_restarts_and_a_rebuild(workspace: Workspace) -> None:
    container = DevContainer.from_doc(workspace)
    assert set(container.config["postStartCommand"]) == {"fixtures", "web", "seed"}
    for boot, (created, keep) in enumerate([(True, None), (False, True), (True, False)], 1):
        if keep is not None:
            workspace.stop(keep_container=keep)  # a restart keeps the container; a rebuild not
        ran = container.start(created=created)
        state = workspace.units()
        assert state["boot"] == boot
        assert {u["name"]: u["status"] for u in state["units"]} == {
            "fixtures": "completed",
            "web": "completed",
            "seed": "completed",
        }
        assert moved(state, "seed", "started") >= moved(state, "web", "completed")
        assert re.search(r"^web +completed", ran["postAttachCommand"].output, re.MULTILINE)
        assert len(agents_running(str(workspace.socket))) == 1
        if boot > 1:
            assert "not running git" in ran["fixtures"].output
    assert workspace.count("clones") == 1
    assert workspace.count("npm-ci") == 2, "postCreateCommand runs in a new container only"
    assert workspace.count("seeded") == 3
    assert (container.folder / ".unitsync" / "journal.log").exists()


def test_the_dev_container_state_in_the_container_fails_after_a_rebuild(
    workspace: Workspace,
) -> None:
    """What the doc says happens without `containerEnv`: a rebuild forgets the clone."""
    container = DevContainer.from_doc(workspace)
    del container.config["containerEnv"]
    container.start(created=True)
    workspace.stop(keep_container=False)
    workspace.next_boot()
    container.hook("postCreateCommand")
    ran = container.hook("postStartCommand")
    assert ran["fixtures"].code == 128 and "already exists" in ran["fixtures"].output
    assert ran["seed"].code == 4 and "dependency web failed" in ran["seed"].output
    assert workspace.count("clones") == 1
