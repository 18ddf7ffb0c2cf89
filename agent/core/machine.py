"""The legal moves of a unit, as data: (status, command) -> outcome (SPEC §1, §11); and
what each dependency needs of its unit, as data: (condition, DEP's state) -> verdict (SPEC
§14, `NEEDS`, at the end).

`MOVES` is the whole state machine. A command that is not refused also makes a
unit no command had named known (pending) first. The graph's commands look their outcome up
here and nowhere else; `tests/test_graph.py` iterates the same table, so a rule
changed here is a rule changed (and tested) everywhere.

    status \\ command  start          start --once   complete   fail     reset          forget
    (never named)      started        started        no|force   no|force no             no
    pending            started        started        no|force   failed   -              removed
    started            no|rerun,gone  no|rerun,gone  completed  failed   no|force,free  no
    completed          no|rerun,free  no|rerun       -          failed   no|force,free  removed
    failed             started (new)  started (new)  completed  failed   pending        removed

    status \\ report   restarting     stopped
    (never named)      no             no
    pending            no             -
    started            started        pending
    completed          started        pending
    failed             started        pending

(`no`: refused; `no|force`: refused unless the command's override flag is given (`--force`,
`--rerun`); `,gone`: or the owner process of the unit's current run is gone (`OWNER_GONE`);
`,free`: or no owner is known to run it: it is gone, or none is recorded (`NO_OWNER`: a
completed unit whose run ended, a plain `run`'s or a `complete`d one's; a started unit of a
client that named no owner). `-`: no change; `(new)`: a new run.) So one run at a time: a
second start of a started unit, or of a completed service whose `run` still runs, is refused
while that owner lives, and `reset` leaves such a run alone, unless told otherwise (`--rerun`,
`reset --force`: the old run is then superseded, see `service.py`). A started unit with no
recorded owner may still be running: only `--rerun` starts it again, but `reset` takes it
(no owner is known to run it).

The second table is a run's own reports about its command (issue 24), sent with its token
by the `run` that holds it: `restarting` (its restart policy, or `sync restart`, starts the
command again: the same run goes on, `started` until it is ready again, so dependents wait
and do not fail) and `stopped` (`sync stop` stopped the command: `pending`, so later starts
of dependents wait for its next run). They are not commands a person gives; a report of a
superseded run never reaches them, and a unit with no run (pending) has nothing to restart.

`start --once` marks the unit one-time first; on a completed one it is refused with
`once_done` (exit 7): the one-time work is done.

Every command but `start` refuses a name no command has named yet: it is most likely a
typo, and would otherwise become a unit forever (`fail --force` declares a failure on
purpose). `forget` refuses a started unit (its script may still be running); the graph
also refuses to forget a unit that others want, naming them.

`completed -> failed` is legal: a unit that was ready can stop being so (a service
that died after it was ready, an operator who knows better), and its dependents'
later starts must see it. `failed -> completed` is legal too: an operator who
fixed by hand what a script could not says so with `complete`.

Reports of a run (`complete`, `fail` and a reason, sent by the `run` that holds it, with
its token) are not commands of this table when the run is not the unit's current one: a
superseded run's reports change nothing, in every state (`Graph.superseded`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

State = Literal["pending", "started", "completed", "failed"]
"""A unit's status; the agent's own word for it (the wire has its own, converted in views)."""
STATES: tuple[State, ...] = ("pending", "started", "completed", "failed")

Status = State | None
"""A unit's status, or None for a unit no command has named yet."""


class Command(enum.Enum):
    START = "start"
    START_ONCE = "start --once"
    COMPLETE = "complete"
    FAIL = "fail"
    RESET = "reset"
    FORGET = "forget"
    RESTARTING = "restarting"
    """A run's report: its command is being started again (restart policy, `sync restart`)."""
    STOPPED = "stopped"
    """A run's report: its command was stopped on `sync stop`'s order."""


@dataclass(frozen=True)
class Go:
    """The command moves the unit to `to`, recording `reason`."""

    to: State
    reason: str = ""


@dataclass(frozen=True)
class Stay:
    """The command succeeds and changes nothing (it is already so)."""


@dataclass(frozen=True)
class Drop:
    """The command removes the unit, with its history (`forget`)."""


@dataclass(frozen=True)
class Refuse:
    """The command is refused with `code`, unless the caller gives one of `overrides` (a
    flag of the command, such as `--force`, or a fact, such as "the owner is gone"); then
    it does `then`."""

    code: str
    overrides: tuple[str, ...] = ()
    then: Go | None = None


Outcome = Go | Stay | Drop | Refuse

START, START_ONCE, COMPLETE, FAIL, RESET, FORGET, RESTARTING, STOPPED = Command

NEW_RUN = "new run"
RERUN = ("rerun",)
OWNER_GONE = "owner_gone"
"""A fact, not a flag: the owner process of the unit's current run is gone (SPEC §7)."""
NO_OWNER = "no_owner"
"""A fact: the unit's current run has no recorded owner."""
RERUN_OR_OWNER_GONE = ("rerun", OWNER_GONE)
"""A second run of a started unit: `--rerun`, or its owner process is gone (SPEC §7)."""
RERUN_OR_NO_LIVE_OWNER = ("rerun", OWNER_GONE, NO_OWNER)
"""A new run of a completed unit: `--rerun`, or no owner runs it any more (SPEC §11)."""
FORCE = ("force",)
FORCE_OR_NO_LIVE_OWNER = ("force", OWNER_GONE, NO_OWNER)
"""`reset` of a unit in a run: `--force`, or no owner is known to run it (SPEC §11)."""
FORCED = "forced"
RESET_REASON = "reset"
FORCED_RESET_REASON = "reset --force"
"""The reason of a reset that took a run whose owner still runs (and superseded it)."""

MOVES: dict[tuple[Status, Command], Outcome] = {
    (None, START): Go("started"),
    ("pending", START): Go("started"),
    ("started", START): Refuse("already_started", RERUN_OR_OWNER_GONE, Go("started", NEW_RUN)),
    ("completed", START): Refuse("already_started", RERUN_OR_NO_LIVE_OWNER, Go("started", NEW_RUN)),
    ("failed", START): Go("started", NEW_RUN),
    (None, START_ONCE): Go("started"),
    ("pending", START_ONCE): Go("started"),
    ("started", START_ONCE): Refuse("already_started", RERUN_OR_OWNER_GONE, Go("started", NEW_RUN)),
    ("completed", START_ONCE): Refuse("once_done", RERUN, Go("started", NEW_RUN)),
    ("failed", START_ONCE): Go("started", NEW_RUN),
    (None, COMPLETE): Refuse("not_started", FORCE, Go("completed", FORCED)),
    ("pending", COMPLETE): Refuse("not_started", FORCE, Go("completed", FORCED)),
    ("started", COMPLETE): Go("completed"),
    ("completed", COMPLETE): Stay(),
    ("failed", COMPLETE): Go("completed"),
    (None, FAIL): Refuse("unknown_unit", FORCE, Go("failed")),
    ("pending", FAIL): Go("failed"),
    ("started", FAIL): Go("failed"),
    ("completed", FAIL): Go("failed"),
    ("failed", FAIL): Go("failed"),
    (None, RESET): Refuse("unknown_unit"),
    ("pending", RESET): Stay(),
    ("started", RESET): Refuse("in_use", FORCE_OR_NO_LIVE_OWNER, Go("pending", RESET_REASON)),
    ("completed", RESET): Refuse("in_use", FORCE_OR_NO_LIVE_OWNER, Go("pending", RESET_REASON)),
    ("failed", RESET): Go("pending", RESET_REASON),
    (None, FORGET): Refuse("unknown_unit"),
    ("pending", FORGET): Drop(),
    ("started", FORGET): Refuse("in_use"),
    ("completed", FORGET): Drop(),
    ("failed", FORGET): Drop(),
    (None, RESTARTING): Refuse("unknown_unit"),
    ("pending", RESTARTING): Refuse("not_started"),
    ("started", RESTARTING): Go("started"),
    ("completed", RESTARTING): Go("started"),
    ("failed", RESTARTING): Go("started"),
    (None, STOPPED): Refuse("unknown_unit"),
    ("pending", STOPPED): Stay(),
    ("started", STOPPED): Go("pending"),
    ("completed", STOPPED): Go("pending"),
    ("failed", STOPPED): Go("pending"),
}


def outcome(status: Status, command: Command, overrides: frozenset[str] = frozenset()) -> Outcome:
    """What `command` does to a unit in `status`, given the override flags the caller set
    and the facts about its run's owner (`OWNER_GONE`, `NO_OWNER`).

    A refusal the caller overrides becomes its `then`; any other refusal stays one.
    """
    result = MOVES[status, command]
    if isinstance(result, Refuse) and result.then is not None and overrides & {*result.overrides}:
        return result.then
    return result


def owner_facts(has_owner: bool, alive: bool | None) -> frozenset[str]:
    """The facts about a run's owner that the table's overrides name: none is recorded
    (`NO_OWNER`), or it is gone (`OWNER_GONE`: `alive` is False). An owner that runs, or
    one this agent cannot see (`alive` None), gives none: nothing is taken from it."""
    if not has_owner:
        return frozenset({NO_OWNER})
    return frozenset({OWNER_GONE}) if alive is False else frozenset()


# --- what a dependency needs (SPEC §14) -----------------------------------------------------

Condition = Literal["completed", "started", "finished"]
"""What an edge `UNIT wants DEP` needs of DEP before UNIT may start (`want --on`)."""
CONDITIONS: tuple[Condition, ...] = ("completed", "started", "finished")
DEFAULT_CONDITION: Condition = "completed"
"""Today's (and every older journal's) meaning of an edge: DEP is completed (ready)."""

DepState = Literal[
    "pending", "started", "completed", "failed after it started", "failed before it started"
]
"""DEP's state as a condition sees it: `failed` is split by whether DEP's run ever started
(`ever_started`), which is all that `started` asks."""
DEP_STATES: tuple[DepState, ...] = (
    "pending",
    "started",
    "completed",
    "failed after it started",
    "failed before it started",
)


class Verdict(enum.Enum):
    SATISFIED = "satisfied"
    """UNIT may start as far as this dependency goes."""
    WAIT = "wait"
    """UNIT's start waits (for this dependency's next move)."""
    FAIL = "fail"
    """UNIT's start fails, and UNIT with it (`dependency DEP failed`): the cascade."""


NEEDS: dict[tuple[Condition, DepState], Verdict] = {
    ("completed", "pending"): Verdict.WAIT,
    ("completed", "started"): Verdict.WAIT,
    ("completed", "completed"): Verdict.SATISFIED,
    ("completed", "failed after it started"): Verdict.FAIL,
    ("completed", "failed before it started"): Verdict.FAIL,
    ("started", "pending"): Verdict.WAIT,
    ("started", "started"): Verdict.SATISFIED,
    ("started", "completed"): Verdict.SATISFIED,
    ("started", "failed after it started"): Verdict.SATISFIED,
    ("started", "failed before it started"): Verdict.FAIL,
    ("finished", "pending"): Verdict.WAIT,
    ("finished", "started"): Verdict.WAIT,
    ("finished", "completed"): Verdict.SATISFIED,
    ("finished", "failed after it started"): Verdict.SATISFIED,
    ("finished", "failed before it started"): Verdict.SATISFIED,
}
"""The whole rule of dependencies: condition x DEP's state -> verdict. `Graph.readiness`
(and `views.unit_view`, for each dependency's `satisfied`) look every edge up here and
nowhere else; `tests/test_conditions.py` checks every row through the graph, and
docs/commands.md prints the same table.

    condition \\ DEP is  pending  started    completed  failed (had started)  failed (never started)
    completed           wait     wait       satisfied  fail                  fail
    started             wait     satisfied  satisfied  satisfied             fail
    finished            wait     wait       satisfied  satisfied             satisfied

`started` is ordering only: UNIT may run beside DEP, and a DEP that began and then failed
has done what UNIT waited for. `finished` is a soft edge: DEP's failure never fails UNIT.
"""


def dep_state(status: State, ever_started: bool) -> DepState:
    """DEP's state for `NEEDS`; `ever_started` matters only for a failed DEP."""
    if status != "failed":
        return status
    return "failed after it started" if ever_started else "failed before it started"


def ever_started(came_from: State | None) -> bool:
    """Did a failed unit's current run ever start? `came_from` is the status it failed
    out of (its latest move into `failed`, failed -> failed moves skipped: a second `fail`
    changes nothing about the run). It started if that was `started` or `completed` (a
    service that died after it was ready); one that failed while `pending` (its own
    dependency failed while its start waited, `fail` of a pending unit, `fail --force` of
    a new name) never did. Unknown (None: the moves that tell are gone from its bounded
    history): never, the side on which a `started` edge still cascades."""
    return came_from in ("started", "completed")
