"""The frame types of the wire protocol, shared by the agent and every client (SPEC §3).

Bodies are tagged msgspec structs: clients send `Request`s, the agent answers with
`Reply`s (and, on a watching connection or while a `start` waits, with events). The
first frame of every connection is a `Hello` stating the protocol version, so a
mismatch is caught before anything else happens. How frames become bytes is
`framing`'s business; what a refusal means is `errors`'.

These types are the wire's alone: the agent's journal has its own record types and
converts at one seam (`unitsync.agent.core.views`), so changing a frame never changes the
on-disk format. This module imports only msgspec: the CLI's start-up time depends on it.

Its annotations are objects, not strings (no `from __future__ import annotations`, unlike
the rest of the code): msgspec reads them when a call first decodes a reply, and reads
objects in a third of the time it takes to evaluate strings (0.3 ms of every call).
"""

from typing import Literal

import msgspec

PROTOCOL_VERSION = 2
"""2: `hello`, `welcome` and `pong` name the graph (SPEC §11); a client of version 1 is
refused with the version message, since its hello decodes as before."""

State = Literal["pending", "started", "completed", "failed"]
Condition = Literal["completed", "started", "finished"]
"""What an edge needs of its dependency (SPEC §14): completed; started (or completed:
ordering only); finished (completed or failed: a soft edge)."""
CONDITIONS: tuple[Condition, ...] = ("completed", "started", "finished")


class Base(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, omit_defaults=True):
    """Common options for every frame type."""


# --- requests ------------------------------------------------------------------------------


class Hello(Base, tag="hello"):
    version: int
    client: str = ""
    graph: str = ""
    """The graph this client talked to before (empty on first contact): an agent serving
    another answers its welcome, then `graph_changed`, and carries out nothing (SPEC §11)."""


class Ping(Base, tag="ping"):
    pass


class Want(Base, tag="want"):
    unit: str
    deps: list[str]
    once: bool = False
    """Mark `unit` one-time: once completed it stays completed across workspace restarts."""
    on: Condition | None = None
    """What `unit` needs of each dep: an edge on another condition changes to it. None (not
    given): a new edge is `completed`, an existing one keeps its condition. Left out when
    None, so an agent that predates conditions takes every `want` that names none."""


class Owner(msgspec.Struct, frozen=True, omit_defaults=True):
    """The process a run belongs to (SPEC §7): `run` itself, or the script that called `start`.

    `ticks` is its start time (clock ticks since the kernel booted), so a reused pid is
    never mistaken for it; `pidns` its PID namespace, so an owner the agent cannot see is
    known to be invisible rather than gone.
    """

    pid: int
    ticks: int
    command: str
    kind: Literal["run", "start"] = "start"
    pidns: str = ""


class Start(Base, tag="start"):
    unit: str
    rerun: bool = False
    token: str = ""
    """Chosen by the client per `start` call; lets a retry after a lost reply be recognised."""
    waited_before: float = 0.0
    """Seconds this `start` already waited on earlier connections (the agent restarted): the
    wait it reports and records is the whole wait."""
    once: bool = False
    """Mark the unit one-time; if it is a completed one-time unit, refuse (`once_done`)."""
    owner: Owner | None = None
    hold: bool = False
    """`run`: this connection holds the run; if it ends before the run's end is reported,
    the unit fails at once. Sent again with the same token after an agent restart, it
    takes the hold back."""
    again: bool = False
    """Taking a held run back after an agent restart: never start a new run; refuse if this
    run is over (it was given up after the grace period)."""


class Complete(Base, tag="complete"):
    unit: str
    force: bool = False
    once: bool = False
    """Mark the unit one-time too."""
    hold: bool = False
    """From a `run` that holds the unit: the run goes on (a service that is ready); losing
    the connection later still fails the unit."""
    token: str = ""
    """The reporting run's (its `start`'s token): if a newer run superseded it, the report
    changes nothing. Empty: a report about the unit, whichever run it is in."""


class Fail(Base, tag="fail"):
    unit: str
    reason: str = ""
    force: bool = False
    """Fail a unit no command has named yet (declare a failure on purpose)."""
    token: str = ""
    """The reporting run's, as for `Complete`."""


class SetReason(Base, tag="set_reason"):
    """Say what a started unit is doing (its reason) without changing its state, as a
    service does while it starts (sd_notify's `STATUS=`)."""

    unit: str
    reason: str
    token: str = ""
    """The reporting run's, as for `Complete`."""


class Restarting(Base, tag="restarting"):
    """From the `run` holding the unit: its command is being started again (its restart
    policy, or `sync restart`); the unit goes `started` with `reason` until it is ready."""

    unit: str
    reason: str
    token: str = ""
    """The reporting run's, as for `Complete`."""


class Stopped(Base, tag="stopped"):
    """From the `run` holding the unit: its command was stopped on `sync stop`'s order and
    its process group is gone; the unit goes `pending` with `reason`."""

    unit: str
    reason: str
    token: str = ""
    """The reporting run's, as for `Complete`."""


class Stop(Base, tag="stop"):
    """`sync stop`: the unit's live `run` stops its command; answered once its process
    group is gone (the unit is then pending), or refused past `timeout` seconds."""

    unit: str
    timeout: float = 10.0
    by: str = ""
    """Who asks, for the unit's reason ("sync stop (pid 4242)")."""


class Restart(Base, tag="restart"):
    """`sync restart`: the unit's live `run` stops its command and starts it again;
    answered once it is ready again, refused if it failed or past `timeout` seconds."""

    unit: str
    timeout: float = 10.0
    by: str = ""


class Reset(Base, tag="reset"):
    unit: str | None = None
    """None resets every unit."""
    force: bool = False
    """Reset units whose run's owner still runs too (their runs are superseded)."""
    failed: bool = False
    """With no unit: only the units that are failed (`reset --failed`)."""


class Forget(Base, tag="forget"):
    unit: str


class Status(Base, tag="status"):
    unit: str | None = None
    """None asks for every unit."""


class Watch(Base, tag="watch"):
    unit: str | None = None


Request = (
    Hello
    | Ping
    | Want
    | Start
    | Complete
    | Fail
    | SetReason
    | Restarting
    | Stopped
    | Stop
    | Restart
    | Reset
    | Forget
    | Status
    | Watch
)


# --- views of the agent's state ------------------------------------------------------------


class Transition(msgspec.Struct, frozen=True, gc=False):
    """One entry of a unit's history: plain values, never in a cycle, so not GC-tracked."""

    at: float
    """Unix time of the change."""
    from_: State = msgspec.field(name="from")
    to: State
    reason: str = ""
    waited: float | None = None
    """For a move to `started`: how long that start waited for its dependencies (seconds)."""
    boot: int = 1
    """The boot (1, 2, 3...) of the workspace this transition happened in (SPEC §7)."""
    restart: bool = False
    """A move to started that is not a new run: the current run started its command again
    (a restart policy, `sync restart`)."""


class OwnerView(msgspec.Struct):
    """Who owns a started unit's run, and whether that process still runs."""

    pid: int
    command: str
    kind: Literal["run", "start"]
    alive: bool | None
    """None: the agent cannot tell (the owner is in another PID namespace)."""


class Dependency(msgspec.Struct):
    unit: str
    required: Condition
    """The edge's condition (`want --on`)."""
    current: State
    satisfied: bool
    """The condition holds now: a start would not wait for this dependency (a failed one
    under `finished`, or under `started` after it had started, counts: the unit goes
    ahead without it)."""


class UnitView(msgspec.Struct):
    name: str
    status: State
    ready: bool
    since: float
    """Unix time of the last transition (or of the unit becoming known)."""
    reason: str
    waiting_on: list[str]
    """Dependencies whose condition does not hold yet (not yet completed, for a default
    edge), while a `start` of this unit waits."""
    waiters: int
    dependencies: list[Dependency]
    dependents: list[str]
    history: list[Transition]
    once: bool = False
    """A one-time unit: once completed, it stays completed across workspace restarts."""
    owner: OwnerView | None = None
    """The process that owns the current run (started units, and ready services)."""
    restarts: int = 0
    """How many times the current run started its command again (restart policy, `sync
    restart`)."""
    cut: list[str] = []
    """What this view leaves out (empty: nothing), one entry per field cut, each beginning
    with that field's name (`dependents: 24,500 of 25,000 not listed (...)`): the units that
    want it past the ones listed, and what a journal written before the bounds holds past
    them (`wire.bounds`). So every view fits in a frame."""
    host: str = ""
    """The host whose agent began the unit's latest run (its machine's name, or its etcd
    host id): where that run's output is kept (SPEC §15). "": never started."""


# --- replies and events --------------------------------------------------------------------


class Welcome(Base, tag="welcome"):
    version: int
    agent: str
    """The agent's software version."""
    pid: int
    graph: str
    """The id of the graph the agent serves, made once when the graph was created."""
    state: str
    """Where that graph is kept: the state dir, or the etcd store's location."""
    logs: str = ""
    """The folder on this agent's host where `run` keeps its command's output (SPEC §15):
    in the agent's local state dir, in etcd mode too. "": none (an older agent)."""
    boot: int = 0
    """The workspace's current boot (as in `Pong`), for the sections of those logs."""
    host: str = ""
    """This agent's host (its etcd host id, or the machine's name)."""


class Pong(Base, tag="pong"):
    agent: str
    pid: int
    uptime: float
    socket: str
    state_dir: str = ""
    boot: int = 1
    """The workspace's current boot (1, 2, 3...: one more at each workspace restart)."""
    boot_since: float = 0.0
    """Unix time the current boot began (its first agent start)."""
    graph: str = ""
    """The id of the graph the agent serves (as in its welcome)."""


class Ok(Base, tag="ok"):
    unit: str | None = None
    message: str = ""
    notes: list[str] = []
    """Things the user should know although the request succeeded."""
    left_alone: list[str] = []
    """Units the request did not change although it named them (`reset --all`: their run's
    owner still runs; `notes` says why for each)."""


class Waiting(Base, tag="waiting"):
    """Event: a `start` is blocked; `on` lists the dependencies whose condition does not
    hold yet."""

    unit: str
    on: list[str]
    since: float
    """Unix time the wait began (on this agent; earlier connections' wait counted in)."""
    waited: float = 0.0
    """Seconds the start had been blocked when this was sent, earlier connections' wait
    included: a client counting on from it shows the figure `Started.waited` will give."""


class Order(Base, tag="order"):
    """Event, pushed unasked on a connection that holds a run (a `run`'s): what the agent
    asks of the run whose token is `token`. The agent sends it between replies, never in
    the middle of one.

    `supersede`: a newer run of `unit` began (`--rerun`), or the unit was reset with
    `--force`: the run is no longer the unit's, its reports change nothing; the `run`
    stops its command and exits. `by` says who, for people: "a new run (pid 4242)".
    `stop` (`sync stop`): the `run` stops its command, reports `Stopped` once its group is
    gone, and exits 0. `restart` (`sync restart`): the `run` reports `Restarting`, stops
    its command and starts it again.
    """

    unit: str
    what: Literal["supersede", "stop", "restart"]
    token: str
    by: str = ""


class Started(Base, tag="started"):
    unit: str
    at: float
    waited: float
    notes: list[str] = []


ErrorCode = Literal[
    "protocol",  # undecodable, invalid or unexpected frame, version mismatch
    "invalid",  # bad unit name, self-dependency and similar bad arguments
    "cycle",
    "unknown_unit",
    "already_started",
    "not_started",
    "in_use",  # forget of a unit that others want, that is started, or that a start waits for
    "once_done",  # start --once of a one-time unit that is completed: nothing to do
    "superseded",  # a `run` taking back a run that a newer one superseded meanwhile
    "dependency_failed",
    "shutting_down",
    "busy",  # the agent cannot take more connections
    "not_durable",  # the change could not be made durable (disk full, store unreachable)
    "graph_changed",  # the hello named another graph than the agent serves: nothing was done
    "untrusted",  # the connecting process runs as another user: refused before its hello
    "start_failed",  # the agent could not start (a damaged journal): sent to queued clients
    "no_run",  # stop or restart of a unit that no live `run` holds
    "timeout",  # stop or restart: not done within the request's timeout
    "unit_failed",  # restart: the unit failed instead of becoming ready again
]


class Error(Base, tag="error"):
    code: ErrorCode
    message: str
    unit: str | None = None
    dependency: str | None = None
    """For dependency_failed: the unit that failed."""
    by: str | None = None
    """For superseded: by whom, for people ("a new run (pid 4242)")."""


class StatusReply(Base, tag="status"):
    units: list[UnitView]
    at: float
    more: bool = False
    boot: int = 1
    boot_since: float = 0.0
    """More units follow in the next frame (a long list is split to fit the frame limit)."""
    replica_behind_since: float | None = None
    """A shared graph (etcd): Unix time since which the agent's copy is not known to be
    current (it cannot reach etcd), so what it shows may be out of date; None when it is."""


class FullView(Base, tag="snapshot"):
    """Event: the whole watched view; sent first and whenever a watcher fell behind.

    (On the wire its tag is `snapshot`, as in `status --watch -o json`; in the code it is
    a full view, so it is never confused with the journal's snapshot file.)
    """

    units: list[UnitView]
    at: float
    more: bool = False
    """More units follow in the next frame (a long list is split to fit the frame limit)."""


class Changed(Base, tag="changed"):
    """Event: one unit's new view after an acknowledged change."""

    unit: UnitView
    at: float


Reply = Welcome | Pong | Ok | Waiting | Started | Error | StatusReply | FullView | Changed | Order
