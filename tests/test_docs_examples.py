"""The workspace examples of docs/coder.md and docs/devcontainer.md, run as written.

Each doc's steps are read from its text (the blocks after a `<!-- docs-example -->`
comment) and run as their platform runs them, against a real agent that the scripts start
themselves (`UNITSYNC_AUTOSTART=1`, a private state dir): the install lines, with a copy of
this checkout, into a venv of their own; Coder's `coder_script`s, in the environment the doc
gives the `coder_agent`, all at once, each `sh -c` in a session of its own with its output on
pipes (Coder waits for those pipes to close); a dev container's hooks one after the other,
each entry `/bin/sh -c` on a pseudo-terminal of its own that hangs up when its shell exits (as
the dev containers CLI does), `postStartCommand`'s entries at once. Then the workspace
restarts: every process carrying the workspace's mark in its environment is SIGKILLed (the
agent included), the container's folders go or stay as the platform keeps them, and the same
scripts run again with a new `UNITSYNC_BOOT_ID`. Every script must exit 0 every time, the
one-time clone must happen once, and the `status` tables the docs show recorded are what
`status` prints. A dev container's files are checked out as new files are (`web.sh` not
executable) and made ready by the doc's own steps (its `chmod`).

Stand-ins replace what is not here (`git clone`, `make`, `npm`, `claude`); the dev server is a
real `python3 -m http.server` and the readiness probes a real `curl`. The only edits to the
docs' text: the server's port (a free one), `/tmp/` (the container's own, also its `TMPDIR`),
and for the install lines, their folders (`/opt/`, `/usr/local/bin`). A dev container's socket
is in its `/tmp` (`UNITSYNC_SOCKET`, set by this test: the doc leaves it to the default).
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
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import agents_running, run_cli, stop_agents
from harness.console_session import blocks, normalise

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


def example(doc: str, language: str, holding: str) -> str:
    """The one block of `language` the doc marks as run by this test that holds `holding`."""
    [text] = [t for lang, t in examples(doc) if lang == language and holding in t]
    return text


def coder_scripts() -> dict[str, str]:
    """The `script` of each `coder_script` resource, as Terraform's `<<-EOT` leaves it."""
    hcl = example("coder.md", "hcl", 'resource "coder_script"')
    return {name: textwrap.dedent(body) for name, body in CODER_SCRIPT.findall(hcl)}


def coder_agent_env() -> dict[str, str]:
    """The `env` the doc gives the `coder_agent`: what every script and terminal inherits."""
    hcl = example("coder.md", "hcl", 'resource "coder_agent"')
    return dict(re.findall(r'^\s*(\w+)\s*=\s*"([^"]*)"', hcl, re.MULTILINE))


def recorded(doc: str, command: str) -> list[list[str]]:
    """What the doc shows `command` printing, in each of its console blocks (run or not)."""
    return [
        c.expected
        for block in blocks((DOCS / doc).read_text())
        for c in block.commands
        if c.line == command
    ]


def recorded_text(doc: str, beginning: str) -> str:
    """The one `text` block of the doc that begins with `beginning`: output it shows."""
    found = re.findall(r"```text\n(.*?)\n```", (DOCS / doc).read_text(), re.DOTALL)
    [text] = [block for block in found if block.startswith(beginning)]
    return text


def same_lines(printed: str, shown: list[str] | str) -> bool:
    """Whether `printed` is what the doc shows, as the console sessions compare it."""
    if isinstance(shown, str):
        shown = shown.splitlines()
    as_printed = Counter(normalise(line) for line in printed.splitlines() if line.strip())
    return as_printed == Counter(normalise(line) for line in shown if line.strip())


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
    socket: Path = field(init=False)
    """Where the workspace's agent listens: set from what the doc gives the scripts."""

    def __post_init__(self) -> None:
        self.socket = self.container / "tmp" / "unitsync" / "agent.sock"
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
            "TMPDIR": str(self.container / "tmp"),
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


def coder_environ(workspace: Workspace) -> dict[str, str]:
    """What a Coder workspace's processes inherit: the `coder_agent`'s `env` from the doc (it
    pins the socket, which the workspace's agent then serves) and a home on the home volume."""
    pinned = {name: workspace.adapt(value, 3000) for name, value in coder_agent_env().items()}
    workspace.socket = Path(pinned["UNITSYNC_SOCKET"])
    home = workspace.root / "home"  # the home volume: it outlives the container
    return workspace.environ(home, **pinned)


def run_coder_scripts(workspace: Workspace, scripts: dict[str, str]) -> dict[str, Ran]:
    """Every script at once, as Coder's agent runs them: `sh -c` in a session of its own,
    output on pipes; a script is over when it has exited and its pipes are closed."""
    environ = coder_environ(workspace)
    started = {
        name: subprocess.Popen(
            ["sh", "-c", workspace.adapt(script, 3000)],
            cwd=environ["HOME"],
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
        scripts["git_clone"] = example("coder.md", "sh", "start git --once")

    first_table, second_table = recorded("coder.md", "unitsync sync status")
    ran, state = coder_start(workspace, scripts)
    assert_shown(status_table(workspace), first_table)
    assert "3 passed" in ran["tests"].output
    assert moved(state, "dev", "started") >= moved(state, "git", "completed")
    assert moved(state, "claude", "started") >= moved(state, "git", "completed")
    assert moved(state, "tests", "started") >= moved(state, "dev", "completed")

    workspace.stop(keep_container=False)  # Coder removes the container; the home volume stays
    ran, state = coder_start(workspace, scripts)
    assert_shown(status_table(workspace), second_table)
    assert "one-time unit" in ran["git_clone"].output
    assert "3 passed" in ran["tests"].output
    assert moved(state, "tests", "started") >= moved(state, "dev", "completed")
    git = next(u for u in state["units"] if u["name"] == "git")
    assert git["status"] == "completed" and git["once"]
    assert all(entry["boot"] == 1 for entry in git["history"]), "git did not run in boot 2"
    assert workspace.count("clones") == 1
    assert workspace.count("claude") == workspace.count("tests") == 2


def test_a_terminal_reaches_the_scripts_agent_through_the_pinned_socket(
    workspace: Workspace,
) -> None:
    """A terminal whose login session sets XDG_RUNTIME_DIR: with the doc's `coder_agent` env
    it talks to the scripts' agent; without it, it is refused as the doc shows."""
    runtime = workspace.root / "terminal-runtime"
    runtime.mkdir(mode=0o700)
    scripts = coder_environ(workspace)
    for pinned in (True, False):
        if not pinned:
            stop_agents(agents_running(str(workspace.root)))
            del scripts["UNITSYNC_SOCKET"]  # each process takes its default
        typed = subprocess.run(["unitsync", "sync", "want", "claude", "git"], env=scripts)
        assert typed.returncode == 0
        terminal = {**scripts, "XDG_RUNTIME_DIR": str(runtime)}
        shown = subprocess.run(
            ["unitsync", "sync", "status"], env=terminal, capture_output=True, text=True
        )
        if pinned:
            assert shown.returncode == 0, shown.stderr
            assert re.search(r"^claude +pending", shown.stdout, re.MULTILINE)
        else:
            assert shown.returncode == 3
            assert_shown(shown.stderr, example("coder.md", "text", "cannot start an agent"))
    assert len(agents_running(str(workspace.root))) == 1, "the terminal started no agent"


def status_table(workspace: Workspace) -> str:
    printed = run_cli("sync", "status", socket=workspace.socket)
    assert printed.code == 0, printed.err
    return printed.out


def assert_shown(printed: str, shown: list[str] | str) -> None:
    """`printed` is what the doc shows (its lines, normalised as the console sessions do)."""
    assert same_lines(printed, shown), f"the doc shows:\n{shown}\nprinted:\n{printed}"


# --- installing -----------------------------------------------------------------------------

NOT_SOURCE = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__")
"""What a copy of the checkout leaves out: venvs, git's data, build output."""


def test_the_guides_ask_for_the_python_the_package_needs() -> None:
    project = tomllib.loads((DOCS.parent / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    for doc in ("coder.md", "devcontainer.md"):
        assert "Python 3.11 or later" in (DOCS / doc).read_text(), doc


def test_the_install_lines_install_a_unitsync_that_works_alone(short_tmp: Path) -> None:
    """Both guides' install lines, run as written with a copy of this checkout as UNITSYNC
    (the index for the dependencies as this machine's pip is set up); the copy is removed
    before the installed command runs, so nothing is found in a source tree."""
    lines = example("coder.md", "sh", "python3 -m venv")
    assert example("devcontainer.md", "sh", "python3 -m venv") == lines
    checkout, bin_folder, opt = short_tmp / "unitsync", short_tmp / "bin", short_tmp / "opt"
    shutil.copytree(DOCS.parent, checkout, ignore=NOT_SOURCE)
    for folder in (bin_folder, opt):
        folder.mkdir()
    here = lines.replace("/opt/", f"{opt}/").replace("/usr/local/bin", str(bin_folder))
    installed = subprocess.run(
        ["sh", "-ec", here],
        env={**os.environ, "UNITSYNC": str(checkout)},
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard: the dependencies come from the package index
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    shutil.rmtree(checkout)
    environ = {
        "PATH": f"{bin_folder}:/usr/bin:/bin",
        "HOME": str(short_tmp / "home"),
        "UNITSYNC_SOCKET": str(short_tmp / "run" / "agent.sock"),
        "LANG": "C.UTF-8",
    }
    try:
        ping = subprocess.run(
            ["unitsync", "sync", "ping"], env=environ, capture_output=True, text=True
        )
        assert ping.returncode == 0, ping.stderr
        assert "started an agent" in ping.stderr  # the installed agent, started by itself
        assert ping.stdout.startswith("unitsync agent ")
    finally:
        stop_agents(agents_running(str(short_tmp)))


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
        assert time.monotonic() < deadline, (
            f"hook entries still running: {list(running)}; those that ended: {ran}"
        )
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
        config = example("devcontainer.md", "jsonc", "postStartCommand")
        web_sh = example("devcontainer.md", "sh", "#!/bin/sh")
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
        extra["UNITSYNC_SOCKET"] = str(self.workspace.socket)
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
        """The workspace folder holds the project: here, the doc's `.devcontainer/web.sh`,
        written as any new file is (not executable), then made ready by the steps the doc
        gives for it (its `chmod`), run as written in the folder, as its reader does once."""
        web_sh = self.folder / ".devcontainer" / "web.sh"
        if web_sh.exists():
            return
        web_sh.parent.mkdir(parents=True)
        web_sh.write_text(self.workspace.adapt(self.web_sh, 5173) + "\n")
        web_sh.chmod(0o644)
        steps = example("devcontainer.md", "sh", "chmod")
        subprocess.run(["sh", "-ec", steps], cwd=self.folder, env=self.environ(), check=True)

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
    tables = {boot: recorded_text("devcontainer.md", f"boot {boot} since") for boot in (1, 2)}
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
        if boot in tables:  # the tables the doc shows, recorded in a run of this test
            assert_shown(ran["postAttachCommand"].output, tables[boot])
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
