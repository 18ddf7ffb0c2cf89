"""The host's mechanisms (`wire/host/`), with real sockets, files and processes: sd_notify
both ends, /proc read once, pidfd exit waits, who listens at an address, lock files.

Their users' policies (who may notify `run`, what an autostarting client waits for, what
the agent does with a busy path) are tested where users see them: test_services.py,
test_autostart.py, test_activation.py, test_socket_removed.py.
"""

from __future__ import annotations

import array
import logging
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from unitsync.wire.host import notify, private, processes
from unitsync.wire.host.exits import exit_descriptor, watching_exit
from unitsync.wire.host.lockfile import Busy, LockRecord, held, holder_of, read_lock_record
from unitsync.wire.host.peer import BUSY, listener_at

LIMIT = 60
"""A safety net against a hang, never a measure of speed."""
WAITS_FOR_STDIN = [sys.executable, "-c", "import sys; sys.stdin.read()"]
"""A process that runs until its stdin is closed."""


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    sock, address = notify.receiver("test")
    yield sock, address
    sock.close()


def readable(sock: socket.socket) -> None:
    """Wait (bounded by LIMIT) until `sock` has a datagram queued."""
    assert select.select([sock], [], [], LIMIT)[0], "no datagram came"


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --- sd_notify ---------------------------------------------------------------------------------


def test_what_a_notifier_sends_is_read_with_its_sender_and_fields(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, address = receiver
    assert address.startswith("@unitsync/test/")  # abstract: no file to leave behind
    environ = {notify.ENV: address}
    notifier = notify.Notifier.from_environ(environ)
    assert environ == {}  # taken: nothing this process runs could speak for it
    notifier.ready("serving 3 units")
    readable(sock)
    (datagram,) = list(notify.received(sock))
    assert datagram == notify.Datagram(
        os.getpid(), {"READY": "1", "STATUS": "serving 3 units"}, truncated=False
    )
    assert list(notify.received(sock)) == []  # nothing queued: returns at once


def test_the_last_assignment_of_a_key_wins_and_lines_without_one_are_ignored() -> None:
    assert notify.parse(b"STATUS=a\nnot an assignment\nSTATUS=b=c\nREADY=1\n") == {
        "STATUS": "b=c",
        "READY": "1",
    }


def test_descriptors_passed_in_a_datagram_are_closed_as_it_is_read(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, address = receiver
    read_end, write_end = os.pipe()
    before = open_descriptors()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [read_end]))]
        sender.sendmsg([b"READY=1"], rights, 0, notify.socket_address(address))
    readable(sock)
    (datagram,) = list(notify.received(sock))
    assert datagram.fields == {"READY": "1"}
    assert open_descriptors() == before  # the copy the kernel made for us is gone
    os.close(read_end)
    os.close(write_end)


def test_a_datagram_longer_than_is_read_whole_says_so(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, address = receiver
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        status = b"STATUS=" + b"x" * notify.DATAGRAM_SIZE
        sender.sendto(status + b"\nREADY=1", notify.socket_address(address))
    readable(sock)
    (datagram,) = list(notify.received(sock))
    assert datagram.truncated
    assert "READY" not in datagram.fields  # cut off: the caller must not act on it


@pytest.mark.parametrize(
    ("address", "target"),
    [("@name", "\0name"), ("/run/x.sock", "/run/x.sock"), ("vsock:2:1", None), ("x", None)],
)
def test_a_notify_address_is_abstract_a_path_or_not_one_we_use(
    address: str, target: str | None
) -> None:
    assert notify.socket_address(address) == target


def test_a_notifier_without_a_listener_logs_and_goes_on(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="unitsync.notify")
    notify.Notifier(str(short_tmp / "nobody")).stopping("bye")
    notify.Notifier("vsock:2:1").ready("hello")
    notify.Notifier(None).ready("nobody asked")
    assert [record.getMessage() for record in caplog.records] == [
        f"nobody listens at {short_tmp / 'nobody'} any more (STOPPING=1)",
        "cannot notify NOTIFY_SOCKET=vsock:2:1: only @name and /path work",
    ]


# --- /proc --------------------------------------------------------------------------------------


@pytest.fixture
def oddly_named(short_tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child whose command name holds `) ` and spaces, as /proc/PID/stat shows it in
    parentheses: a parser that splits on the first `)` reads the wrong fields."""
    odd = short_tmp / "a) b c"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen(
        [odd, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    # Once it speaks it has exec'd: before, a busy machine may still show the forked
    # parent's name (`python`) in its /proc entry.
    assert child.stdout.readline() == b"up\n"
    yield child
    assert child.stdin is not None
    child.stdin.close()
    child.wait(LIMIT)


def test_stat_is_read_past_a_command_name_that_holds_parentheses(
    oddly_named: subprocess.Popen[bytes],
) -> None:
    assert Path(f"/proc/{oddly_named.pid}/comm").read_text().strip() == "a) b c"
    assert processes.parent_of(oddly_named.pid) == os.getpid()
    assert processes.descends_from(oddly_named.pid, os.getpid()) is True
    assert processes.is_running(oddly_named.pid)
    found = processes.process(oddly_named.pid)
    assert found is not None and found.pid == oddly_named.pid
    assert processes.still_runs(found.pid, found.ticks, found.pidns)
    assert not processes.still_runs(found.pid, found.ticks + 1, found.pidns)  # a reused pid


def test_descent_is_told_from_unrelated_and_from_exited_processes() -> None:
    assert processes.descends_from(os.getpid(), os.getpid()) is True
    assert processes.descends_from(os.getppid(), os.getpid()) is False
    child = subprocess.Popen(["true"])
    child.wait(LIMIT)  # reaped: its pid names no process now
    assert processes.descends_from(child.pid, os.getpid()) is None
    assert processes.parent_of(child.pid) is None
    assert processes.process(child.pid) is None
    assert not processes.is_running(child.pid)


def test_a_long_command_line_is_shortened_and_marked() -> None:
    line = "x" * (processes.COMMAND_LIMIT + 10)
    assert processes.shortened(line) == "x" * (processes.COMMAND_LIMIT - 1) + "…"
    assert processes.shortened("sh setup.sh") == "sh setup.sh"


# --- exits --------------------------------------------------------------------------------------


def test_an_exit_descriptor_turns_readable_when_its_process_exits() -> None:
    child = subprocess.Popen(WAITS_FOR_STDIN, stdin=subprocess.PIPE)
    with watching_exit(child.pid) as fd:
        assert fd is not None  # Linux 5.3+: pidfds
        assert select.select([fd], [], [], 0)[0] == []  # it runs
        assert child.stdin is not None
        child.stdin.close()
        assert select.select([fd], [], [], LIMIT)[0] == [fd]
    assert child.wait(LIMIT) == 0


def test_there_is_no_exit_descriptor_for_a_process_that_is_gone() -> None:
    child = subprocess.Popen(["true"])
    child.wait(LIMIT)
    assert exit_descriptor(child.pid) is None


# --- who listens --------------------------------------------------------------------------------


def test_who_listens_at_a_path(short_tmp: Path) -> None:
    path = short_tmp / "agent.sock"
    assert listener_at(str(path)) is None  # no file
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    assert listener_at(str(path)) is None  # a file nobody listens on: a dead agent's
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(path))
        listening.listen()
        peer = listener_at(str(path))
        assert peer is not None and (peer.pid, peer.uid) == (os.getpid(), os.getuid())


def test_a_listener_whose_backlog_is_full_is_someone_unnamed(short_tmp: Path) -> None:
    path = short_tmp / "busy.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(path))
        listening.listen(0)
        waiting = []
        try:
            while True:  # fill the backlog: connections nobody accepts
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.setblocking(False)
                waiting.append(client)
                client.connect(str(path))
        except BlockingIOError:
            pass
        try:
            assert listener_at(str(path)) is BUSY
        finally:
            for client in waiting:
                client.close()


# --- lock files ---------------------------------------------------------------------------------


def test_a_held_lock_names_its_holder_and_refuses_another_taker(short_tmp: Path) -> None:
    path = short_tmp / "lock"
    mine = LockRecord(os.getpid(), "/run/agent.sock")
    with held(path, mine) as lock:
        assert not lock.waited
        assert path.read_text() == f"{os.getpid()}\n/run/agent.sock\n"  # pid alone on line 1
        assert holder_of(path) == mine
        with pytest.raises(Busy) as busy, held(path, LockRecord(1)):
            pass
        assert busy.value.record == mine
    assert not path.exists()  # released: nothing left behind
    assert holder_of(path) is None


def test_a_lock_file_nobody_holds_names_no_holder_whatever_pid_it_records(
    short_tmp: Path,
) -> None:
    """A crashed holder's file stays; the pid it records may be reused, here by a process
    that runs (this one): only the kernel's word on the flock counts."""
    path = short_tmp / "lock"
    path.write_text(f"{os.getpid()}\n")
    assert read_lock_record(path) == LockRecord(os.getpid())
    assert holder_of(path) is None
    with held(path, LockRecord(os.getpid())):  # and it is taken over, not refused
        assert holder_of(path) == LockRecord(os.getpid())


def test_a_private_folder_is_ours_and_closed_to_others(tmp_path: Path) -> None:
    """The one rule every kept folder is checked by (state dir, socket folder, log folders)."""
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    assert private.problem(mine, mine.lstat()) is None
    mine.chmod(0o777)
    found = private.problem(mine, mine.lstat())
    assert found is not None and found.kind == "open to others"
    assert found.words == f"refusing to use {mine}: it is writable by others (mode 0777)"
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert getattr(private.problem(a_file, a_file.lstat()), "kind", None) == "not a folder"
    if os.getuid() == 0:  # (CI is root: a folder of another uid can be made)
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        found = private.problem(theirs, theirs.lstat())
        assert found is not None and found.kind == "not ours"
        assert "it belongs to uid 65534, not to you (uid 0)" in found.words


@pytest.mark.parametrize(
    "env",
    [
        {"TMPDIR": "{tmp}/given"},
        {"TMPDIR": "{tmp}/missing", "TEMP": "{tmp}/given"},
        {"TMPDIR": "", "TEMP": "", "TMP": "{tmp}/given/../given"},
        {"TMPDIR": "{tmp}/missing"},
        {},
    ],
)
def test_the_temp_folder_is_the_one_tempfile_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """The default socket without $XDG_RUNTIME_DIR lies in the temp folder, found without
    importing `tempfile` (3 ms of each call): it must be the folder `tempfile` would name,
    or an agent and a client that asks another way would miss each other."""
    import tempfile

    from unitsync.wire.host.paths import temp_dir

    (tmp_path / "given").mkdir()
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # it caches its first answer
    assert temp_dir() == tempfile.gettempdir()
