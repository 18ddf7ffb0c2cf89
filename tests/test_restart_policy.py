"""`run`'s restart policy (`cli/run/policy.py`) and the graph's side of restarts, without
processes: a hand-turned clock, and the graph's own commands."""

from __future__ import annotations

import pytest

from unitsync.agent.core.records import Asked, Known, Move, OwnerRecord
from unitsync.cli.run.children import Ended
from unitsync.cli.run.policy import (
    BadPolicy,
    GiveUp,
    Policy,
    Restart,
    Restarts,
    policy_from,
)
from unitsync.wire.errors import Refused

from harness.applied import AppliedGraph


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


FAILED, OK, KILLED = Ended(1), Ended(0), Ended(-9)


def test_the_delay_doubles_up_to_a_minute_and_starts_over_after_a_good_run() -> None:
    clock = Clock()
    restarts = Restarts(Policy("on-failure", 1.0, limit=100, window=3600.0), clock)
    delays = []
    for _ in range(8):
        restarts.up()
        clock.now += 1
        decision = restarts.after(FAILED, told=False)
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    restarts.up()
    clock.now += 60  # up for a minute: a good run
    decision = restarts.after(FAILED, told=False)
    assert isinstance(decision, Restart) and decision.delay == 1


def test_the_limit_counts_restarts_within_the_window_only() -> None:
    clock = Clock()
    restarts = Restarts(Policy("on-failure", 0.1, limit=2, window=300.0), clock)
    first = restarts.after(FAILED, told=False)
    assert isinstance(first, Restart) and (first.number, first.limit) == (1, 2)
    assert first.reason == "restarting in 0.1s after exit status 1 (restart 1 of 2)"
    clock.now = 10
    second = restarts.after(KILLED, told=False)
    assert isinstance(second, Restart)
    assert second.reason == "restarting in 0.2s after signal SIGKILL (restart 2 of 2)"
    clock.now = 20
    gave_up = restarts.after(FAILED, told=False)
    assert isinstance(gave_up, GiveUp) and gave_up.reason == "gave up after 2 restarts in 5m"
    clock.now = 301  # the first restart left the window: one more is allowed
    assert isinstance(restarts.after(FAILED, told=False), Restart)


@pytest.mark.parametrize(
    ("when", "ended", "told", "restarted"),
    [
        ("no", FAILED, False, False),
        ("on-failure", FAILED, False, True),
        ("on-failure", KILLED, False, True),  # a signal `run` did not pass on
        ("on-failure", OK, False, False),
        ("on-failure", FAILED, True, False),  # Ctrl-C, SIGTERM passed on by `run`
        ("always", OK, False, True),
        ("always", KILLED, True, False),
    ],
)
def test_which_ends_restart(when: str, ended: Ended, told: bool, restarted: bool) -> None:
    decision = Restarts(Policy(when)).after(ended, told=told)  # type: ignore[arg-type]
    assert isinstance(decision, Restart) if restarted else decision is None


@pytest.mark.parametrize(
    ("options", "service", "says"),
    [
        ((None, 1.0, None, None), True, "--restart-delay is an option of a restart policy"),
        (("no", None, 3, None), True, "--restart-limit is an option of a restart policy"),
        (("on-failure", None, 0, None), True, "--restart-limit must be 1 or more, not 0"),
        (("always", None, None, None), False, "--restart always is for services"),
        (("sometimes", None, None, None), True, "no, on-failure or always"),
    ],
)
def test_options_that_make_no_sense_are_refused(options: tuple, service: bool, says: str) -> None:
    with pytest.raises(BadPolicy, match=says):
        policy_from(*options, service=service)


def test_the_defaults_are_the_issues() -> None:
    assert policy_from("on-failure", None, None, None, service=False) == Policy(
        "on-failure", 1.0, 5, 300.0
    )


# --- the graph --------------------------------------------------------------------------------

OWNER = OwnerRecord(4242, 1, "sh -c serve", "run")


def served() -> AppliedGraph:
    """Unit `web`, a ready service held by its `run` (run token "t1")."""
    graph = AppliedGraph()
    graph.apply(Known("web", 1.0))
    graph.apply(Move("web", "started", 2.0, token="t1", owner=OWNER))
    graph.apply(Move("web", "completed", 3.0, owner=OWNER))
    return graph


def test_a_restart_is_the_same_run_started_again_and_is_counted() -> None:
    graph = served()
    graph.restarting("web", "restarting (sync restart)", now=4.0, token="t1")
    unit = graph.units["web"]
    assert (unit.status, unit.reason, unit.restarts) == ("started", "restarting (sync restart)", 1)
    assert unit.owner == OWNER and unit.token == "t1"  # the same run: its `run` holds it still
    assert unit.history[-1].restart
    graph.complete("web", now=5.0, keep_owner=True, token="t1")
    graph.restarting(
        "web", "restarting in 1s after exit status 1 (restart 1 of 5)", now=6.0, token="t1"
    )
    assert graph.units["web"].restarts == 2
    graph.fail("web", "gone", now=7.0, token="t1")
    graph.reset("web", now=8.0)
    graph.start("web", now=9.0, token="t2", owner=OWNER)  # a new run counts afresh
    assert graph.units["web"].restarts == 0 and not graph.units["web"].history[-1].restart


def test_a_superseded_runs_restart_or_stop_changes_nothing() -> None:
    graph = served()
    assert graph.restarting("web", "restarting", now=4.0, token="old") == []
    assert graph.stopped("web", "stopped", now=4.0, token="old") == []
    assert graph.units["web"].status == "completed"


def test_stopped_ends_the_run_it_does_not_supersede_it() -> None:
    graph = served()
    [move] = graph.stopped("web", "stopped by sync stop (pid 7)", now=4.0, token="t1")
    assert isinstance(move, Move) and move.token == "t1"  # the holding agent keeps quiet
    assert (graph.units["web"].status, graph.units["web"].owner) == ("pending", None)


def test_a_restart_of_a_unit_with_no_run_is_refused() -> None:
    graph = AppliedGraph()
    graph.apply(Known("web", 1.0))
    with pytest.raises(Refused, match="it has no run to start again"):
        graph.restarting("web", "restarting", now=2.0, token="")


def test_an_order_is_a_record_that_changes_no_state() -> None:
    graph = served()
    before = (graph.units["web"].status, list(graph.units["web"].history))
    [asked] = graph.ask("web", "stop", "sync stop (pid 7)", now=4.0)
    assert asked == Asked("web", "stop", "t1", "sync stop (pid 7)", 4.0)
    assert (graph.units["web"].status, list(graph.units["web"].history)) == before
