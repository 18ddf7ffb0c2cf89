"""Run a page's console blocks in order, as a reader pasting them into one shell would.

A page is README.md or a page of docs/; each is a session of its own: one bash with a fresh
HOME, runtime dir and state dir, so that a page's first block starts what the page needs (its
own agent, or a command that starts one) and no page depends on another.

A block is a fenced `console` block. `$ ` lines are commands; the lines under one
are what it prints (stdout and stderr, as a terminal shows them). An annotation
after two spaces and `#` is not output: `# exit N` states the command's exit
status (0 when absent; on a `$` line for a command run with `&`), anything else
is a note for the reader. A block right after `<!-- not run: why -->` is skipped.

Every block of a page runs in one long-lived bash (so `$?` and `&` behave as they do for the
reader). Output is compared per block as a multiset of normalised lines: times,
durations, pids, Unix times and paths vary from run to run, column widths follow,
and a command started with `&` prints whenever it runs; exit codes are exact.

Run as a script (`python tests/harness/console_session.py docs/restarts.md`), it plays a page
in a fresh session and prints what each command really printed, in the page's own notation
(`# exit N`, the session's folders shown as `/home/me` and `/run/user/1000`): what to paste
when an output changes. Nothing is compared then.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SKIP = re.compile(r"<!--\s*not run:(.*?)-->")
FENCE = "```"
ANNOTATION = re.compile(r"\s{2,}#\s*(.*)$")
EXIT = re.compile(r"exit (\d+)")
END = "@@unitsync-console-end"
"""Printed after each command as `END code` and a newline, and nothing before it: bash's
stdout is line-buffered, so a leading newline would be a write of its own, and a line from
a background process could land between the two and lose its own newline to the marker."""
COMMAND_TIMEOUT = 60.0
"""Generous: a command that hangs fails the session instead of hanging CI."""
RECORDING_WAIT = 10.0
"""Recording: how long a background command's old lines are awaited before the next command
(its new ones may differ; whatever it prints later still shows, under a later command)."""
SHOWN_AS = {"home": "/home/me", "runtime": "/run/user/1000"}
"""How a recording shows the session's folders: as the pages show a reader's."""
BACKGROUND = re.compile(r"&(\s+\w+=\$!)?$")
"""`cmd &`, or `cmd & name=$!` (so that a later line can `kill $name`)."""

NORMALISE = [
    (re.compile(r"(?<![\w./~-])(?:/home/[\w-]+|/root)(?=/)"), "~"),  # a reader's home
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+"), "<log time>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"), "<timestamp>"),
    (re.compile(r"\d\d/[A-Z][a-z]{2}/\d{4}"), "<date>"),  # python -m http.server's log
    (re.compile(r"\bon try \d+"), "on try <n>"),  # a readiness probe's
    (re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d{4}-\d\d-\d\d\b"), "<day>"),  # systemctl's
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<clock>"),
    (re.compile(r"\b\d{10}(\.\d+)?\b"), "<unix time>"),
    (re.compile(r"\b\d+h\d\dm\b|\b\d+m\d\ds\b|\b\d+(\.\d+)?(ms|s)\b"), "<duration>"),
    (re.compile(r"\bpid \d+"), "pid <n>"),
    (re.compile(r"\brun \d+\b"), "run <n>"),  # an owner in `status`: the pid of its `run`
    (re.compile(r"\b[0-9a-f]{8}(?=, state in )|(?<=\bgraph )[0-9a-f]{8}\b"), "<graph>"),
    (re.compile(r"`kill \d+`"), "`kill <n>`"),  # a refusal's way out names the pid to stop
    # systemctl status: a process's pid and command line, a unit's tasks and memory
    (re.compile(r"\b(Main PID|Process): \d+"), r"\1: <n>"),
    (re.compile(r"└─\d+ \S+"), "└─<n> <program>"),
    (re.compile(r"\bTasks: \d+ \(limit: \d+\)"), "Tasks: <n>"),
    (re.compile(r"\bMemory: [\d.]+[BKMGT]\b.*"), "Memory: <size>"),
    (re.compile(r"(?:/[\w.@+-]+)+/agent\.sock"), "<socket>"),
    (re.compile(r"(?:/[\w.@+-]+)+/agent\.log"), "<agent log>"),
    (re.compile(r"(?:/[\w.@+-]+)+/unitsync(?=[ ,)]|$)"), "<state dir>"),
    (re.compile(r"\s+"), " "),
]
"""What varies between runs, made equal; then runs of spaces (column widths follow)."""


@dataclass
class Command:
    line: str
    background: bool
    exit_code: int
    expected: list[str] = field(default_factory=list)

    @property
    def long_lived(self) -> bool:
        """An agent started with `&`: it runs on, across blocks, until the session ends."""
        return self.background and "unitsync agent" in self.line


@dataclass
class Block:
    number: int
    commands: list[Command]
    skip: str | None = None


def blocks(page: str) -> list[Block]:
    """The console blocks of a page, in order."""
    found: list[Block] = []
    lines = page.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"{FENCE}console":
            skip = None
            for previous in reversed(lines[max(0, i - 3) : i]):
                if match := SKIP.search(previous):
                    skip = match.group(1).strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == FENCE)
            found.append(Block(len(found) + 1, _commands(lines[i + 1 : end]), skip))
            i = end
        i += 1
    return found


def _commands(lines: list[str]) -> list[Command]:
    commands: list[Command] = []
    for raw in lines:
        text, note = _annotation(raw)
        code = int(match.group(1)) if note and (match := EXIT.search(note)) else None
        if raw.startswith("$ "):
            line = text[2:].strip()
            background = BACKGROUND.search(line) is not None
            commands.append(Command(line, background, code or 0))
        elif commands and text.strip():
            commands[-1].expected.append(text)
            if code is not None:
                commands[-1].exit_code = code
    return commands


def _annotation(line: str) -> tuple[str, str | None]:
    match = ANNOTATION.search(line)
    if match is None or line.lstrip().startswith("#"):
        return line, None
    return line[: match.start()], match.group(1)


def normalise(line: str, home: str | None = None) -> str:
    """`line` with what varies between runs made equal; `home`, the session's HOME, reads
    as `~`, as a reader's own home does."""
    if home:
        line = line.replace(home, "~")
    for pattern, replacement in NORMALISE:
        line = pattern.sub(replacement, line)
    return line.strip()


class Shell:
    """One bash, fed a page's commands one at a time; stdout and stderr merged."""

    def __init__(self, cwd: Path, env: dict[str, str], recording: bool = False) -> None:
        self.recording = recording
        """Recording a page: a background command's lines that never come are no error."""
        self.home = env["HOME"]
        self.proc = subprocess.Popen(
            ["bash"],  # reading commands from a pipe, it reads no startup file
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
        self.buffer = b""
        self.jobs: list[str] = []
        """Background commands started in the current block (not the agent)."""

    def run(self, command: Command, timeout: float) -> tuple[int, str]:
        """Run one command; its exit code (a background one's: 0) and what it printed.

        A command run with `&` goes on in the background; like a reader, the shell waits
        until the lines shown right under it have appeared before the next command.
        """
        if command.background and not command.long_lived:
            script = f"{command.line}\n__us_jobs+=($!)\n"
        else:
            script = f"{command.line}\n"
        self._send(script + f'__us_rc=$?; printf "{END} %d\\n" $__us_rc; (exit $__us_rc)\n')
        code, output = self._until_end(timeout)
        if command.background:
            wait = min(timeout, RECORDING_WAIT) if self.recording else timeout
            output += self._until_seen(command.expected, output, wait)
        return code, output

    def _until_seen(self, lines: list[str], seen: str, timeout: float) -> str:
        """Read until every one of `lines` has been printed; what arrived meanwhile."""
        assert self.proc.stdout is not None
        wanted = Counter(normalise(line) for line in lines if line.strip())
        deadline = time.monotonic() + timeout
        while wanted - Counter(
            normalise(line, self.home) for line in (seen + self._text()).splitlines()
        ):
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                self.buffer += os.read(self.proc.stdout.fileno(), 65536)
            elif time.monotonic() > deadline:
                if self.recording:
                    break
                raise TimeoutError(f"{lines} never appeared; got {seen + self._text()!r}")
        arrived, self.buffer = self._text(), b""
        return arrived

    def _text(self) -> str:
        return self.buffer.decode(errors="replace")

    def finish_jobs(self, timeout: float) -> tuple[list[int], str]:
        """Wait for the block's background commands; their exit codes and their output."""
        self._send(
            'for __us_job in "${__us_jobs[@]}"; do wait $__us_job; __us_codes+=" $?"; done\n'
            f'printf "{END} 0 %s\\n" "$__us_codes"; __us_jobs=(); __us_codes=""\n'
        )
        _code, output, codes = self._until_end(timeout, with_codes=True)  # type: ignore[misc]
        return codes, output

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def _until_end(self, timeout: float, with_codes: bool = False):  # type: ignore[no-untyped-def]
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        marker = re.compile(rf"{END} (\d+)([ \d]*)\n".encode())
        while not (match := marker.search(self.buffer)):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                raise TimeoutError(f"no end of command within {timeout}s: {self.buffer!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"the shell ended: {self.buffer!r}")
            self.buffer += chunk
        output = self.buffer[: match.start()].decode(errors="replace")
        if output and not output.endswith("\n"):
            output += "\n"  # a command's last line without a newline: still a line of its own
        self.buffer = self.buffer[match.end() :]
        code = int(match.group(1))
        if with_codes:
            return code, output, [int(c) for c in match.group(2).split()]
        return code, output

    def close(self) -> str:
        """End the shell (and its agent); whatever it printed last."""
        self._send("kill $(jobs -p) 2>/dev/null; wait; exit 0\n")
        out, _ = self.proc.communicate(timeout=30)
        return (self.buffer + out).decode(errors="replace")


# --- a page, played in a session of its own ---------------------------------------------------


NOT_A_READERS = {"PYTHONUNBUFFERED"}
"""Set on some machines, not in a reader's shell: a Python `print("a", b)` then writes each
piece on its own, and a line of a command run with `&` lands between them (`GET / ->127.0.0.1
- - ...`). Pages show what a reader sees, so their commands buffer as a reader's do."""


def fresh_environment(root: Path) -> tuple[Path, dict[str, str]]:
    """A new reader's account under `root`: its HOME (the shell's folder) and environment,
    with a runtime dir and state home of its own, so nothing of another session is found."""
    home, runtime = root / "home", root / "runtime"
    for folder in (home, runtime):
        folder.mkdir(mode=0o700)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    env.update(
        {k: v for k, v in os.environ.items() if k.startswith("PYTHON") and k not in NOT_A_READERS}
    )
    return home, env


def runnable(page: Path) -> list[Block]:
    """The blocks of `page` that run (not marked `not run`), in order."""
    return [block for block in blocks(page.read_text()) if block.skip is None]


def play(
    page: Path,
    root: Path,
    timeout: float = COMMAND_TIMEOUT,
    account: tuple[Path, dict[str, str]] | None = None,
) -> int:
    """Run every runnable block of `page`, in order, in a fresh session under `root` (or in
    `account`, a home and environment made ready for the page); how many blocks ran. A block
    whose exit codes or lines differ from the page's raises AssertionError naming the page,
    the block and the difference."""
    home, env = account or fresh_environment(root)
    shell = Shell(home, env)
    played = 0
    try:
        for block in runnable(page):
            _check(page, block, shell, timeout)
            played += 1
    finally:
        shell.close()
    return played


def _check(page: Path, block: Block, shell: Shell, timeout: float) -> None:
    where = f"{page.name}, block {block.number} (`{block.commands[0].line}`)"
    printed: list[str] = []
    for command in block.commands:
        code, output = shell.run(command, timeout)
        printed += output.splitlines()
        if not command.background:
            assert code == command.exit_code, (
                f"{where}: `{command.line}` exited {code}, "
                f"the page says {command.exit_code}:\n{output}"
            )
    codes, output = shell.finish_jobs(timeout)
    printed += output.splitlines()
    background = [c for c in block.commands if c.background and not c.long_lived]
    assert codes == [c.exit_code for c in background], (
        f"{where}: its background commands exited {codes}, the page says "
        f"{[c.exit_code for c in background]}:\n{output}"
    )
    expected = Counter(normalise(line) for c in block.commands for line in c.expected)
    actual = Counter(normalise(line, shell.home) for line in printed if line.strip())
    assert actual == expected, (
        f"{where} printed other lines than the page shows:\n"
        f"  only in the page: {sorted((expected - actual).elements())}\n"
        f"  only printed: {sorted((actual - expected).elements())}"
    )


def record(
    page: Path,
    root: Path,
    timeout: float = COMMAND_TIMEOUT,
    account: tuple[Path, dict[str, str]] | None = None,
) -> str:
    """Play `page` as `play` does, comparing nothing; each runnable block as it really
    printed, in the page's notation."""
    home, env = account or fresh_environment(root)
    shell = Shell(home, env, recording=True)
    shown: list[str] = []
    try:
        for block in runnable(page):
            shown.append(f"--- block {block.number}")
            for command in block.commands:
                code, output = shell.run(command, timeout)
                note = _exit_note(code)
                if command.background:  # its code comes when the block's jobs are waited for
                    note = "  # exit ?" if not command.long_lived else ""
                lines = output.splitlines()
                if not command.background and lines and note:
                    shown += [f"$ {command.line}", *lines[:-1], lines[-1] + note]
                else:
                    shown += [f"$ {command.line}{note}", *lines]
            codes, output = shell.finish_jobs(timeout)
            shown += output.splitlines()
            if codes:
                shown.append(f"(background commands of the block exited {codes})")
    finally:
        shown.append(shell.close())
    text = "\n".join(shown)
    for name, folder in (("home", env["HOME"]), ("runtime", env["XDG_RUNTIME_DIR"])):
        text = text.replace(folder, SHOWN_AS[name])
    return text


def _exit_note(code: int) -> str:
    return f"  # exit {code}" if code else ""


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for conftest
    from conftest import agents_running, stop_agents

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("page", type=Path, help="README.md or a page of docs/")
    page = parser.parse_args().page
    root = Path(tempfile.mkdtemp(prefix="us-"))  # short: Unix socket paths are limited
    try:
        print(record(page.resolve(), root))
    finally:
        stop_agents(agents_running(str(root)))  # any a command started by itself
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
