"""The pure core against SPEC §1.

Three layers: an example for every rule the core owns, a replay/snapshot property, and a
hypothesis state machine that checks the graph against a deliberately naive model.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from unitsync.agent.core.graph import Graph, Refused
from unitsync.agent.core.machine import (
    MOVES,
    NO_OWNER,
    OWNER_GONE,
    STATES,
    Command,
    Drop,
    Refuse,
    Status,
    Stay,
    outcome,
)
from unitsync.agent.core.records import Edge, Forget, Known, Move, OwnerRecord, Record, UnitImage
from unitsync.agent.core.views import transition, unit_view
from unitsync.wire.bounds import HISTORY_LIMIT, MAX_DEPS, MAX_REASON_BYTES, check_name

from harness.applied import AppliedGraph

T0 = 1_700_000_000.0
"""A fixed, realistic Unix time; tests add small offsets so every transition is distinct."""


def refused(code: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Refused:
    """Run a command that must be refused with `code` and return the refusal."""
    with pytest.raises(Refused) as caught:
        fn(*args, **kw)
    assert caught.value.code == code, caught.value.message
    return caught.value


def state(graph: Graph) -> list[tuple[Any, ...]]:
    """Everything observable about every unit; unlike images() it includes dependents."""
    return [
        (
            u.name,
            u.status,
            u.since,
            u.reason,
            u.token,
            list(u.deps),
            sorted(u.dependents),
            list(u.history),
        )
        for u in graph.units.values()
    ]


def moves(graph: Graph, name: str) -> list[tuple[float, str, str, str]]:
    """A unit's history as (time, from, to, reason), the columns `status` shows."""
    return [(t.at, t.from_, t.to, t.reason) for t in graph.units[name].history]


def run(
    graph: Graph,
    name: str,
    now: float,
    rerun: bool = False,
    once: bool = False,
    owner_alive: bool | None = True,
) -> list[Record]:
    """What the agent does for `start` when the unit is already ready: admit, then start."""
    records = graph.admit(name, rerun=rerun, now=now, once=once, owner_alive=owner_alive)
    assert graph.readiness(name).ready
    return records + graph.start(name, rerun=rerun, now=now, once=once, owner_alive=owner_alive)


def clock(at: float) -> str:
    """The local wall-clock time of day a user would recognise in a message."""
    return datetime.datetime.fromtimestamp(at).strftime("%H:%M:%S")


# --- the state machine's table -----------------------------------------------------------

Alive = bool | None
BY_TABLE: dict[Command, Callable[[Graph, str, bool, float, Alive], list[Record]]] = {
    Command.START: lambda g, name, flag, now, alive: run(g, name, now, flag, owner_alive=alive),
    Command.START_ONCE: lambda g, name, flag, now, alive: run(g, name, now, flag, True, alive),
    Command.COMPLETE: lambda g, name, flag, now, _alive: g.complete(name, force=flag, now=now),
    Command.FAIL: lambda g, name, flag, now, _alive: g.fail(name, "", now=now, force=flag),
    Command.RESET: lambda g, name, flag, now, alive: g.reset(
        name, now=now, force=flag, owner_alive=lambda _name: alive
    ),
    Command.FORGET: lambda g, name, _flag, now, _alive: g.forget(name, now=now),
    Command.RESTARTING: lambda g, name, _flag, now, _alive: g.restarting(
        name, "", now=now, token=""
    ),
    Command.STOPPED: lambda g, name, _flag, now, _alive: g.stopped(name, "", now=now, token=""),
}
"""Each command of the table as the agent runs it; `flag` is its override (FLAGS), `alive`
what the agent's shell says of the owner of the unit's run."""
FLAGS = {
    Command.START: "rerun",
    Command.START_ONCE: "rerun",
    Command.COMPLETE: "force",
    Command.FAIL: "force",
    Command.RESET: "force",
}
"""The flag by which each command overrides a refusal."""
OWNERS: dict[str, tuple[Alive, frozenset[str]]] = {
    "no owner": (True, frozenset({NO_OWNER})),
    "owner runs": (True, frozenset()),
    "owner gone": (False, frozenset({OWNER_GONE})),
    "owner unseen": (None, frozenset()),
}
"""The owner of the unit's run, as the shell tells it, and the facts the table then gets:
none recorded, one that runs, one that is gone, one this agent cannot see."""


def graph_with(status: Status, owner: str = "no owner") -> Graph:
    """A graph holding unit `u` in `status` (or not holding it, for None), its run owned
    by a `run` process unless `owner` is "no owner"."""
    graph = AppliedGraph()
    if status is None:
        return graph
    graph.apply(Known("u", T0))
    if status != "pending":
        record = OwnerRecord(4242, 1, "sleep 600", "run") if owner != "no owner" else None
        graph.apply(Move("u", status, T0 + 1, owner=record))
    return graph


@pytest.mark.parametrize(("status", "command"), list(MOVES), ids=str)
@pytest.mark.parametrize("override", [False, True], ids=["plain", "override"])
@pytest.mark.parametrize("owner", OWNERS)
def test_every_move_of_the_table_is_what_the_graph_does(
    status: Status, command: Command, override: bool, owner: str
) -> None:
    """The graph does exactly what `machine.MOVES` says, for every (status, command) pair,
    whoever owns the unit's run."""
    graph = graph_with(status, owner)
    before = state(graph)
    alive, facts = OWNERS[owner]
    if status in (None, "pending"):
        facts = frozenset({NO_OWNER})  # no run, no owner
    flags = frozenset({FLAGS[command]} if override and command in FLAGS else ())
    expected = outcome(status, command, flags | facts)
    if isinstance(expected, Refuse):
        refused(expected.code, BY_TABLE[command], graph, "u", override, T0 + 2, alive)
        assert state(graph) == before  # a refusal changes nothing
        return
    records = BY_TABLE[command](graph, "u", override, T0 + 2, alive)
    if isinstance(expected, Drop):
        assert "u" not in graph.units
        return
    unit = graph.units["u"]
    if isinstance(expected, Stay):
        assert [r for r in records if isinstance(r, Move)] == []
        assert unit.status == (status or "pending")
        return
    assert unit.status == expected.to
    if OWNER_GONE in facts and not override and expected.reason == "new run":
        assert unit.reason.startswith("new run: its previous owner, `unitsync sync run` (pid")
    elif command is Command.RESET and override and not facts:  # it took a live run
        assert unit.reason == "reset --force"
    else:
        assert unit.reason == expected.reason
    assert unit.history[-1].from_ == (status or "pending")


def test_reset_of_every_unit_moves_each_as_the_table_says() -> None:
    """`reset --all` is one change, but each unit in it moves as `reset UNIT` would; those
    `reset UNIT` would refuse (a run whose owner still runs) are left alone and named."""
    graph = AppliedGraph()
    cases = [(status, owner) for status in STATES for owner in OWNERS]
    for status, owner in cases:
        name = f"{status}/{owner}"
        graph.apply(Known(name, T0))
        if status != "pending":
            record = OwnerRecord(4242, 1, "sleep 600", "run") if owner != "no owner" else None
            graph.apply(Move(name, status, T0 + 1, owner=record))
    _records, left_alone = graph.reset_all(
        now=T0 + 2, owner_alive=lambda name: OWNERS[name.split("/")[1]][0]
    )
    expected_left_alone = []
    for status, owner in cases:
        facts = OWNERS[owner][1] if status != "pending" else frozenset({NO_OWNER})
        expected = outcome(status, Command.RESET, facts)
        unit = graph.units[f"{status}/{owner}"]
        if isinstance(expected, Stay):
            assert unit.status == status and not unit.history  # nothing moved
        elif isinstance(expected, Refuse):
            assert unit.status == status and len(unit.history) == 1
            expected_left_alone.append(unit.name)
        else:
            assert (unit.status, unit.reason) == (expected.to, expected.reason)
    assert left_alone == expected_left_alone
    assert left_alone == [
        "started/owner runs",
        "started/owner unseen",
        "completed/owner runs",
        "completed/owner unseen",
    ]
    forced, left_alone = graph.reset_all(now=T0 + 3, force=True)
    assert left_alone == [] and len(forced) == 4
    assert {unit.status for unit in graph.units.values()} == {"pending"}


def test_the_table_covers_every_status_and_command() -> None:
    assert set(MOVES) == {(s, c) for s in (None, *STATES) for c in Command}
    overrides = {flag for r in MOVES.values() if isinstance(r, Refuse) for flag in r.overrides}
    assert overrides <= {*FLAGS.values(), OWNER_GONE, NO_OWNER}


def test_a_completed_unit_can_fail_and_its_dependents_see_it() -> None:
    """completed -> failed is legal (a service that was ready died): later starts fail."""
    graph = AppliedGraph()
    graph.want("app", ["db"], now=T0)
    run(graph, "db", T0 + 1)
    graph.complete("db", now=T0 + 2)
    graph.fail("db", "exited with status 1 after being ready", now=T0 + 3)
    assert graph.readiness("app").failed == "db"


# --- names ---------------------------------------------------------------------------------

CONTROL_CHARS = [chr(c) for c in range(0x20)] + ["\x7f"]


@pytest.mark.parametrize(
    "name",
    [
        "git",
        "claude code",
        "ünït",
        "x/y:z.service@1",
        "a b",  # U+0020 is the first character after the control range
        " a ",
        "~",  # U+007E is just below DEL
        "a" * 255,
        "é" * 127 + "a",  # 255 bytes
        "😀" * 63 + "abc",  # 255 bytes
    ],
)
def test_valid_names_are_accepted_everywhere(name: str) -> None:
    """Names up to the limit, with spaces and non-ASCII, are usable by every command."""
    check_name(name)
    graph = AppliedGraph()
    graph.want(name, ["dep"], now=T0)
    graph.complete("dep", force=True, now=T0)
    run(graph, name, T0 + 1)
    graph.complete(name, now=T0 + 2)
    assert unit_view(graph, name).status == "completed"


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "must not be empty"),
        ("a" * 256, "256 bytes long; the limit is 255 bytes"),
        ("é" * 128, "256 bytes long; the limit is 255 bytes"),
        ("😀" * 64, "256 bytes long; the limit is 255 bytes"),
        ("a" * 254 + "é", "256 bytes long; the limit is 255 bytes"),
        ("\ud800", "not valid UTF-8"),
    ],
)
def test_bad_names_are_refused_naming_the_rule(name: str, rule: str) -> None:
    """The message says which rule was broken, not just 'invalid'."""
    assert rule in refused("invalid", check_name, name).message


@pytest.mark.parametrize("char", CONTROL_CHARS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_every_control_character_is_refused(char: str, where: str) -> None:
    """U+0000-U+001F and U+007F are refused wherever they appear, and the message names them."""
    name = {"start": char + "unit", "middle": "un" + char + "it", "end": "unit" + char}[where]
    message = refused("invalid", check_name, name).message
    assert f"U+{ord(char):04X}" in message
    assert "control character" in message


INVISIBLE_OR_BREAKING = {
    "\u0085": "Cc",  # NEL: a line break to some terminals
    "\u2028": "Zl",
    "\u2029": "Zp",
    "\u202e": "Cf",  # a bidi override: the rest of the line shows reversed
    "\u200b": "Cf",  # zero width: two names that look the same
    "\ufeff": "Cf",
    "\u00ad": "Cf",  # a soft hyphen
}


@pytest.mark.parametrize("char", INVISIBLE_OR_BREAKING, ids=lambda c: f"U+{ord(c):04X}")
def test_invisible_and_line_breaking_characters_are_refused(char: str) -> None:
    """SPEC §12: Unicode categories Cc, Cf, Zl, Zp, wherever they are; the message names
    the character, its category's meaning and the whole rule."""
    message = refused("invalid", check_name, f"un{char}it").message
    assert f"U+{ord(char):04X}" in message
    assert "Cc, Cf, Zl, Zp" in message and "255 bytes" in message


@pytest.mark.parametrize("name", [" ", "   ", "\t", "\u3000", "\u00a0 "])
def test_a_name_of_whitespace_only_is_refused(name: str) -> None:
    message = refused("invalid", check_name, name).message
    assert "whitespace" in message or "control character" in message


def test_names_from_before_the_rules_stay_usable() -> None:
    """A journal may hold names today's rules refuse (a lone space, a zero-width space):
    they load, show, change and can be forgotten; only names new to the graph are checked."""
    old = [" ", "zero\u200bwidth", "nel\u0085x"]
    graph = AppliedGraph.from_images(
        [UnitImage(name, "pending", T0, "", [], []) for name in old]
        + [UnitImage("app", "pending", T0, "", [" "], [])]
    )
    for name in old:
        assert unit_view(graph, name).name == name
        run(graph, name, T0 + 1)
        graph.complete(name, now=T0 + 2)
    graph.want("app", [" ", "zero\u200bwidth"], now=T0 + 3)  # known names: no new rule applies
    refused("invalid", graph.want, "app", ["new\u200b"], now=T0 + 4)
    graph.forget("nel\u0085x", now=T0 + 5)
    assert "nel\u0085x" not in graph.units


def test_dependencies_per_unit_are_bounded() -> None:
    """A unit wants at most MAX_DEPS units: the want that would pass it is refused whole,
    naming the bound and what to do; wanting what it already wants stays a no-op."""
    graph = AppliedGraph()
    graph.want("big", [f"d{i}" for i in range(MAX_DEPS - 1)], now=T0)
    graph.want("big", ["last"], now=T0)
    before = state(graph)
    error = refused("invalid", graph.want, "big", ["one-more", "d1"], now=T0)
    assert f"would want {MAX_DEPS + 1} units" in error.message
    assert f"at most {MAX_DEPS}" in error.message and "group them" in error.message
    assert state(graph) == before
    graph.want("big", ["d1", "last"], now=T0)  # nothing new


def test_a_long_cycle_is_named_with_its_middle_counted() -> None:
    """The refusal of an edge closing a cycle of 2,000 units names its ends, not 2,000
    names (a reply must fit a frame, and a person reads it)."""
    graph = AppliedGraph()
    for i in range(2000):
        graph.want(f"c{i}", [f"c{i + 1}"], now=T0)
    message = refused("cycle", graph.want, "c2000", ["c0"], now=T0).message
    assert message.startswith("dependency would close a cycle: c2000 -> c0 -> c1 ->")
    assert "c15 -> (1,982 more) -> c1998" in message and message.endswith("c1999 -> c2000")
    assert len(message) < 500


def test_forget_names_some_of_many_that_still_want_a_unit() -> None:
    graph = AppliedGraph()
    for i in range(1000):
        graph.want(f"w{i:04d}", ["base"], now=T0)
    message = refused("in_use", graph.forget, "base", now=T0).message
    assert "w0000, w0001" in message and "and 980 more" in message and len(message) < 500


COMMANDS: dict[str, Callable[[Graph, str], Any]] = {
    "want unit": lambda g, n: g.want(n, ["ok"], now=T0),
    "want dep": lambda g, n: g.want("ok", ["fine", n], now=T0),
    "admit": lambda g, n: g.admit(n, now=T0),
    "start": lambda g, n: g.start(n, now=T0),
    "complete": lambda g, n: g.complete(n, force=True, now=T0),
    "fail": lambda g, n: g.fail(n, "why", now=T0),
    "reset": lambda g, n: g.reset(n, now=T0),
    "get": lambda g, n: g.get(n),
    "view": lambda g, n: unit_view(g, n),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", ["", "bad\nname", "x" * 256])
def test_every_command_validates_names_and_registers_nothing(command: str, name: str) -> None:
    """A bad name is refused by every command, before anything (even a good name) is known."""
    graph = AppliedGraph()
    graph.want("existing", ["other"], now=T0)
    before = state(graph)
    refused("invalid", COMMANDS[command], graph, name)
    assert state(graph) == before


# --- want ----------------------------------------------------------------------------------


def test_want_makes_every_named_unit_known_and_pending() -> None:
    """Units first named as a unit or as a dependency become known, pending, since `now`."""
    graph = AppliedGraph()
    records, notes = graph.want("claude", ["git", "node"], now=T0)
    assert notes == []
    assert records == [
        Known("claude", T0),
        Known("git", T0),
        Known("node", T0),
        Edge("claude", "git"),
        Edge("claude", "node"),
    ]
    for name in ("claude", "git", "node"):
        view = unit_view(graph, name)
        assert (view.status, view.since, view.history) == ("pending", T0, [])
    assert list(graph.units["claude"].deps) == ["git", "node"]
    assert unit_view(graph, "git").dependents == ["claude"]


def test_want_only_adds_what_is_new() -> None:
    """Known units are not re-registered; only the missing edges are added."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    records, _ = graph.want("a", ["b", "c"], now=T0 + 1)
    assert records == [Known("c", T0 + 1), Edge("a", "c")]
    assert graph.units["b"].since == T0  # not re-registered
    assert list(graph.units["a"].deps) == ["b", "c"]


def test_declaring_the_same_edge_again_is_a_no_op_success() -> None:
    """Repeating a want (or naming a dependency twice) changes nothing and returns no records."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    before = state(graph)
    assert graph.want("a", ["b"], now=T0 + 1) == ([], [])
    assert graph.want("a", ["b", "b"], now=T0 + 2) == ([], [])
    assert state(graph) == before


def test_a_dependency_named_twice_in_one_want_is_one_edge() -> None:
    """`want a b b` declares a single edge."""
    graph = AppliedGraph()
    records, _ = graph.want("a", ["b", "b"], now=T0)
    assert records.count(Edge("a", "b")) == 1
    assert list(graph.units["a"].deps) == ["b"]


def test_want_needs_a_dependency() -> None:
    """An empty dependency list is an argument error, not a silent success."""
    graph = AppliedGraph()
    refused("invalid", graph.want, "a", [], now=T0)
    assert graph.units == {}


@pytest.mark.parametrize("deps", [["a"], ["b", "a"], ["a", "b"]])
def test_a_unit_cannot_want_itself(deps: list[str]) -> None:
    """`want A A` is refused, also inside a longer list, and nothing is registered."""
    graph = AppliedGraph()
    error = refused("invalid", graph.want, "a", deps, now=T0)
    assert "itself" in error.message
    assert graph.units == {}


def test_a_two_unit_cycle_is_refused_with_its_path() -> None:
    """The shortest cycle is named in full."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    error = refused("cycle", graph.want, "b", ["a"], now=T0)
    assert "b -> a -> b" in error.message


def test_a_cycle_is_refused_naming_the_whole_cycle() -> None:
    """The message names every unit on the cycle, in dependency order: `c -> a -> b -> c`."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    graph.want("b", ["c"], now=T0)
    error = refused("cycle", graph.want, "c", ["a"], now=T0)
    assert error.message.endswith("c -> a -> b -> c")
    assert error.unit == "c"


def test_the_cycle_path_follows_real_edges_only() -> None:
    """With side branches around, the reported path is the actual cycle and nothing else."""
    graph = AppliedGraph()
    graph.want("a", ["x", "b"], now=T0)
    graph.want("x", ["y"], now=T0)
    graph.want("b", ["c", "z"], now=T0)
    graph.want("c", ["d"], now=T0)
    error = refused("cycle", graph.want, "d", ["a"], now=T0)
    path = error.message.rsplit(": ", 1)[1]
    assert path == "d -> a -> b -> c -> d"


def test_a_multi_dependency_want_is_all_or_nothing() -> None:
    """One bad dependency refuses the whole want: no new units, no new edges."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    before = state(graph)
    refused("cycle", graph.want, "b", ["fresh", "a"], now=T0 + 1)
    assert state(graph) == before
    refused("invalid", graph.want, "b", ["fresh", "bad\x00"], now=T0 + 1)
    assert state(graph) == before
    refused("invalid", graph.want, "new", ["fresh", ""], now=T0 + 1)
    assert state(graph) == before


@pytest.mark.parametrize("status", ["started", "completed"])
def test_want_on_a_running_or_done_unit_applies_to_its_next_start(status: str) -> None:
    """The edge is accepted, the unit keeps its state, the command says so, and the next start
    waits for the new dependency."""
    graph = AppliedGraph()
    run(graph, "web", T0)
    if status == "completed":
        graph.complete("web", now=T0 + 1)
    _, notes = graph.want("web", ["cache"], now=T0 + 2)
    assert len(notes) == 1
    assert f"already {status}" in notes[0] and "next start" in notes[0]
    assert graph.units["web"].status == status
    graph.admit("web", rerun=True, now=T0 + 3)
    assert graph.readiness("web").pending == ("cache",)


def test_want_on_a_pending_unit_or_a_repeated_edge_has_no_note() -> None:
    """The note is only for a new edge that cannot affect the current run."""
    graph = AppliedGraph()
    assert graph.want("a", ["b"], now=T0)[1] == []
    run(graph, "c", T0)
    graph.want("c", ["d"], now=T0)
    assert graph.want("c", ["d"], now=T0 + 1) == ([], [])


# --- readiness -----------------------------------------------------------------------------


def test_readiness_lists_pending_dependencies_in_declaration_order() -> None:
    """A waiter is told exactly what it still waits for, in the order it was declared."""
    graph = AppliedGraph()
    graph.want("app", ["db", "cache"], now=T0)
    graph.want("app", ["queue"], now=T0)
    assert graph.readiness("app").pending == ("db", "cache", "queue")
    run(graph, "cache", T0 + 1)
    assert graph.readiness("app").pending == ("db", "cache", "queue")  # started is not enough
    graph.complete("cache", now=T0 + 2)
    assert graph.readiness("app").pending == ("db", "queue")
    assert not graph.readiness("app").ready
    graph.complete("db", force=True, now=T0 + 3)
    graph.complete("queue", force=True, now=T0 + 3)
    readiness = graph.readiness("app")
    assert readiness.ready and readiness.pending == () and readiness.failed is None


def test_readiness_reports_a_failed_dependency() -> None:
    """A failed dependency makes the unit not ready and is named, so the waiter can fail."""
    graph = AppliedGraph()
    graph.want("app", ["db", "queue"], now=T0)
    graph.complete("db", force=True, now=T0)
    graph.fail("queue", "oom", now=T0 + 1)
    readiness = graph.readiness("app")
    assert readiness.failed == "queue"
    assert not readiness.ready


def test_a_dependency_going_back_to_pending_makes_the_unit_wait_again() -> None:
    """Readiness follows the current state of dependencies, not their past."""
    graph = AppliedGraph()
    graph.want("app", ["db"], now=T0)
    graph.complete("db", force=True, now=T0)
    assert graph.readiness("app").ready
    graph.reset("db", now=T0 + 1)
    assert graph.readiness("app").pending == ("db",)


def test_a_unit_without_dependencies_is_ready() -> None:
    """Nothing to wait for: ready at once, also before it is known."""
    graph = AppliedGraph()
    assert graph.readiness("anything").ready
    graph.want("a", ["b"], now=T0)
    assert graph.readiness("b").ready


# --- admit and start -----------------------------------------------------------------------


def test_start_registers_a_new_unit_and_records_the_transition() -> None:
    """`start` on an unknown unit makes it known, then moves it pending -> started."""
    graph = AppliedGraph()
    records = graph.admit("a", now=T0)
    assert records == [Known("a", T0)]
    records = graph.start("a", now=T0 + 2, token="tok", waited=2.0)
    assert records == [Move("a", "started", T0 + 2, "", "tok", 2.0)]
    unit = graph.units["a"]
    assert (unit.status, unit.since, unit.token) == ("started", T0 + 2, "tok")
    [transition] = unit.history
    assert (transition.from_, transition.to, transition.waited) == ("pending", "started", 2.0)


def test_admit_of_a_known_unit_that_may_start_changes_nothing() -> None:
    """Admission only registers; the transition happens in `start`."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    before = state(graph)
    assert graph.admit("a", now=T0 + 1) == []
    assert graph.admit("b", rerun=True, now=T0 + 1) == []
    assert state(graph) == before


def test_starting_a_started_unit_is_refused_with_its_start_time_and_a_hint() -> None:
    """'already started at T' shows when it started (not now) and suggests --rerun."""
    graph = AppliedGraph()
    started_at = T0
    run(graph, "a", started_at)
    before = state(graph)
    later = started_at + 5 * 3600 + 7
    error = refused("already_started", graph.admit, "a", now=later)
    assert "already started at" in error.message
    assert clock(started_at) in error.message
    assert clock(later) not in error.message
    assert "--rerun" in error.message
    assert error.unit == "a"
    assert state(graph) == before


def test_rerun_starts_a_new_run_of_a_started_unit() -> None:
    """With --rerun a started unit starts again: a started -> started transition, new token."""
    graph = AppliedGraph()
    graph.admit("a", now=T0)
    graph.start("a", now=T0, token="first")
    graph.admit("a", rerun=True, now=T0 + 1)
    graph.start("a", rerun=True, now=T0 + 1, token="second")
    assert moves(graph, "a") == [
        (T0, "pending", "started", ""),
        (T0 + 1, "started", "started", "new run"),
    ]
    assert graph.units["a"].token == "second"


@pytest.mark.parametrize("end", ["completed", "failed"])
def test_start_after_the_end_begins_a_new_run(end: str) -> None:
    """A completed or failed unit can be started again without --rerun."""
    graph = AppliedGraph()
    run(graph, "a", T0)
    if end == "completed":
        graph.complete("a", now=T0 + 1)
    else:
        graph.fail("a", "crash", now=T0 + 1)
    run(graph, "a", T0 + 2)
    assert graph.units["a"].status == "started"
    assert moves(graph, "a")[-1] == (T0 + 2, end, "started", "new run")


def test_a_new_run_of_a_dependency_leaves_started_dependents_alone() -> None:
    """Restarting `db` does not touch an `app` already running, but new starts wait again."""
    graph = AppliedGraph()
    graph.want("app", ["db"], now=T0)
    run(graph, "db", T0)
    graph.complete("db", now=T0 + 1)
    run(graph, "app", T0 + 2)
    run(graph, "db", T0 + 3)
    assert graph.units["app"].status == "started"
    assert graph.readiness("app").pending == ("db",)


def test_a_waiter_that_lost_the_race_is_refused_at_start() -> None:
    """Two `start A` wait together; after the first proceeds, the second is refused."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    graph.admit("a", now=T0)  # first client waits
    graph.admit("a", now=T0)  # second client waits too: a is still pending
    graph.complete("b", force=True, now=T0 + 1)
    graph.start("a", now=T0 + 1)
    before = state(graph)
    refused("already_started", graph.start, "a", now=T0 + 2)
    assert state(graph) == before


def test_the_agent_fails_a_unit_whose_dependency_failed() -> None:
    """The agent's failure path: `dependency B failed` on A, which cascades to A's dependents."""
    graph = AppliedGraph()
    graph.want("app", ["db"], now=T0)
    graph.want("web", ["app"], now=T0)
    graph.admit("app", now=T0)
    graph.fail("db", "disk full", now=T0 + 1)
    failed = graph.readiness("app").failed
    assert failed == "db"
    graph.fail("app", f"dependency {failed} failed", now=T0 + 1)
    assert unit_view(graph, "app").reason == "dependency db failed"
    assert graph.readiness("web").failed == "app"


def test_start_before_ready_is_a_programming_error_not_a_state_change() -> None:
    """The agent must wait first; calling start early must not silently start the unit."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    before = state(graph)
    with pytest.raises(AssertionError):
        graph.start("a", now=T0)
    assert state(graph) == before


# --- complete ------------------------------------------------------------------------------


def test_complete_a_started_unit() -> None:
    """The normal path: started -> completed, reason empty."""
    graph = AppliedGraph()
    run(graph, "a", T0)
    assert graph.complete("a", now=T0 + 1) == [Move("a", "completed", T0 + 1)]
    assert moves(graph, "a")[-1] == (T0 + 1, "started", "completed", "")


def test_completing_a_completed_unit_is_a_no_op() -> None:
    """No records, no history entry, even with --force."""
    graph = AppliedGraph()
    run(graph, "a", T0)
    graph.complete("a", now=T0 + 1)
    before = state(graph)
    assert graph.complete("a", now=T0 + 2) == []
    assert graph.complete("a", force=True, now=T0 + 3) == []
    assert state(graph) == before


def test_completing_a_never_started_unit_is_refused() -> None:
    """A known but pending unit: refused, suggesting --force (it catches misspelt names)."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    before = state(graph)
    error = refused("not_started", graph.complete, "b", now=T0 + 1)
    assert "never started" in error.message and "--force" in error.message
    assert state(graph) == before


def test_completing_an_unknown_unit_is_refused_and_registers_nothing() -> None:
    """A typo must not create a unit."""
    graph = AppliedGraph()
    graph.want("git", ["net"], now=T0)
    error = refused("not_started", graph.complete, "gti", now=T0)
    assert "not known" in error.message and "--force" in error.message
    assert "gti" not in graph.units


def test_force_completes_a_pending_unit() -> None:
    """--force: pending -> completed with reason 'forced', waking its dependents."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    graph.complete("b", force=True, now=T0 + 1)
    assert moves(graph, "b") == [(T0 + 1, "pending", "completed", "forced")]
    assert graph.readiness("a").ready


def test_force_completes_and_registers_an_unknown_unit() -> None:
    """--force on an unknown unit registers it, then completes it."""
    graph = AppliedGraph()
    records = graph.complete("new", force=True, now=T0)
    assert records == [Known("new", T0), Move("new", "completed", T0, "forced")]
    assert unit_view(graph, "new").status == "completed"


def test_a_failed_unit_can_be_completed() -> None:
    """A failed run was started, so completing it needs no --force."""
    graph = AppliedGraph()
    run(graph, "a", T0)
    graph.fail("a", "flaky", now=T0 + 1)
    graph.complete("a", now=T0 + 2)
    assert moves(graph, "a")[-1] == (T0 + 2, "failed", "completed", "")
    assert unit_view(graph, "a").reason == ""  # the old failure reason no longer shows


# --- fail ----------------------------------------------------------------------------------


def test_fail_records_the_reason() -> None:
    """The reason is on the unit, in its history and in its view."""
    graph = AppliedGraph()
    run(graph, "db", T0)
    assert graph.fail("db", "disk full", now=T0 + 1) == [Move("db", "failed", T0 + 1, "disk full")]
    view = unit_view(graph, "db")
    assert (view.status, view.reason, view.since) == ("failed", "disk full", T0 + 1)
    assert moves(graph, "db")[-1] == (T0 + 1, "started", "failed", "disk full")


def test_fail_of_an_unknown_unit_needs_force_and_the_reason_is_optional() -> None:
    """A typo must not become a failed unit forever; `--force` declares a failure on purpose."""
    graph = AppliedGraph()
    error = refused("unknown_unit", graph.fail, "new", "", now=T0)
    assert "use --force" in error.message
    assert "new" not in graph.units
    assert graph.fail("new", "", now=T0, force=True) == [
        Known("new", T0),
        Move("new", "failed", T0, ""),
    ]
    assert unit_view(graph, "new").status == "failed"


def test_reasons_are_bounded_in_bytes() -> None:
    """A reason of 4096 UTF-8 bytes is kept; one byte more is refused without a change."""
    graph = AppliedGraph()
    longest = "é" * (MAX_REASON_BYTES // 2)
    graph.fail("a", longest, now=T0, force=True)
    assert graph.units["a"].reason == longest
    before = state(graph)
    error = refused("invalid", graph.fail, "a", longest + "x", now=T0 + 1)
    assert str(MAX_REASON_BYTES) in error.message
    assert state(graph) == before


# --- reset ---------------------------------------------------------------------------------


def test_reset_one_unit_back_to_pending_keeping_edges() -> None:
    """Only the named unit moves; its edges in both directions stay."""
    graph = AppliedGraph()
    graph.want("app", ["db"], now=T0)
    graph.want("web", ["app"], now=T0)
    graph.complete("db", force=True, now=T0)
    run(graph, "app", T0 + 1)
    assert graph.reset("app", now=T0 + 2) == [Move("app", "pending", T0 + 2, "reset")]
    assert moves(graph, "app")[-1] == (T0 + 2, "started", "pending", "reset")
    assert graph.units["db"].status == "completed"
    assert list(graph.units["app"].deps) == ["db"]
    assert unit_view(graph, "app").dependents == ["web"]


def test_reset_all_moves_every_unit_that_is_not_pending() -> None:
    """`reset --all` leaves every unit pending and every edge in place."""
    graph = AppliedGraph()
    graph.want("a", ["b", "c"], now=T0)
    graph.complete("b", force=True, now=T0)
    graph.fail("c", "x", now=T0)
    graph.want("d", ["a"], now=T0)
    records, _left_alone = graph.reset_all(now=T0 + 1)
    assert sorted(r.unit for r in records) == ["b", "c"]
    assert all(isinstance(r, Move) and r.reason == "reset" for r in records)
    assert {u.status for u in graph.units.values()} == {"pending"}
    assert {n: list(u.deps) for n, u in graph.units.items()} == {
        "a": ["b", "c"],
        "b": [],
        "c": [],
        "d": ["a"],
    }
    assert graph.reset_all(now=T0 + 2) == ([], [])
    assert AppliedGraph().reset_all(now=T0) == ([], [])


def test_reset_of_a_pending_unit_is_a_no_op_and_of_an_unknown_unit_is_refused() -> None:
    """No pending -> pending transitions; `reset` of a never-named unit (a typo) is refused."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    assert graph.reset("a", now=T0 + 1) == []
    assert graph.units["a"].history.maxlen == HISTORY_LIMIT
    assert list(graph.units["a"].history) == []
    error = refused("unknown_unit", graph.reset, "new", now=T0 + 2)
    assert "check the name" in error.message and "--force" not in error.message
    assert "new" not in graph.units


def test_a_reset_unit_must_be_started_again_before_complete() -> None:
    """After reset the unit is pending again, so the never-started guard applies."""
    graph = AppliedGraph()
    run(graph, "a", T0)
    graph.reset("a", now=T0 + 1)
    error = refused("not_started", graph.complete, "a", now=T0 + 2)
    assert "has not been started since it was reset" in error.message


# --- history -------------------------------------------------------------------------------


def test_history_records_every_transition_with_time_from_to_and_reason() -> None:
    """The full life of a unit, as `status` would show it."""
    graph = AppliedGraph()
    run(graph, "a", T0)
    graph.fail("a", "crash", now=T0 + 1)
    run(graph, "a", T0 + 2)
    graph.complete("a", now=T0 + 3)
    graph.complete("a", now=T0 + 4)  # no-op: no entry
    graph.reset("a", now=T0 + 5)
    graph.complete("a", force=True, now=T0 + 6)
    assert moves(graph, "a") == [
        (T0, "pending", "started", ""),
        (T0 + 1, "started", "failed", "crash"),
        (T0 + 2, "failed", "started", "new run"),
        (T0 + 3, "started", "completed", ""),
        (T0 + 5, "completed", "pending", "reset"),
        (T0 + 6, "pending", "completed", "forced"),
    ]
    assert unit_view(graph, "a").history == [transition(e) for e in graph.units["a"].history]


def test_history_keeps_the_newest_100_entries() -> None:
    """A long-lived unit does not grow without bound; the oldest entries go first."""
    graph = AppliedGraph()
    total = HISTORY_LIMIT + 37
    for i in range(total):
        graph.fail("a", f"attempt {i}", now=T0 + i, force=True)
    history = graph.units["a"].history
    assert HISTORY_LIMIT == 100
    assert len(history) == 100
    assert [t.reason for t in history] == [f"attempt {i}" for i in range(total - 100, total)]
    assert history[-1].at == T0 + total - 1
    # The cap survives a snapshot round trip and a replay.
    restored = AppliedGraph.from_images(graph.images())
    assert list(restored.units["a"].history) == list(history)
    restored.fail("a", "one more", now=T0 + total)
    assert len(restored.units["a"].history) == 100
    assert restored.units["a"].history[0].reason == f"attempt {total - 99}"


# --- view and get --------------------------------------------------------------------------


def test_view_shows_status_dependencies_dependents_and_readiness() -> None:
    """Everything `status UNIT` shows, for a unit in the middle of a graph."""
    graph = AppliedGraph()
    graph.want("app", ["db", "cache"], now=T0)
    graph.want("web", ["app"], now=T0)
    graph.want("worker", ["app"], now=T0)
    run(graph, "db", T0 + 1)
    graph.complete("cache", force=True, now=T0 + 2)
    view = unit_view(graph, "app", waiting_on=["db"], waiters=2)
    assert (view.name, view.status, view.ready, view.since) == ("app", "pending", False, T0)
    assert [(d.unit, d.required, d.current, d.satisfied) for d in view.dependencies] == [
        ("db", "completed", "started", False),
        ("cache", "completed", "completed", True),
    ]
    assert view.dependents == ["web", "worker"]
    assert (view.waiting_on, view.waiters) == (["db"], 2)
    graph.complete("db", now=T0 + 3)
    view = unit_view(graph, "app")
    assert view.ready and all(d.satisfied for d in view.dependencies)
    assert (view.waiting_on, view.waiters) == ([], 0)


def test_view_of_a_unit_with_a_failed_dependency_is_not_ready() -> None:
    """A failed dependency shows as unsatisfied with its current state."""
    graph = AppliedGraph()
    graph.want("app", ["db"], now=T0)
    graph.fail("db", "x", now=T0)
    view = unit_view(graph, "app")
    assert not view.ready
    assert [(d.current, d.satisfied) for d in view.dependencies] == [("failed", False)]


def test_status_of_an_unknown_unit_is_an_error() -> None:
    """`get`/`view` of a never-named unit: code unknown_unit, message 'unknown unit'."""
    graph = AppliedGraph()
    graph.want("a", ["b"], now=T0)
    for fn in (graph.get, lambda name: unit_view(graph, name)):
        error = refused("unknown_unit", fn, "ghost")
        assert "unknown unit" in error.message and "ghost" in error.message
        assert error.unit == "ghost"
    assert "ghost" not in graph.units
    assert graph.get("b").name == "b"


# --- refusals change nothing ---------------------------------------------------------------

REFUSALS: dict[str, tuple[str, Callable[[Graph], Any]]] = {
    "bad unit name": ("invalid", lambda g: g.want("x\x1f", ["app"], now=T0 + 9)),
    "bad dep name": ("invalid", lambda g: g.want("app", ["new", ""], now=T0 + 9)),
    "self dependency": ("invalid", lambda g: g.want("app", ["new", "app"], now=T0 + 9)),
    "no dependency": ("invalid", lambda g: g.want("app", [], now=T0 + 9)),
    "cycle": ("cycle", lambda g: g.want("db", ["new", "web"], now=T0 + 9)),
    "already started": ("already_started", lambda g: g.admit("web", now=T0 + 9)),
    "start already started": ("already_started", lambda g: g.start("solo", now=T0 + 9)),
    "complete pending": ("not_started", lambda g: g.complete("app", now=T0 + 9)),
    "complete unknown": ("not_started", lambda g: g.complete("new", now=T0 + 9)),
    "long reason": ("invalid", lambda g: g.fail("new", "r" * 5000, now=T0 + 9, force=True)),
    "fail unknown": ("unknown_unit", lambda g: g.fail("new", "typo", now=T0 + 9)),
    "bad reset name": ("invalid", lambda g: g.reset("\x7f", now=T0 + 9)),
    "reset unknown": ("unknown_unit", lambda g: g.reset("new", now=T0 + 9)),
    "forget unknown": ("unknown_unit", lambda g: g.forget("new", now=T0 + 9)),
    "forget wanted": ("in_use", lambda g: g.forget("db", now=T0 + 9)),
    "forget started": ("in_use", lambda g: g.forget("solo", now=T0 + 9)),
    "unknown status": ("unknown_unit", lambda g: unit_view(g, "new")),
}


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_refused_command_leaves_the_graph_unchanged(refusal: str) -> None:
    """All-or-nothing: a refusal neither adds units or edges nor moves anything."""
    graph = AppliedGraph()
    run(graph, "web", T0)
    graph.want("web", ["app"], now=T0 + 1)
    graph.want("app", ["db"], now=T0 + 1)
    graph.complete("db", force=True, now=T0 + 2)
    graph.fail("other", "x", now=T0 + 3, force=True)
    run(graph, "solo", T0 + 4)
    code, command = REFUSALS[refusal]
    before, images = state(graph), list(graph.images())
    refused(code, command, graph)
    assert state(graph) == before
    assert list(graph.images()) == images


# --- replay and snapshots ------------------------------------------------------------------


def _scripted(graph: Graph) -> list[Record]:
    """A session touching every command and record kind; returns the records it applied."""
    log: list[Record] = []
    log += graph.want("app", ["db", "cache"], now=T0)[0]
    log += graph.want("web", ["app"], now=T0 + 1)[0]
    log += graph.admit("db", now=T0 + 2)
    log += graph.start("db", now=T0 + 2, token="t1", waited=0.5)
    log += graph.complete("db", now=T0 + 3)
    log += graph.complete("cache", force=True, now=T0 + 4)
    log += graph.admit("app", now=T0 + 5)
    log += graph.start("app", now=T0 + 6, token="t2", waited=1.0)
    log += graph.want("app", ["late"], now=T0 + 7)[0]
    log += graph.fail("app", "boom", now=T0 + 8)
    log += graph.admit("app", now=T0 + 9)
    log += graph.fail("app", "dependency late failed", now=T0 + 9)
    log += graph.reset("db", now=T0 + 10)
    log += graph.admit("db", rerun=True, now=T0 + 11)
    log += graph.start("db", rerun=True, now=T0 + 11, token="t3")
    log += graph.admit("db", rerun=True, now=T0 + 12)
    log += graph.start("db", rerun=True, now=T0 + 12, token="t4")
    log += graph.fail("ghost", "never existed", now=T0 + 13, force=True)
    log += graph.want("typo", ["ghost"], now=T0 + 13)[0]
    log += graph.forget("typo", now=T0 + 13)
    log += graph.reset_all(now=T0 + 14)[0]
    log += graph.complete("late", force=True, now=T0 + 15)
    return log


def test_replaying_the_returned_records_rebuilds_the_same_graph() -> None:
    """The journal is exactly the returned records: replay must reproduce every detail."""
    graph = AppliedGraph()
    log = _scripted(graph)
    assert {type(r) for r in log} == {Known, Edge, Move, Forget}
    replica = Graph()
    for record in log:
        replica.apply(record)
    assert list(replica.images()) == list(graph.images())
    assert state(replica) == state(graph)


def test_replay_through_msgpack_as_the_journal_stores_records() -> None:
    """Records survive msgspec msgpack encoding and still replay to the same graph."""
    graph = AppliedGraph()
    log = _scripted(graph)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(log), type=list[Record])
    assert decoded == log
    replica = Graph()
    for record in decoded:
        replica.apply(record)
    assert state(replica) == state(graph)


def test_snapshots_round_trip_through_msgpack() -> None:
    """from_images(images()) restores units, edges, dependents, history and tokens exactly."""
    graph = AppliedGraph()
    _scripted(graph)
    images = list(graph.images())
    encoded = msgspec.msgpack.encode(images)
    decoded = msgspec.msgpack.decode(encoded, type=list[UnitImage])
    assert decoded == images
    restored = AppliedGraph.from_images(decoded)
    assert list(restored.images()) == images
    assert state(restored) == state(graph)
    # The restored graph keeps working like the original.
    assert unit_view(restored, "web") == unit_view(graph, "web")
    for g in (graph, restored):
        g.want("cache", ["extra"], now=T0 + 20)
        refused("cycle", g.want, "late", ["web"], now=T0 + 21)
    assert state(restored) == state(graph)


def test_a_replay_continues_from_a_snapshot() -> None:
    """Snapshot then the tail of the log gives the same graph as the whole log (compaction)."""
    graph = AppliedGraph()
    log = _scripted(graph)
    partial = Graph()
    for record in log[:12]:
        partial.apply(record)
    resumed = Graph.from_images(list(partial.images()))
    for record in log[12:]:
        resumed.apply(record)
    assert state(resumed) == state(graph)


# --- model-based: the graph against a deliberately simple model ------------------------------

VALID = ["a", "b", "c", "d", "e"]
INVALID = ["", "tab\there", "del\x7f", "é" * 128, "\ud800"]
NAMES = st.sampled_from(VALID * 10 + INVALID)
"""Mostly valid names, an invalid one about one time in eleven."""
REASONS = st.sampled_from(["", "boom", "disk full", "é" * 2048, "é" * 2049])
RUN_OWNER = OwnerRecord(4242, 1, "sleep 600", "run")
"""The owner every owned run of the model has: what matters is what the shell says of it."""
OWNER_SAYS: dict[str, bool | None] = {"runs": True, "gone": False, "unseen": None}
"""What the agent's shell says of an owner, by the model's word for it."""
GONE_REASON = "new run: its previous owner, `unitsync sync run` (pid 4242, sleep 600), is gone"


@dataclass
class ModelUnit:
    since: float
    status: str = "pending"
    reason: str = ""
    token: str = ""
    deps: list[str] = field(default_factory=list)
    history: list[tuple[float, str, str, str, float | None]] = field(default_factory=list)
    owner: str | None = None
    """The owner of the current run: None (none recorded), or a key of OWNER_SAYS."""
    old_tokens: list[str] = field(default_factory=list)
    """The tokens of its earlier runs: their reports are a superseded run's."""

    @property
    def owner_lives(self) -> bool:
        """Its run's owner runs, or cannot be seen: nothing takes the run from it."""
        return self.owner in ("runs", "unseen")


class Model:
    """Plain dicts and lists; cycles by transitive closure. Slow and obviously right."""

    def __init__(self) -> None:
        self.units: dict[str, ModelUnit] = {}

    def know(self, name: str, at: float) -> None:
        if name not in self.units:
            self.units[name] = ModelUnit(since=at)

    def move(
        self,
        name: str,
        to: str,
        at: float,
        reason: str = "",
        waited: float | None = None,
        owner: str | None = None,
    ) -> None:
        """Every move records who owns the run from then on; none unless told (`owner`)."""
        unit = self.units[name]
        unit.history.append((at, unit.status, to, reason, waited))
        unit.status, unit.since, unit.reason = to, at, reason
        unit.owner = owner

    def new_run(self, name: str, token: str) -> None:
        unit = self.units[name]
        if unit.token:
            unit.old_tokens.append(unit.token)
        unit.token = token

    def current_token(self, name: str) -> str:
        """The token of the unit's current run ("" if it has none: pending, or never ran)."""
        unit = self.units.get(name)
        return unit.token if unit is not None and unit.status != "pending" else ""

    def stale_tokens(self, name: str) -> list[str]:
        """Tokens of its runs that are not current: earlier ones, and a pending unit's last."""
        unit = self.units.get(name)
        if unit is None:
            return []
        last = [unit.token] if unit.status == "pending" and unit.token else []
        return unit.old_tokens + last

    def status(self, name: str) -> str | None:
        return self.units[name].status if name in self.units else None

    def deps(self, name: str) -> list[str]:
        return self.units[name].deps if name in self.units else []

    def closure(self, start: str) -> set[str]:
        """`start` and every unit it transitively wants."""
        seen = {start}
        changed = True
        while changed:
            changed = False
            for node in list(seen):
                for dep in self.deps(node):
                    if dep not in seen:
                        seen.add(dep)
                        changed = True
        return seen

    def failed_deps(self, name: str) -> list[str]:
        return [d for d in self.deps(name) if self.units[d].status == "failed"]

    def pending_deps(self, name: str) -> list[str]:
        return [d for d in self.deps(name) if self.units[d].status != "completed"]


def invalid(*names: str) -> bool:
    return any(name in INVALID for name in names)


class GraphMachine(RuleBasedStateMachine):
    """Random commands against Graph and Model; refusals must agree, and so must the state."""

    def __init__(self) -> None:
        super().__init__()
        self.graph = Graph()  # plain: `expect` applies what each command decides
        self.replica = Graph()
        self.model = Model()
        self.clock = T0
        self.tokens = 0
        self.waiters: list[tuple[str, bool, float]] = []
        """`start`s admitted and waiting: (unit, rerun, admitted at)."""

    def now(self) -> float:
        self.clock += 1.0
        return self.clock

    def expect(self, code: str | None, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run a command; it must be refused exactly when the model says, with its code. It
        only decides: the records it returns are applied here, as its store would."""
        before = state(self.graph)
        try:
            result = fn(*args, **kw)
        except Refused as exc:
            assert exc.code == code, f"refused with {exc.code} ({exc.message}); model: {code}"
            assert state(self.graph) == before, "a refusal changed the graph"
            return exc
        assert code is None, f"accepted; the model expected a refusal ({code})"
        assert state(self.graph) == before, "deciding changed the graph"
        records = result[0] if isinstance(result, tuple) else result
        if isinstance(records, list):  # a command (not a query)
            for record in records:
                self.graph.apply(record)
            # The journal path: encode, decode, apply to a second graph.
            wire = msgspec.msgpack.encode(records)
            for record in msgspec.msgpack.decode(wire, type=list[Record]):
                self.replica.apply(record)
        return result

    @rule(unit=NAMES, deps=st.lists(NAMES, min_size=1, max_size=3), keep_self=st.integers(0, 7))
    def want(self, unit: str, deps: list[str], keep_self: int) -> None:
        """Declare edges. A unit naming itself is kept one time in eight, else dropped (which
        may leave no dependency at all): enough refusals without starving the graph of edges."""
        if keep_self:
            deps = [d for d in deps if d != unit]
        m = self.model
        new = [d for d in dict.fromkeys(deps) if d not in m.deps(unit)]
        if not deps or invalid(unit, *deps) or unit in deps:
            code = "invalid"
        elif any(unit in m.closure(d) for d in new):
            code = "cycle"
        else:
            code = None
        result = self.expect(code, self.graph.want, unit, deps, now=self.now())
        if code == "cycle":
            self.check_cycle_message(unit, deps, result.message)
        if code is not None:
            return
        records, notes = result
        status = m.status(unit)
        assert bool(records) == (status is None or bool(new))
        if new and status in ("started", "completed", "failed"):
            assert len(notes) == 1 and f"already {status}" in notes[0]
        else:
            assert notes == []
        for name in (unit, *deps):
            m.know(name, self.clock)
        m.units[unit].deps.extend(new)

    def check_cycle_message(self, unit: str, deps: list[str], message: str) -> None:
        """The message names a real cycle: the new edge, then existing edges back to `unit`."""
        path = message.rsplit(": ", 1)[1].split(" -> ")
        assert path[0] == unit == path[-1], message
        assert path[1] in deps, message
        for src, dst in pairwise(path[1:]):
            assert dst in self.model.deps(src), f"{src} -> {dst} is not an edge: {message}"
        assert len(set(path[:-1])) == len(path) - 1, f"path repeats a unit: {message}"

    def owner_alive(self, unit: str) -> bool | None:
        """What the agent's shell says of the owner of `unit`'s run (True when it has none)."""
        found = self.model.units.get(unit)
        return OWNER_SAYS[found.owner] if found is not None and found.owner else True

    def start_refused(self, unit: str, rerun: bool) -> bool:
        """One run at a time: a started unit's run goes on unless its owner is gone (none
        recorded: it may still run), a completed one's while its owner lives."""
        found = self.model.units.get(unit)
        if found is None or rerun:
            return False
        if found.status == "started":
            return found.owner != "gone"
        return found.status == "completed" and found.owner_lives

    @rule(unit=NAMES, rerun=st.booleans())
    def admit(self, unit: str, rerun: bool) -> None:
        m = self.model
        if invalid(unit):
            code = "invalid"
        elif self.start_refused(unit, rerun):
            code = "already_started"
        else:
            code = None
        alive = self.owner_alive(unit)
        result = self.expect(
            code, self.graph.admit, unit, now=self.now(), rerun=rerun, owner_alive=alive
        )
        if code is None:
            assert bool(result) == (m.status(unit) is None)
            m.know(unit, self.clock)
            self.waiters.append((unit, rerun, self.clock))

    @rule(unit=NAMES, rerun=st.booleans(), owned=st.booleans())
    def start(self, unit: str, rerun: bool, owned: bool) -> None:
        """`start` of a unit with nothing to wait for: admit and proceed in one step."""
        waiting = len(self.waiters)
        self.admit(unit, rerun)
        if len(self.waiters) > waiting:
            self.proceed(len(self.waiters) - 1, owned)

    @precondition(lambda self: self.waiters)
    @rule(index=st.integers(0, 7), owned=st.booleans())
    def proceed(self, index: int, owned: bool) -> None:
        """The agent's side of a waiting `start`: fail, start, or keep waiting. `owned`: the
        new run has an owner (a `run`, a script), as every CLI start has."""
        m = self.model
        unit, rerun, admitted = self.waiters[index % len(self.waiters)]
        readiness = self.graph.readiness(unit)
        failed, pending = m.failed_deps(unit), m.pending_deps(unit)
        if failed:
            assert readiness.failed in failed and not readiness.ready
            reason = f"dependency {readiness.failed} failed"
            self.expect(None, self.graph.fail, unit, reason, now=self.now())
            m.move(unit, "failed", self.clock, reason)
        elif pending:
            assert readiness.failed is None and not readiness.ready
            assert readiness.pending == tuple(pending)
            return  # still waiting
        else:
            assert readiness.ready
            code = "already_started" if self.start_refused(unit, rerun) else None
            now = self.now()
            self.tokens += 1
            token = f"tok{self.tokens}"
            self.expect(
                code,
                self.graph.start,
                unit,
                now=now,
                token=token,
                waited=now - admitted,
                rerun=rerun,
                owner=RUN_OWNER if owned else None,
                owner_alive=self.owner_alive(unit),
            )
            if code is None:
                before = m.units[unit]
                if before.status == "pending":
                    reason = ""
                elif before.owner == "gone" and not rerun:
                    reason = GONE_REASON
                else:
                    reason = "new run"
                m.move(unit, "started", now, reason, now - admitted, "runs" if owned else None)
                m.new_run(unit, token)
        self.waiters.remove((unit, rerun, admitted))

    @rule(unit=st.sampled_from(VALID), says=st.sampled_from(sorted(OWNER_SAYS)))
    def owner_changes(self, unit: str, says: str) -> None:
        """The owner of a unit's run exits, or is seen again, or cannot be seen: nothing in
        the graph changes, but what the shell tells its commands does."""
        found = self.model.units.get(unit)
        if found is not None and found.owner is not None:
            found.owner = says

    @rule(unit=st.sampled_from(VALID))
    def ready(self, unit: str) -> None:
        """The `run` of a unit's current run says its service is ready: completed, and the
        run goes on owning it."""
        found = self.model.units.get(unit)
        token = self.model.current_token(unit)
        if found is None or not token:
            return  # no run to report on
        self.expect(
            None,
            lambda: self.graph.complete(unit, now=self.now(), keep_owner=True, token=token),
        )
        if found.status != "completed":
            self.model.move(unit, "completed", self.clock, "", owner=found.owner)

    @rule(
        unit=NAMES,
        kind=st.sampled_from(["complete", "ready", "fail", "reason"]),
        pick=st.integers(0, 7),
    )
    def superseded_report(self, unit: str, kind: str, pick: int) -> None:
        """A report carrying a token that is not the unit's current run's (an earlier run's,
        a pending unit's last, or one never issued): it changes nothing, in every state."""
        stale = [*self.model.stale_tokens(unit), "never issued"]
        token = stale[pick % len(stale)]
        now = self.now()
        report = {
            "complete": lambda: self.graph.complete(unit, now=now, token=token),
            "ready": lambda: self.graph.complete(unit, now=now, keep_owner=True, token=token),
            "fail": lambda: self.graph.fail(unit, "boom", now=now, token=token),
            "reason": lambda: self.graph.set_reason(unit, "booting", token=token),
        }[kind]
        before, images = state(self.graph), list(self.graph.images())
        result = self.expect("invalid" if invalid(unit) else None, report)
        if not invalid(unit):
            assert result == []
            assert state(self.graph) == before and list(self.graph.images()) == images

    @rule(unit=NAMES, force=st.booleans())
    def complete(self, unit: str, force: bool) -> None:
        m = self.model
        status = m.status(unit)
        if invalid(unit):
            code = "invalid"
        elif status in (None, "pending") and not force:
            code = "not_started"
        else:
            code = None
        result = self.expect(code, self.graph.complete, unit, now=self.now(), force=force)
        if code is None:
            assert (result == []) == (status == "completed")
            if status != "completed":
                m.know(unit, self.clock)
                m.move(
                    unit, "completed", self.clock, "forced" if status in (None, "pending") else ""
                )

    @rule(unit=NAMES, reason=REASONS, force=st.booleans(), current=st.booleans())
    def fail(self, unit: str, reason: str, force: bool, current: bool) -> None:
        """An operator's `fail`, or (`current`) the report of the unit's current run."""
        too_long = len(reason.encode()) > MAX_REASON_BYTES
        if invalid(unit) or too_long:
            code = "invalid"
        elif self.model.status(unit) is None and not force:
            code = "unknown_unit"
        else:
            code = None
        token = self.model.current_token(unit) if current else ""
        self.expect(code, self.graph.fail, unit, reason, now=self.now(), force=force, token=token)
        if code is None:
            self.model.know(unit, self.clock)
            self.model.move(unit, "failed", self.clock, reason)

    @rule(unit=st.sampled_from(VALID), count=st.integers(1, 60))
    def fail_repeatedly(self, unit: str, count: int) -> None:
        """A flapping unit: enough transitions to push its history past the cap."""
        for i in range(count):
            self.expect(None, self.graph.fail, unit, f"flap {i}", now=self.now(), force=True)
            self.model.know(unit, self.clock)
            self.model.move(unit, "failed", self.clock, f"flap {i}")

    def left_alone(self, name: str, force: bool) -> bool:
        """`reset` leaves a run alone while its owner lives (or cannot be seen), unless forced."""
        found = self.model.units[name]
        return not force and found.status in ("started", "completed") and found.owner_lives

    def reset_in_model(self, names: list[str], force: bool) -> None:
        m = self.model
        for name in names:
            found = m.units[name]
            took_a_live_run = found.status in ("started", "completed") and found.owner_lives
            m.move(name, "pending", self.clock, "reset --force" if took_a_live_run else "reset")

    @rule(unit=NAMES, force=st.booleans())
    def reset(self, unit: str, force: bool) -> None:
        m = self.model
        if invalid(unit):
            code = "invalid"
        elif m.status(unit) is None:
            code = "unknown_unit"
        elif self.left_alone(unit, force):
            code = "in_use"
        else:
            code = None
        result = self.expect(
            code, self.graph.reset, unit, now=self.now(), force=force, owner_alive=self.owner_alive
        )
        if code is None:
            assert bool(result) == (m.status(unit) != "pending")
            self.reset_in_model([unit] if m.status(unit) != "pending" else [], force)

    @rule(force=st.booleans(), only_failed=st.booleans())
    def reset_all(self, force: bool, only_failed: bool) -> None:
        """`reset --all` (`--failed`): what it would refuse it leaves alone, and names."""
        m = self.model
        now = self.now()
        records, left_alone = self.expect(
            None,
            self.graph.reset_all,
            now=now,
            force=force,
            owner_alive=self.owner_alive,
            only_failed=only_failed,
        )
        names = [n for n in m.units if not only_failed or m.status(n) == "failed"]
        changes = [n for n in names if m.status(n) != "pending" and not self.left_alone(n, force)]
        assert left_alone == [n for n in names if self.left_alone(n, force)]
        assert sorted(r.unit for r in records) == sorted(changes)
        self.reset_in_model(changes, force)

    @rule(unit=NAMES)
    def forget(self, unit: str) -> None:
        """Remove a unit; refused for typos, started units, and units others want."""
        m = self.model
        if any(waiting == unit for waiting, _rerun, _at in self.waiters):
            return  # the service refuses this (a start waits); the graph is not asked
        wanted_by = [name for name, u in m.units.items() if unit in u.deps]
        if invalid(unit):
            code = "invalid"
        elif m.status(unit) is None:
            code = "unknown_unit"
        elif m.status(unit) == "started" or wanted_by:
            code = "in_use"
        else:
            code = None
        result = self.expect(code, self.graph.forget, unit, now=self.now())
        if wanted_by and code == "in_use" and m.status(unit) != "started":
            assert all(name in result.message for name in wanted_by), result.message
        if code is None:
            del m.units[unit]

    @rule(unit=NAMES)
    def status(self, unit: str) -> None:
        m = self.model
        if invalid(unit):
            code = "invalid"
        elif unit not in m.units:
            code = "unknown_unit"
        else:
            code = None
        view = self.expect(code, lambda name: unit_view(self.graph, name), unit)
        if code is not None:
            return
        expected = m.units[unit]
        assert (view.name, view.status, view.since, view.reason) == (
            unit,
            expected.status,
            expected.since,
            expected.reason,
        )
        assert view.ready == (not m.pending_deps(unit))
        assert [(d.unit, d.required, d.current, d.satisfied) for d in view.dependencies] == [
            (d, "completed", m.units[d].status, m.units[d].status == "completed")
            for d in expected.deps
        ]
        assert view.dependents == sorted(n for n, u in m.units.items() if unit in u.deps)
        assert [(t.at, t.from_, t.to, t.reason, t.waited) for t in view.history] == (
            expected.history[-HISTORY_LIMIT:]
        )

    # --- invariants, checked after every step ---

    @invariant()
    def statuses_match(self) -> None:
        units, model = self.graph.units, self.model.units
        assert {n: u.status for n, u in units.items()} == {n: u.status for n, u in model.items()}
        for name, unit in units.items():
            expected = model[name]
            assert (unit.since, unit.reason, unit.token) == (
                expected.since,
                expected.reason,
                expected.token,
            )

    @invariant()
    def edges_match(self) -> None:
        assert {n: list(u.deps) for n, u in self.graph.units.items()} == {
            n: u.deps for n, u in self.model.units.items()
        }

    @invariant()
    def acyclic(self) -> None:
        """Computed from the graph itself: no unit reaches itself through its dependencies."""
        units = self.graph.units
        for name in units:
            seen: set[str] = set()
            todo = list(units[name].deps)
            while todo:
                node = todo.pop()
                assert node != name, f"cycle through {name}"
                if node not in seen:
                    seen.add(node)
                    todo.extend(units[node].deps)

    @invariant()
    def dependents_are_the_reverse_of_deps(self) -> None:
        units = self.graph.units
        for name, unit in units.items():
            assert unit.dependents == {n for n, u in units.items() if name in u.deps}

    @invariant()
    def history_is_bounded_and_current(self) -> None:
        for name, unit in self.graph.units.items():
            history = list(unit.history)
            assert len(history) <= HISTORY_LIMIT
            if history:
                assert history[-1].to == unit.status
                assert history[-1].at == unit.since
            expected = self.model.units[name].history[-HISTORY_LIMIT:]
            assert [(t.at, t.from_, t.to, t.reason, t.waited) for t in history] == expected

    @invariant()
    def readiness_matches(self) -> None:
        for name in self.graph.units:
            readiness = self.graph.readiness(name)
            failed = self.model.failed_deps(name)
            assert (readiness.failed is None) == (not failed)
            if failed:
                assert readiness.failed in failed
            else:
                assert readiness.pending == tuple(self.model.pending_deps(name))

    @invariant()
    def replay_and_snapshot_agree(self) -> None:
        """The returned records replayed elsewhere, and a msgpack snapshot, give the same graph."""
        current = state(self.graph)
        assert state(self.replica) == current
        wire = msgspec.msgpack.encode(list(self.graph.images()))
        restored = Graph.from_images(msgspec.msgpack.decode(wire, type=list[UnitImage]))
        assert state(restored) == current


GraphMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_graph_against_the_model = GraphMachine.TestCase
