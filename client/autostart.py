"""Start an agent for a client that found none (SPEC §7): exactly one, however many ask at once.

Who asks is `Client._connect`'s rule: a first call that finds no agent, or a client that
lost its agent (to a crash at once; to a clean stop after a grace for its supervisor).

    ensure_agent(socket, patience)
    ├── the socket's folder: created 0700 if missing, and trusted as for connecting
    ├── `<socket>.autostart.lock`, an flock taken with a bounded wait: one starter at a time
    │   ├── an agent answers now: another client started it; nothing to do
    │   ├── a live agent holds the socket's lock (it is re-creating its removed socket):
    │   │   start nothing, wait for it below
    │   ├── we had to wait, and still none answers: that client's agent did not come up;
    │   │   if a live agent holds the state dir, wait for it below; else say so with the
    │   │   log, rather than start a second one to fail the same way
    │   └── spawn `python -m unitsync.cli agent --socket S --state-dir D`: its own session,
    │       stdin /dev/null, stdout and stderr appended to `agent.log` in the state dir;
    │       then wait, bounded, for its READY=1 on a private NOTIFY_SOCKET, or its exit;
    │       if it exited because a live agent holds the socket or the state dir, wait below
    └── (the lock released) wait, within `patience`, for that live agent to answer at the
        socket: one that serves the state dir at ANOTHER socket is named at once instead,
        and one that goes away meanwhile is replaced by starting again

Why wait for a live agent rather than fail: an agent whose socket (or its folder) was
removed re-creates it within seconds, and one stopping in order still holds the state dir
for a moment; a command that came in between should be served by it, not exit 3 (issue
19, sequence 2). Its lock on the socket is an abstract socket that tells its pid to anyone
who connects (`wire.host.peer.lock_holder`); the state dir's lock file records the holder's
pid and the socket it serves, and /proc/locks says whether that lock is held.

Why READY=1 rather than watching the socket: the agent binds its socket before it loads
its journal (clients queue in the backlog meanwhile), so a socket file says nothing about
readiness, and polling for it would add its interval to every first call. The agent's
exit is seen at once too (a pidfd), so an agent that cannot start fails the call with its
own message, not with a timeout. Datagrams are trusted only from the agent's pid
(SCM_CREDENTIALS): an abstract address can be listed by anyone in the network namespace.

The state dir is `UNITSYNC_STATE_DIR`, else the user's state dir: what the agent itself
uses (`wire.host.paths.default_state_dir`). Autostart is on unless `UNITSYNC_AUTOSTART=0`.

Resource rules: the lock file and the notify socket live only as long as one start; the
lock file is removed while still held (`wire.host.lockfile`, as the agent's own locks are).
The agent is this process's child until this process exits (then init's, or a subreaper's).
A thread of ours waits for it (`_reap_when_it_exits`): an agent stopped while this process
lives on (a long-lived `run`, a service's) is reaped at once, never left a zombie
(`<defunct>`) child of a command.

Only imported when a client finds no agent: the usual path of the CLI never loads it.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from unitsync.wire.errors import AgentStartFailed
from unitsync.wire.host import notify
from unitsync.wire.host.backoff import Backoff
from unitsync.wire.host.exits import watching_exit
from unitsync.wire.host.lockfile import Busy, LockRecord, flock_held, held, holder_of
from unitsync.wire.host.paths import STATE_DIR_ENV, default_state_dir
from unitsync.wire.host.peer import Peer, listener_at, lock_holder, socket_lock_name
from unitsync.wire.session import check_trust

READY_TIMEOUT = 10.0
"""How long a new agent may take to serve: it loads 10,000 units in well under a second and
replays a million-record journal in about two (SPEC §6); ten seconds means it is stuck."""
LOCK_TIMEOUT = READY_TIMEOUT + 5.0
"""How long to wait while another client starts the agent: as long as it may wait, and more."""
EXIT_CHECK = 0.1
"""Without a pidfd (Linux before 5.3) the agent's exit is checked this often instead."""
LOG_NAME = "agent.log"
LOG_LIMIT = 1 << 20
"""A log past 1 MiB becomes `agent.log.1` when the next agent starts: kept, but bounded."""
LOG_LINES_SHOWN = 6
"""The last lines of a failed agent's log quoted in the error: its reason is the last one."""
TAIL_BYTES = 8192
"""How much of the log's end is read for those lines."""
LIVE_AGENT_WAIT = 10.0
"""How long a command without a timeout of its own waits for a live agent that holds the
socket or the state dir to answer at the socket: it re-creates a removed socket within
2 s (the agent's RECHECK_INTERVAL), so ten leaves room for a loaded machine."""
ANSWER_DELAYS = (0.02, 0.25)
"""First and longest pause between looks at the socket while a live agent re-creates it:
nothing signals a file's return (inotify would need ctypes); the wait is short and rare."""
STATE_LOCK = "lock"
"""The state dir's lock file (`agent.store.journal.writer.LOCK_NAME`)."""
START_NOTE = "unitsync.autostart: "
"""Begins the line a client writes to the log before each agent it starts."""
COMMAND_SHOWN = 200
"""Characters of the starting command the log line keeps: enough to tell scripts apart."""
INHERITED = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
"""Socket activation meant for us, if any, is not for the agent."""

Outcome = Literal["ready", "exited", "late"]


@dataclass(frozen=True)
class Autostarted:
    """An agent this client started: what a command line tells its user."""

    pid: int
    socket: Path
    log: Path
    because: str = ""
    """Why, when a client that had an agent started it ("the agent crashed", ...)."""


def ensure_agent(path: Path, patience: float = LIVE_AGENT_WAIT) -> Autostarted | None:
    """Make an agent listen at `path`: the one we started, or None if another did.

    Raises `AgentStartFailed` (with the agent's own last words) if none comes up, and
    `AgentUntrusted` if the socket's folder is not the user's own. A live agent that holds
    the socket or the state dir is waited for, up to `patience` seconds.
    """
    path = path.absolute()
    deadline = time.monotonic() + patience
    while True:
        _private_folder(path)
        state_dir = default_state_dir().absolute()
        with _start_lock(path.with_name(path.name + ".autostart.lock")) as waited:
            if not _nobody_listens(path):
                return None
            holder = _socket_holder(path)
            if holder is None:
                log = AgentLog(state_dir / LOG_NAME)
                if waited:  # another client's agent did not come up: was a live one in the way?
                    holder = _state_dir_holder(path, state_dir)
                    if holder is None:
                        raise AgentStartFailed(
                            f"another client started an agent for {path}, and it did not "
                            f"come up{log.last_words()}"
                        )
                else:
                    held_before = _state_dir_holder(path, state_dir) is not None
                    try:
                        return _start(path, log)
                    except AgentStartFailed:
                        holder = _socket_holder(path) or _state_dir_holder(path, state_dir)
                        if holder is None and not held_before:
                            raise
        # A live agent holds the socket or the state dir: wait for it to answer. If it has
        # gone (an agent that was stopping in order), start one again.
        if holder is not None and _await_answer(path, holder, deadline, patience):
            return None
        if time.monotonic() > deadline:
            raise AgentStartFailed(
                f"cannot start an agent for {path}: the agents holding its socket or the "
                f"state dir {state_dir} kept changing for {patience:g}s"
            )


@dataclass(frozen=True)
class _Holder:
    """A live agent that holds the socket or the state dir our agent needed."""

    pid: int
    what: str
    """What it holds: "the socket S", "the state dir D"."""
    lock: Path | None = None
    """The state dir's lock file it holds; None: it holds the socket's lock."""
    socket: Path | None = None

    def holds(self) -> bool:
        """Does it still hold what it held? (Not once it has stopped: start again then.)"""
        if self.lock is not None:
            return flock_held(self.lock, self.pid)
        assert self.socket is not None
        peer = lock_holder(socket_lock_name(self.socket))
        return peer is not None and peer.pid in (0, self.pid)


def _socket_holder(path: Path) -> _Holder | None:
    """The live agent holding the socket's lock (SetupError-free: never stale)."""
    peer = lock_holder(socket_lock_name(path))
    if peer is None:
        return None
    me = os.getuid()
    if peer.pid and peer.uid != me:
        raise AgentStartFailed(
            f"cannot start an agent for {path}: the lock of that socket (an abstract Unix "
            f"socket) is held by uid {peer.uid} (pid {peer.pid}), not by you (uid {me}); it "
            "cannot be your agent: point --socket / UNITSYNC_SOCKET at another path"
        )
    return _Holder(peer.pid, f"the socket {path}", socket=path)


def _state_dir_holder(path: Path, state_dir: Path) -> _Holder | None:
    """The live agent holding the state dir's lock, from the pid and socket its lock file
    records (and /proc/locks, so a crashed agent's file whose pid was reused misleads no
    one); AgentStartFailed at once if it serves another socket than `path`."""
    lock = state_dir / STATE_LOCK
    record = holder_of(lock)
    if record is None:
        return None
    if record.serving and record.serving != str(path):
        raise AgentStartFailed(
            f"cannot start an agent for {path}: the state dir {state_dir} is in use by the "
            f"agent (pid {record.pid}) serving the socket {record.serving}; point --socket / "
            f"UNITSYNC_SOCKET at {record.serving} to use it, or {STATE_DIR_ENV} at another "
            "state dir"
        )
    return _Holder(record.pid, f"the state dir {state_dir}", lock=lock)


def _await_answer(path: Path, holder: _Holder, deadline: float, patience: float) -> bool:
    """Wait until something answers at `path` (True) or the holder is gone (False: start
    again); AgentStartFailed past `deadline`."""
    backoff = Backoff(*ANSWER_DELAYS)
    while True:
        if not _nobody_listens(path):
            return True
        if not holder.holds():
            return False
        delay = backoff.next()
        if time.monotonic() + delay > deadline:
            raise AgentStartFailed(
                f"the agent (pid {holder.pid}) that holds {holder.what} did not answer at "
                f"{path} within {patience:g}s; if it is stuck, stop it (`kill {holder.pid}`)"
            )
        time.sleep(delay)


def _start(path: Path, log: AgentLog) -> Autostarted | None:
    state_dir = log.path.parent
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, since = log.open_for(path)
    except OSError as exc:
        raise AgentStartFailed(
            f"cannot start an agent for {path}: cannot write its log {log.path}: "
            f"{exc.strerror or exc}; set {STATE_DIR_ENV} to a folder of your own"
        ) from None
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, fd)
        readiness = stack.enter_context(contextlib.closing(_Readiness()))
        try:
            agent = subprocess.Popen(
                [*_agent_command(), "--socket", str(path), "--state-dir", str(state_dir)],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,  # no terminal's Ctrl-C or hang-up reaches it
                cwd="/",  # it must not keep the caller's folder busy
                env=_agent_environ(readiness.address),
            )
        except OSError as exc:
            raise AgentStartFailed(f"cannot start an agent for {path}: {exc}") from None
        outcome = readiness.wait(agent, READY_TIMEOUT)
    if outcome != "exited":  # it runs on: reaped when it ends, however long we live
        _reap_when_it_exits(agent)
    if outcome == "ready":
        return Autostarted(agent.pid, path, log.path)
    if outcome == "exited":
        if not _nobody_listens(path):  # an agent started by other means won the race
            return None
        raise AgentStartFailed(
            f"the agent started for {path} exited with status {agent.returncode} before it "
            f"was ready{log.last_words(since)}\n(it was started as `unitsync agent --socket "
            f"{path} --state-dir {state_dir}`: {STATE_DIR_ENV} and --socket / UNITSYNC_SOCKET "
            "choose others; UNITSYNC_AUTOSTART=0 turns autostart off)"
        )
    raise AgentStartFailed(
        f"the agent started for {path} (pid {agent.pid}) is not ready after "
        f"{READY_TIMEOUT:.0f}s; it was left running (it may still be loading its journal), "
        f"and the next command will use it once it serves{log.last_words(since)}"
    )


def _reap_when_it_exits(agent: subprocess.Popen[bytes]) -> None:
    """A daemon thread that waits for the agent: its exit status is collected the moment it
    stops, so it never lingers as a zombie child of this process (it cannot be made
    nobody's child at once without losing its exit status, which a failed start reports);
    if this process ends first, the agent is reparented and reaped by init as any orphan."""
    threading.Thread(target=agent.wait, name=f"reap agent {agent.pid}", daemon=True).start()


def _private_folder(path: Path) -> None:
    """Create the socket's folder 0700; refuse one a client would not trust (SPEC §5)."""
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(folder)
    except OSError as exc:
        raise AgentStartFailed(
            f"cannot start an agent: cannot create the socket's folder {folder}: "
            f"{exc.strerror or exc}; point --socket / UNITSYNC_SOCKET at a folder of your own"
        ) from None
    me = os.getuid()
    # The process that will listen there is the agent we start: it runs as us.
    check_trust(path, info, Peer(os.getpid(), me, os.getgid()), me)


@contextlib.contextmanager
def _start_lock(path: Path) -> Iterator[bool]:
    """Hold the lock file `path` (`wire.host.lockfile`); yields whether another client held
    it first. One that holds it past LOCK_TIMEOUT is named, as stuck."""
    taking = contextlib.ExitStack()
    try:
        lock = taking.enter_context(held(path, LockRecord(os.getpid()), patience=LOCK_TIMEOUT))
    except Busy as busy:
        holder = busy.record.pid if busy.record else "unknown"
        raise AgentStartFailed(
            f"another client (pid {holder}) has been starting an agent for over "
            f"{LOCK_TIMEOUT:.0f}s (it holds {path}); if it is stuck, stop it"
        ) from None
    except OSError as exc:
        raise AgentStartFailed(
            f"cannot start an agent: cannot open the lock file {path}: {exc.strerror}"
        ) from None
    with taking:
        yield lock.waited


def _nobody_listens(path: Path) -> bool:
    """No file, or a dead agent's: what makes a client start one. (Someone too busy to
    take the probe is someone: the client's connect says what.)"""
    return listener_at(str(path)) is None


def _agent_command() -> list[str]:
    if not sys.executable:
        raise AgentStartFailed(
            "cannot start an agent: this Python does not know its own executable; "
            "start one with `unitsync agent`"
        )
    return [sys.executable, "-m", "unitsync.cli", "agent"]


def _agent_environ(notify_address: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in INHERITED}
    environ[notify.ENV] = notify_address
    return environ


class AgentLog:
    """`agent.log` in the state dir: every agent a client starts appends to it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def open_for(self, socket_path: Path) -> tuple[int, int]:
        """The log opened for the agent's output, and where that output will begin."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size > LOG_LIMIT:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        now = time.time()
        clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        who = f"pid {os.getpid()} found no agent at {socket_path}; starting one{_for_whom()}"
        os.write(fd, f"{clock},{int(now % 1 * 1000):03d} INFO {START_NOTE}{who}\n".encode())
        return fd, os.fstat(fd).st_size

    def last_words(self, since: int | None = None) -> str:
        """The last lines the agent wrote after byte `since` (default: after the latest
        start), quoted for an error message."""
        try:
            with open(self.path, "rb") as file:
                end = file.seek(0, os.SEEK_END)
                file.seek(max(since or 0, end - TAIL_BYTES))
                lines = file.read().decode(errors="replace").splitlines()
        except OSError:
            return f"; its log {self.path} cannot be read"
        if since is None:
            starts = [i for i, line in enumerate(lines) if START_NOTE in line]
            lines = lines[starts[-1] + 1 :] if starts else lines
        lines = [line for line in lines if line.strip()][-LOG_LINES_SHOWN:]
        if not lines:
            return f"; it wrote nothing to its log {self.path}"
        quoted = "\n".join(f"  {line}" for line in lines)
        return f"; its log {self.path} ends with:\n{quoted}"


def _for_whom() -> str:
    """The command that starts the agent, for the log: its stderr (where the one-line notice
    goes) may be any script's redirect, so the log says whose it was."""
    if not sys.argv or not sys.argv[0]:
        return ""
    import shlex

    program = Path(sys.argv[0]).name
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if program == "__main__.py" and spec is not None:  # `python -m unitsync.cli ...`
        program = f"python -m {spec.name.removesuffix('.__main__')}"
    command = " ".join([program, shlex.join(sys.argv[1:])]).strip()
    return f" (for `{command[:COMMAND_SHOWN]}`)"


class _Readiness:
    """A private NOTIFY_SOCKET in the abstract namespace; READY=1 from the agent ends the wait."""

    def __init__(self) -> None:
        self.sock, self.address = notify.receiver("autostart")

    def wait(self, agent: subprocess.Popen[bytes], timeout: float) -> Outcome:
        """How the agent's start ended: READY=1 from it, its exit, or `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with watching_exit(agent.pid) as exit_fd:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            if exit_fd is not None:
                poller.register(exit_fd, select.POLLIN)
            while (remaining := deadline - time.monotonic()) > 0:
                if exit_fd is None:
                    remaining = min(remaining, EXIT_CHECK)
                poller.poll(remaining * 1000)
                if self._ready_from(agent.pid):
                    return "ready"
                if agent.poll() is not None:
                    return "exited"
        return "late"

    def close(self) -> None:
        self.sock.close()

    def _ready_from(self, pid: int) -> bool:
        """Read every queued datagram; whether one said READY=1 and came from `pid` (only
        the agent we started may say it is ready)."""
        ready = False
        for datagram in notify.received(self.sock):
            if datagram.sender == pid and datagram.fields.get("READY") == "1":
                ready = True
        return ready
