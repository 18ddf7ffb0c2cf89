"""`--ready-cmd`: a probe (a shell command line) run every interval until it exits 0.

Probes start at a fixed rate: the first as soon as the service is spawned, the next
one interval after the previous one started (at once if that one had to be killed).
Each is bounded by the interval: one still running then is killed (SIGKILL to its
process group, so `sh -c` and what it started go together) and counts as failed.
After the first success, or once readiness no longer matters, no probe runs again.

A probe runs in its own process group, with stdin and stdout on /dev/null: it never
reads the terminal, never clutters the service's output, and Ctrl-C is not meant for
it. Its stderr is kept (the last line) to say why it failed if the service is not
ready in time.

Resource rules: `ProbeReady` owns the running probe (process, stderr pipe, timers)
and stops it in `stop` or `finish`; at most one probe runs at a time.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from ..children import DEVNULL, Child, Ended, Exits, spawn
from ..group import signal_group
from ..reactor import Reactor, Timer
from .detector import Listener

SHELL = "/bin/sh"
STDERR_KEPT = 1024
"""Bytes of a probe's stderr kept to explain a failure (its last line is shown)."""


class ProbeReady:
    """Ready once `command` exits 0."""

    def __init__(self, command: str, interval: float) -> None:
        self.command = command
        self.interval = interval
        self.tries = 0
        self.last_failure = ""
        self.probing = True
        self.reactor: Reactor | None = None
        self.exits: Exits | None = None
        self.listener: Listener | None = None
        self.probe: Child | None = None
        self._stderr = bytearray()
        self._stderr_fd = -1
        """The running probe's stderr pipe, while it is open."""
        self._overdue: Timer | None = None
        self._next: Timer | None = None
        self._killed = False

    def child_options(self) -> dict[str, Any]:
        return {}

    def begin(self, reactor: Reactor, exits: Exits, service: Child, listener: Listener) -> None:
        self.reactor, self.exits, self.listener = reactor, exits, listener
        self._launch()

    def stop(self) -> None:
        self.probing = False
        if self._next is not None:
            self._next.cancel()
        self._kill()  # its exit is still reaped by `_ended`

    def waiting_for(self) -> str:
        if not self.tries:
            return f"the probe `{self.command}` never ran"
        tries = "1 try" if self.tries == 1 else f"{self.tries} tries"
        return f"the probe `{self.command}` failed ({tries}; last: {self.last_failure})"

    def finish(self) -> None:
        """The service is gone: stop the probe now and reap it here."""
        self.stop()
        if self.probe is not None:
            assert self.exits is not None
            self.exits.unwatch(self.probe)
            self.probe.wait()
            self._release()

    # --- internals ------------------------------------------------------------------------

    def _launch(self) -> None:
        assert self.reactor is not None and self.exits is not None
        self._next = None
        self.tries += 1
        self._killed = False
        self._stderr.clear()
        started = self.reactor.now()
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            self.probe = spawn(
                [SHELL, "-c", self.command], stdin=DEVNULL, stdout=DEVNULL, stderr=write_end
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._stderr_fd = read_end
        os.set_blocking(read_end, False)
        self.reactor.add_reader(read_end, self._read_stderr)
        self.exits.watch(self.probe, lambda ended: self._ended(ended, started))
        self._overdue = self.reactor.call_at(started + self.interval, self._kill)

    def _ended(self, ended: Ended, started: float) -> None:
        assert self.reactor is not None and self.listener is not None
        killed = self._killed
        self._read_stderr()
        self._release()
        if not self.probing:
            return
        if ended.returncode == 0:
            self.listener.ready(f"`{self.command}` succeeded on try {self.tries}")
            return
        if killed:
            self.last_failure = f"did not finish within {self.interval:g}s"
        elif ended.signal_name:
            self.last_failure = f"killed by signal {ended.signal_name}"
        else:
            self.last_failure = f"exit status {ended.status}{self._stderr_line()}"
        self._next = self.reactor.call_at(started + self.interval, self._launch)

    def _kill(self) -> None:
        if self.probe is not None and self.probe.returncode is None and not self._killed:
            self._killed = True
            signal_group(self.probe.pid, signal.SIGKILL)

    def _read_stderr(self) -> None:
        """Keep the tail of the probe's stderr; close the pipe at its end."""
        while self._stderr_fd >= 0:
            try:
                data = os.read(self._stderr_fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self._close_stderr()
                return
            self._stderr += data
            del self._stderr[:-STDERR_KEPT]

    def _close_stderr(self) -> None:
        if self._stderr_fd >= 0:
            assert self.reactor is not None
            self.reactor.remove_reader(self._stderr_fd)
            os.close(self._stderr_fd)
            self._stderr_fd = -1

    def _release(self) -> None:
        """The probe has ended: close its pipe (a descendant may hold it) and its timer."""
        if self._overdue is not None:
            self._overdue.cancel()
        self._close_stderr()
        self.probe = None

    def _stderr_line(self) -> str:
        lines = self._stderr.decode("utf-8", "replace").strip().splitlines()
        return f": {lines[-1].strip()}" if lines else ""
