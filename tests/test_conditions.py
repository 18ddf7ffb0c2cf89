"""What a dependency needs (SPEC §14, issue 25), in the pure core: the condition table
(`machine.NEEDS`) row by row through the graph, "ever started" exactly, changing an edge's
condition, and conditions kept by snapshots, replays and workspace restarts."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from unitsync.agent.core.graph import WORKSPACE_RESTARTED, Graph, Refused
from unitsync.agent.core.machine import (
    CONDITIONS,
    DEP_STATES,
    NEEDS,
    Condition,
    DepState,
    Verdict,
)
from unitsync.agent.core.records import Edge, Record, UnitImage
from unitsync.agent.core.views import unit_view
from unitsync.wire.bounds import HISTORY_LIMIT

from harness.applied import AppliedGraph

T0 = 1_700_000_000.0


def run(graph: Graph, name: str, now: float) -> list[Record]:
    """`start` of a ready unit, as the agent does it: admit, then start."""
    records = graph.admit(name, now=now)
    return records + graph.start(name, now=now)


DEP_BECOMES: dict[DepState, Callable[[Graph], object]] = {
    "pending": lambda g: None,
    "started": lambda g: run(g, "db", T0 + 1),
    "completed": lambda g: (run(g, "db", T0 + 1), g.complete("db", now=T0 + 2)),
    "failed after it started": lambda g: (run(g, "db", T0 + 1), g.fail("db", "boom", now=T0 + 2)),
    "failed before it started": lambda g: g.fail("db", "boom", now=T0 + 1),
}
"""How `db` gets into each state the conditions tell apart, by the commands a user gives:
`fail` of a pending unit is a failure before any start."""


@pytest.mark.parametrize(("on", "dep"), list(NEEDS), ids=" x ".join)
def test_every_row_of_the_condition_table_is_what_the_graph_does(
    on: Condition, dep: DepState
) -> None:
    """`api` wants `db` on `on`, `db` is in state `dep`: `api`'s readiness, its view and what
    its start does are what `machine.NEEDS` says, and nothing else."""
    graph = AppliedGraph()
    graph.want("api", ["db"], now=T0, on=on)
    DEP_BECOMES[dep](graph)
    assert graph.dep_state("db") == dep
    readiness = graph.readiness("api")
    [shown] = unit_view(graph, "api").dependencies
    assert (shown.required, shown.current) == (on, graph.units["db"].status)
    verdict = NEEDS[on, dep]
    assert shown.satisfied is (verdict is Verdict.SATISFIED)
    if verdict is Verdict.WAIT:
        assert readiness.pending == ("db",) and readiness.failed is None
        with pytest.raises(AssertionError, match="before it is ready"):
            graph.start("api", now=T0 + 3)
    elif verdict is Verdict.FAIL:
        assert readiness.failed == "db" and not readiness.ready
    else:
        assert readiness.ready
        run(graph, "api", T0 + 3)
        api = graph.units["api"]
        assert api.status == "started"
        went_ahead = "went ahead although db failed"
        assert api.reason == (went_ahead if dep.startswith("failed") else "")


def test_the_condition_table_has_one_row_per_condition_and_state() -> None:
    assert set(NEEDS) == {(on, dep) for on in CONDITIONS for dep in DEP_STATES}
    assert set(DEP_BECOMES) == set(DEP_STATES)
    # Its shape, as SPEC §14 says it: `completed` waits for completion and cascades every
    # failure; `started` cascades only a failure before a start; `finished` never does.
    fails = {on: {dep for dep in DEP_STATES if NEEDS[on, dep] is Verdict.FAIL} for on in CONDITIONS}
    assert fails == {
        "completed": {"failed after it started", "failed before it started"},
        "started": {"failed before it started"},
        "finished": set(),
    }


# --- "ever started" ---------------------------------------------------------------------------


def failed_db(*steps: Callable[[Graph], object]) -> Graph:
    graph = AppliedGraph()
    graph.want("api", ["db"], now=T0, on="started")
    for step in steps:
        step(graph)
    assert graph.units["db"].status == "failed"
    return graph


@pytest.mark.parametrize(
    ("story", "steps", "ever"),
    [
        ("failed while its run went on", [lambda g: run(g, "db", T0 + 1)], True),
        (
            "a service that died after it was ready",
            [lambda g: run(g, "db", T0 + 1), lambda g: g.complete("db", now=T0 + 2)],
            True,
        ),
        (
            "failed twice: the second failure changes nothing about the run",
            [lambda g: run(g, "db", T0 + 1), lambda g: g.fail("db", "again", now=T0 + 3)],
            True,
        ),
        ("fail of a pending unit", [], False),
        (
            "its own dependency failed while its start waited (the cascade)",
            [
                lambda g: g.want("db", ["disk"], now=T0),
                lambda g: g.fail("disk", "full", now=T0 + 1),
                lambda g: g.fail("db", "dependency disk failed", now=T0 + 2),
            ],
            False,
        ),
        (
            "a run that failed, then a reset: the failure after it is of a new run",
            [
                lambda g: run(g, "db", T0 + 1),
                lambda g: g.fail("db", "boom", now=T0 + 2),
                lambda g: g.reset("db", now=T0 + 3),
            ],
            False,
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_ever_started_means_its_current_run_began_before_it_failed(
    story: str, steps: list[Callable[[Graph], object]], ever: bool
) -> None:
    """A failed unit "ever started" when the move that failed it came out of `started` or
    `completed` (failed -> failed moves skipped); then a `started` edge to it is satisfied,
    otherwise it cascades."""
    last = [] if story.startswith("failed twice") else [lambda g: g.fail("db", "boom", now=T0 + 4)]
    graph = failed_db(*steps, *last)
    assert graph.dep_state("db") == (
        "failed after it started" if ever else "failed before it started"
    )
    readiness = graph.readiness("api")
    assert readiness.ready is ever and readiness.failed == (None if ever else "db")


def test_a_failure_whose_start_is_gone_from_the_history_counts_as_never_started() -> None:
    """History is bounded: once only failed -> failed moves are left, nothing says the run
    began, and a `started` edge cascades (the hard side)."""
    graph = failed_db(lambda g: run(g, "db", T0 + 1), lambda g: g.fail("db", "x", now=T0 + 2))
    assert graph.readiness("api").ready
    for i in range(HISTORY_LIMIT):
        graph.fail("db", f"again {i}", now=T0 + 3 + i)
    assert graph.readiness("api").failed == "db"


# --- changing a condition -------------------------------------------------------------------


def test_want_of_an_edge_on_another_condition_changes_it_and_says_so() -> None:
    graph = AppliedGraph()
    graph.want("api", ["db"], now=T0)
    records, notes = graph.want("api", ["db", "cache"], now=T0 + 1, on="started")
    assert [r for r in records if isinstance(r, Edge)] == [
        Edge("api", "cache", "started"),
        Edge("api", "db", "started"),
    ]
    assert notes == ["api now wants db on started (was completed)"]
    assert graph.units["api"].deps == {"db": "started", "cache": "started"}  # order kept
    assert graph.units["db"].dependents == {"api"}
    # Idempotent otherwise: the same condition again changes nothing.
    assert graph.want("api", ["db", "cache"], now=T0 + 2, on="started") == ([], [])
    # Without a condition, an edge keeps its own (a new one is `completed`).
    records, notes = graph.want("api", ["db", "queue"], now=T0 + 3)
    assert [r for r in records if isinstance(r, Edge)] == [Edge("api", "queue", "completed")]
    assert notes == [] and graph.units["api"].deps["db"] == "started"
    # Back to the default: named, it is one more change.
    records, notes = graph.want("api", ["db"], now=T0 + 4, on="completed")
    assert records == [Edge("api", "db", "completed")]
    assert notes == ["api now wants db on completed (was started)"]


def test_a_changed_condition_applies_to_the_next_start_of_a_unit_already_running() -> None:
    graph = AppliedGraph()
    graph.want("api", ["db"], now=T0)
    graph.complete("db", force=True, now=T0 + 1)
    run(graph, "api", T0 + 2)
    _records, notes = graph.want("api", ["db"], now=T0 + 3, on="finished")
    assert notes == [
        "api now wants db on finished (was completed)",
        "api is already started; the change applies to its next start",
    ]


def test_every_condition_orders_so_cycles_are_refused_whatever_the_conditions() -> None:
    graph = AppliedGraph()
    graph.want("api", ["db"], now=T0, on="finished")
    graph.want("db", ["disk"], now=T0, on="started")
    with pytest.raises(Refused, match="disk -> api -> db -> disk"):
        graph.want("disk", ["api"], now=T0, on="finished")
    graph.want("api", ["db"], now=T0, on="completed")  # a change closes no new cycle


def test_a_waiting_unit_is_ready_as_soon_as_its_edge_is_softened() -> None:
    """The graph's part of "a waiting start re-evaluates at once": the change is an `Edge`
    record of the waiting unit, which wakes its waiters (`Service.applied`), and the
    readiness they then see is the new condition's."""
    graph = AppliedGraph()
    graph.want("api", ["db"], now=T0)
    run(graph, "db", T0 + 1)
    assert graph.readiness("api").pending == ("db",)
    records, _notes = graph.want("api", ["db"], now=T0 + 2, on="started")
    assert {r.unit for r in records if isinstance(r, Edge)} == {"api"}
    assert graph.readiness("api").ready


# --- kept -----------------------------------------------------------------------------------


def conditioned() -> AppliedGraph:
    graph = AppliedGraph()
    graph.want("api", ["db", "cache", "logs"], now=T0)
    graph.want("api", ["cache"], now=T0, on="started")
    graph.want("api", ["logs"], now=T0, on="finished")
    return graph


def test_snapshots_and_replays_keep_conditions() -> None:
    graph = conditioned()
    images = msgspec.msgpack.decode(
        msgspec.msgpack.encode(list(graph.images())), type=list[UnitImage]
    )
    api = next(image for image in images if image.name == "api")
    assert api.deps == ["db", "cache", "logs"]
    assert api.on == {"cache": "started", "logs": "finished"}  # the default is not stored
    assert Graph.from_images(images).units["api"].deps == graph.units["api"].deps
    # An older journal's edge (format 3 and before: no condition) is a `completed` one.
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(["edge", "a", "b"]), type=Record)
    assert decoded == Edge("a", "b", "completed")
    started = Edge("a", "b", "started")
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(started), type=Record) == started


def test_a_workspace_restart_keeps_conditions() -> None:
    graph = conditioned()
    for record in graph.begin_boot("first", now=T0 + 1) + graph.begin_boot("b", now=T0 + 2):
        graph.apply(record)
    graph.fail("logs", "boom", force=True, now=T0 + 3)
    assert graph.boot == 2
    assert graph.units["api"].deps == {"db": "completed", "cache": "started", "logs": "finished"}
    assert graph.units["api"].reason in ("", WORKSPACE_RESTARTED)
