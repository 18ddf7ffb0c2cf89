"""Every error unitsync reports: the hierarchy, the wire mapping and the exit codes (SPEC §2).

The agent raises these (the graph refuses a command with `Refused`) and answers with
`to_reply(exc)`; every client turns an `Error` reply back with `from_reply`, so a script
sees the same class, message and exit status whichever client it uses. The command line
exits with `exc.exit_code`.

    UnitsyncError                      exit 1
    ├── Refused                        exit 1   the agent will not do it (cycle, name, state)
    │   ├── DependencyFailed           exit 4
    │   ├── UnitFailed                 exit 4   `sync restart`: the unit failed instead of
    │   │                                       becoming ready again
    │   ├── Superseded                 exit 1   a `run` taking back a run that a newer one
    │   │                                       superseded meanwhile (it stops its command)
    │   └── ProtocolError              exit 1   a frame that is not a valid message
    ├── WaitTimeout                    exit 5
    ├── AlreadyDone                    exit 7   `start --once` of a one-time unit already done
    ├── NotDurable                     exit 6   the change could not be made durable: nothing
    │                                           changed (disk full, store unreachable); retry
    ├── UsageError                     exit 2   the command line itself is wrong
    ├── NotInHistory                   exit 1   no boot or run of that name to show (§9)
    └── AgentUnavailable               exit 3   no (trustworthy) agent to talk to
        ├── NoAgent                             nobody listens at the socket (a client may
        │   │                                   start an agent then: SPEC §7)
        │   └── AgentCrashed                    its file is there, refusing: a dead agent's
        ├── AgentStartFailed                    a client started an agent; it did not come up
        │                                       (never retried)
        ├── AgentBusy                           past the agent's connection cap
        ├── AgentGone                           the connection broke, or the agent is stopping
        ├── AgentUntrusted                      the socket's folder or peer is not the user's
        │                                       (never retried: `passing` is False)
        └── GraphChanged                        the agent at the socket now serves another
                                                graph than the one this client began with:
                                                nothing was done (never retried)

Not errors, but exit statuses of the command line all the same: 130 interrupted (Ctrl-C),
141 its output closed early (`| head`).
"""

from __future__ import annotations

from typing import ClassVar

from .protocol import Error

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DEPENDENCY_FAILED = 4
EXIT_TIMED_OUT = 5
EXIT_NOT_DURABLE = 6
EXIT_ALREADY_DONE = 7
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as shells report a command stopped by Ctrl-C."""
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what `yes | head -1` gives its writer."""


class UnitsyncError(Exception):
    """Base of every error unitsync reports; `exit_code` is the command line's exit status."""

    exit_code: ClassVar[int] = EXIT_REFUSED
    default_code: ClassVar[str] = "invalid"
    """The wire's `ErrorCode` for errors the agent sends; a client-side name for the rest."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        unit: str | None = None,
        dependency: str | None = None,
        by: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.unit = unit
        self.dependency = dependency
        self.by = by
        """For `Superseded`: by whom ("a new run (pid 4242)")."""


class Refused(UnitsyncError):
    """The agent will not carry out the request; the message says what to do instead."""


class DependencyFailed(Refused):
    exit_code = EXIT_DEPENDENCY_FAILED
    default_code = "dependency_failed"


class UnitFailed(Refused):
    """`sync restart`: the unit's command failed instead of becoming ready again."""

    exit_code = EXIT_DEPENDENCY_FAILED
    default_code = "unit_failed"


class Superseded(Refused):
    """The run a `run` held was superseded (a newer run of the unit began, or it was reset
    with --force) while that `run` was away; like an `Order` to supersede, it stops its
    command. The message says by what; `by` says who, as data."""

    default_code = "superseded"


class ProtocolError(Refused):
    """A frame that is not a valid message, or a conversation out of order."""

    default_code = "protocol"


class WaitTimeout(UnitsyncError):
    exit_code = EXIT_TIMED_OUT
    default_code = "timeout"


class AlreadyDone(UnitsyncError):
    """`start --once` of a one-time unit that is completed: there is nothing to do, and a
    script branches on it (`if unitsync sync start git --once; then git clone ...; fi`)."""

    exit_code = EXIT_ALREADY_DONE
    default_code = "once_done"


class NotDurable(UnitsyncError):
    """The agent could not make the change durable, so it did not make it at all (the disk
    is full, the shared store is unreachable). Reads and waits go on; retry later."""

    exit_code = EXIT_NOT_DURABLE
    default_code = "not_durable"


class UsageError(UnitsyncError):
    exit_code = EXIT_USAGE
    default_code = "usage"


class NotInHistory(UnitsyncError):
    """`timeline`, `critical-chain`: the histories hold no such boot, or no run of that unit."""

    default_code = "not_in_history"


class AgentUnavailable(UnitsyncError):
    exit_code = EXIT_UNREACHABLE
    default_code = "unavailable"
    passing: ClassVar[bool] = True
    """Worth waiting out: a waiting `start`, a `watch` and `run`'s reports retry with
    backoff (an agent restarting comes back). False where waiting cannot help."""


class NoAgent(AgentUnavailable):
    """Nothing listens at the socket (no file, or a dead agent's): the blocking client
    starts an agent then, unless autostart is off (`client/autostart.py`)."""

    default_code = "no_agent"


class AgentCrashed(NoAgent):
    """The socket file is there but nothing accepts on it: what an agent that died leaves
    (SIGKILL, the OOM killer, a crash). An agent that stops cleanly removes its file before
    it stops listening, so a client that had an agent and finds this starts another, where
    it would wait for a stopped one to be started again (`Client._connect`)."""

    default_code = "agent_crashed"


class AgentStartFailed(AgentUnavailable):
    """A client found no agent and started one, and it did not come up: the message
    carries the agent's own last words from its log. Not passing: a waiter that retried
    would start one again, to fail the same way; it says why instead, as a first call does."""

    default_code = "start_failed"
    passing = False


class AgentBusy(AgentUnavailable):
    default_code = "busy"


class AgentGone(AgentUnavailable):
    """The connection broke or the agent is shutting down; a waiting `start` reconnects."""

    default_code = "shutting_down"


class AgentUntrusted(AgentUnavailable):
    """What listens at the socket may not be the user's own agent: nothing was sent to it.
    Not passing: another user's listener in the agent's place is refused at once, never
    waited on (a `start` would otherwise retry it until its timeout)."""

    default_code = "untrusted"
    passing = False


class GraphChanged(AgentUnavailable):
    """A reconnection found, at the same socket, an agent serving another graph than the
    one this client talked to first (SPEC §11): another state dir, another etcd prefix. The
    request was not carried out, and is never retried: the units it names in the new graph
    are not the ones the client was waiting on, so nothing it does there may count.

    `expected` and `found` are the two graphs' ids; `expected_state` and `found_state` say
    where each is kept."""

    default_code = "graph_changed"
    passing = False

    def __init__(
        self,
        message: str,
        *,
        expected: str = "",
        expected_state: str = "",
        found: str = "",
        found_state: str = "",
        **kwargs: str | None,
    ) -> None:
        super().__init__(message, **kwargs)
        self.expected = expected
        self.expected_state = expected_state
        self.found = found
        self.found_state = found_state


_BY_CODE: dict[str, type[UnitsyncError]] = {
    "dependency_failed": DependencyFailed,
    "protocol": ProtocolError,
    "shutting_down": AgentGone,
    "busy": AgentBusy,
    "not_durable": NotDurable,
    "once_done": AlreadyDone,
    "graph_changed": GraphChanged,
    "superseded": Superseded,
    "timeout": WaitTimeout,
    "unit_failed": UnitFailed,
    "untrusted": AgentUntrusted,
    "start_failed": AgentStartFailed,
}
"""Codes whose error is not a plain refusal; every other code is `Refused`."""


def from_reply(reply: Error) -> UnitsyncError:
    """The exception an `Error` reply stands for, the same in every client."""
    kind = _BY_CODE.get(reply.code, Refused)
    return kind(
        reply.message, code=reply.code, unit=reply.unit, dependency=reply.dependency, by=reply.by
    )


def to_reply(exc: UnitsyncError) -> Error:
    """The `Error` reply the agent sends for `exc` (a path in its message that is not UTF-8
    shown with those bytes escaped: a frame holds only UTF-8)."""
    return Error(
        exc.code,  # type: ignore[arg-type]
        as_text(exc.message),
        unit=exc.unit,
        dependency=exc.dependency,
        by=exc.by,
    )


def as_text(text: str) -> str:
    """`text`, with any byte that was not UTF-8 (a lone surrogate, from a path) as \\xNN."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            data = text.encode("utf-8", "surrogateescape")  # the bytes of a path
        except UnicodeEncodeError:  # a surrogate no byte stands for
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return data.decode("utf-8", "backslashreplace")
    return text
