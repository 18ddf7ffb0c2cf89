"""The pure core against SPEC §1: examples for each rule, then a model-based state machine."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from unitsync.agent.graph import HISTORY_LIMIT, Graph, Refused, check_name
from unitsync.agent.records import UnitImage


def refused(code: str, fn, *args) -> Refused:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as caught:
        fn(*args)
    assert caught.value.code == code
    return caught.value


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["git", "claude code", "ünït", "a" * 255, "é" * 127, "x/y:z"])
def test_valid_names(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "must not be empty"),
        ("a" * 256, "limit is 255 bytes"),
        ("é" * 128, "limit is 255 bytes"),  # 256 bytes in UTF-8
        ("tab\there", "U+0009"),
        ("nul\x00", "U+0000"),
        ("esc\x1b", "U+001B"),
        ("del\x7f", "U+007F"),
        ("\ud800", "not valid UTF-8"),
    ],
)
def test_invalid_names_name_the_rule(name: str, rule: str) -> None:
    assert rule in refused("invalid", check_name, name).message


# --- want ----------------------------------------------------------------------------------


def test_want_makes_units_known_and_is_idempotent() -> None:
    graph = Graph()
    records, notes = graph.want("claude", ["git", "node"], 1.0)
    assert set(graph.units) == {"claude", "git", "node"}
    assert len(records) == 5 and not notes
    assert graph.want("claude", ["git"], 2.0) == ([], [])
    assert list(graph.units["claude"].deps) == ["git", "node"]
    assert graph.units["git"].dependents == {"claude"}


def test_want_self_is_refused() -> None:
    assert "itself" in refused("invalid", Graph().want, "a", ["a"], 1.0).message


def test_a_cycle_is_refused_with_its_whole_path() -> None:
    graph = Graph()
    graph.want("a", ["b"], 1.0)
    graph.want("b", ["c"], 1.0)
    error = refused("cycle", graph.want, "c", ["a"], 1.0)
    assert error.message.endswith("c -> a -> b -> c")


def test_a_multi_dependency_want_is_all_or_nothing() -> None:
    graph = Graph()
    graph.want("a", ["b"], 1.0)
    before = list(graph.images())
    refused("cycle", graph.want, "b", ["fresh", "a"], 1.0)
    refused("invalid", graph.want, "b", ["fresh", ""], 1.0)
    assert list(graph.images()) == before


def test_want_on_a_started_unit_applies_to_its_next_start() -> None:
    graph = Graph()
    graph.admit("web", False, 1.0)
    graph.start("web", False, 1.0)
    _records, [note] = graph.want("web", ["cache"], 2.0)
    assert "next start" in note
    assert graph.units["web"].status == "started"
    assert not graph.readiness("web").ready


# --- readiness, start ----------------------------------------------------------------------


def test_readiness_lists_pending_dependencies_in_order_and_reports_failures() -> None:
    graph = Graph()
    graph.want("app", ["db", "cache", "queue"], 1.0)
    assert graph.readiness("app").pending == ("db", "cache", "queue")
    graph.complete("cache", True, 2.0)
    assert graph.readiness("app").pending == ("db", "queue")
    graph.fail("queue", "oom", 3.0)
    assert graph.readiness("app").failed == "queue"
    assert not graph.readiness("app").ready


def test_start_twice_is_refused_with_the_time_and_a_hint() -> None:
    graph = Graph()
    graph.start("a", False, 1.0)
    error = refused("already_started", graph.admit, "a", False, 2.0)
    assert "already started at" in error.message and "--rerun" in error.message
    graph.start("a", True, 3.0)  # --rerun
    assert [t.reason for t in graph.units["a"].history] == ["", "new run"]


@pytest.mark.parametrize("end", ["completed", "failed"])
def test_start_after_the_end_begins_a_new_run(end: str) -> None:
    graph = Graph()
    graph.start("a", False, 1.0)
    graph.complete("a", False, 2.0) if end == "completed" else graph.fail("a", "x", 2.0)
    graph.admit("a", False, 3.0)
    graph.start("a", False, 3.0)
    assert graph.units["a"].status == "started"


def test_start_before_ready_is_a_bug_not_a_refusal() -> None:
    graph = Graph()
    graph.want("a", ["b"], 1.0)
    with pytest.raises(AssertionError):
        graph.start("a", False, 1.0)


# --- complete, fail, reset -------------------------------------------------------------------


def test_complete_rules() -> None:
    graph = Graph()
    assert "not known" in refused("not_started", graph.complete, "typo", False, 1.0).message
    assert "typo" not in graph.units  # a refusal registers nothing
    graph.want("a", ["b"], 1.0)
    assert "--force" in refused("not_started", graph.complete, "b", False, 1.0).message
    assert graph.complete("b", True, 2.0)[-1].reason == "forced"
    assert graph.complete("b", False, 3.0) == []  # completing a completed unit: no-op
    graph.complete("new", True, 4.0)
    assert graph.units["new"].status == "completed"


def test_fail_records_the_reason() -> None:
    graph = Graph()
    graph.fail("db", "disk full", 1.0)
    unit = graph.units["db"]
    assert (unit.status, unit.reason, unit.history[-1].reason) == (
        "failed",
        "disk full",
        "disk full",
    )


def test_reset_keeps_edges() -> None:
    graph = Graph()
    graph.want("a", ["b"], 1.0)
    graph.complete("b", True, 1.0)
    graph.start("a", False, 2.0)
    assert len(graph.reset(None, 3.0)) == 2
    assert {u.status for u in graph.units.values()} == {"pending"}
    assert list(graph.units["a"].deps) == ["b"]
    assert graph.reset("a", 4.0) == []


def test_history_keeps_the_newest_entries() -> None:
    graph = Graph()
    for i in range(HISTORY_LIMIT + 30):
        graph.fail("a", f"attempt {i}", float(i))
    history = graph.units["a"].history
    assert len(history) == HISTORY_LIMIT
    assert history[-1].reason == f"attempt {HISTORY_LIMIT + 29}"
    assert history[0].reason == "attempt 30"


def test_view_shows_dependencies_and_dependents() -> None:
    graph = Graph()
    graph.want("app", ["db"], 1.0)
    graph.start("db", False, 2.0)
    view = graph.view("app")
    assert [(d.unit, d.required, d.current, d.satisfied) for d in view.dependencies] == [
        ("db", "completed", "started", False)
    ]
    assert graph.view("db").dependents == ["app"]
    assert "unknown unit" in refused("unknown_unit", graph.get, "ghost").message


def test_records_replay_and_snapshots_round_trip() -> None:
    graph, replica = Graph(), Graph()
    log = []
    log += graph.want("a", ["b", "c"], 1.0)[0]
    log += graph.start("b", False, 2.0)
    log += graph.complete("b", False, 3.0)
    log += graph.fail("c", "boom", 4.0)
    log += graph.reset(None, 5.0)
    for record in log:
        replica.apply(record)
    assert list(replica.images()) == list(graph.images())
    encoded = msgspec.msgpack.encode(list(graph.images()))
    decoded = msgspec.msgpack.decode(encoded, type=list[UnitImage])
    assert list(Graph.from_images(decoded).images()) == list(graph.images())


# --- model-based: the graph against a deliberately simple model ------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])


class Model:
    """Sets and dicts; cycles by transitive closure. Slow and obviously right."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.deps: dict[str, set[str]] = {}

    def know(self, *names: str) -> None:
        for name in names:
            self.status.setdefault(name, "pending")
            self.deps.setdefault(name, set())

    def reachable(self, start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for dep in self.deps.get(todo.pop(), ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    def ready(self, name: str) -> bool:
        return all(self.status[d] == "completed" for d in self.deps.get(name, ()))

    def any_failed(self, name: str) -> bool:
        return any(self.status[d] == "failed" for d in self.deps.get(name, ()))


class GraphMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.graph = Graph()
        self.model = Model()
        self.clock = 0.0

    def now(self) -> float:
        self.clock += 1.0
        return self.clock

    def expect(self, code: str | None, fn, *args) -> None:  # type: ignore[no-untyped-def]
        before = list(self.graph.images())
        try:
            fn(*args)
        except Refused as exc:
            assert exc.code == code, f"refused with {exc.code}, model expected {code}"
            assert list(self.graph.images()) == before, "a refusal changed the graph"
            return
        assert code is None, f"accepted, model expected a refusal ({code})"

    @rule(unit=NAMES, deps=st.lists(NAMES, min_size=1, max_size=3))
    def want(self, unit: str, deps: list[str]) -> None:
        m = self.model
        if unit in deps:
            code = "invalid"
        elif any(unit == d or unit in m.reachable(d) for d in deps):
            code = "cycle"
        else:
            code = None
        self.expect(code, self.graph.want, unit, deps, self.now())
        if code is None:
            m.know(unit, *deps)
            m.deps[unit].update(deps)

    @rule(unit=NAMES, rerun=st.booleans())
    def start(self, unit: str, rerun: bool) -> None:
        m = self.model
        code = "already_started" if m.status.get(unit) == "started" and not rerun else None
        self.expect(code, self.graph.admit, unit, rerun, self.now())
        if code:
            return
        m.know(unit)
        if m.ready(unit):
            self.graph.start(unit, rerun, self.now())
            m.status[unit] = "started"
        elif m.any_failed(unit):  # what the agent does for a waiter on a failed dependency
            self.graph.fail(unit, "dependency failed", self.now())
            m.status[unit] = "failed"

    @rule(unit=NAMES, force=st.booleans())
    def complete(self, unit: str, force: bool) -> None:
        m = self.model
        never_started = m.status.get(unit, "pending") == "pending"
        code = "not_started" if never_started and not force else None
        self.expect(code, self.graph.complete, unit, force, self.now())
        if code is None:
            m.know(unit)
            m.status[unit] = "completed"

    @rule(unit=NAMES)
    def fail(self, unit: str) -> None:
        self.graph.fail(unit, "because", self.now())
        self.model.know(unit)
        self.model.status[unit] = "failed"

    @rule(unit=st.none() | NAMES)
    def reset(self, unit: str | None) -> None:
        self.graph.reset(unit, self.now())
        if unit is not None:
            self.model.know(unit)
        for name in [unit] if unit else list(self.model.status):
            self.model.status[name] = "pending"

    @rule(unit=st.sampled_from(["", "x\n", "y" * 256]))
    def bad_name(self, unit: str) -> None:
        self.expect("invalid", self.graph.fail, unit, "", self.now())

    @invariant()
    def matches_the_model(self) -> None:
        units = self.graph.units
        assert {n: u.status for n, u in units.items()} == self.model.status
        assert {n: set(u.deps) for n, u in units.items()} == self.model.deps
        for name, unit in units.items():
            assert name not in self.model.reachable(name), "the graph has a cycle"
            assert unit.dependents == {n for n, u in units.items() if name in u.deps}
            assert len(unit.history) <= HISTORY_LIMIT
            if unit.history:
                assert unit.history[-1].to == unit.status
            assert self.graph.readiness(name).ready == self.model.ready(name)


GraphMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_graph_against_the_model = GraphMachine.TestCase
