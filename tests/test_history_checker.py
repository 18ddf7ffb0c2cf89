"""The history checker has teeth (`harness/history.py`): a small history it passes, and
the same history with one anomaly planted, of each kind it looks for, which it reports."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from unitsync.agent.core.records import Edge, Known, Move, Record

from harness.history import MAYBE, OK, UNCHANGED, Op, check

Changes = list[tuple[int, list[list[Record]]]]


def clean() -> tuple[list[Op], Changes, dict[str, dict[str, str]]]:
    """Four writers: app wants db; db starts and completes; app, waiting since before,
    starts; x fails; y's fail may or may not have been made (it was not); db is reset;
    a `complete` that found db completed already; one told nothing was changed."""
    ops = [
        Op(0, 0, "want", "app", 0.0, 1.0, OK, changed=True, dep="db"),
        Op(1, 1, "start", "db", 1.0, 2.0, OK, token="t-db"),
        Op(1, 1, "complete", "db", 2.0, 3.0, OK, changed=True),
        Op(2, 2, "complete", "db", 3.1, 3.2, OK, changed=False),
        Op(0, 0, "start", "app", 0.5, 4.0, OK, token="t-app"),
        Op(2, 2, "fail", "x", 4.0, 5.0, OK, reason="w2-1"),
        Op(2, 2, "fail", "y", 5.0, 6.0, MAYBE, reason="w2-2"),
        Op(3, 0, "fail", "z", 5.0, 6.0, UNCHANGED, reason="w3-1"),
        Op(0, 0, "reset", "db", 6.0, 7.0, OK, changed=True),
    ]
    changes: Changes = [
        (2, [[Known("app", 0.5), Known("db", 0.5), Edge("app", "db")]]),
        (3, [[Move("db", "started", 1.5, token="t-db")]]),
        (4, [[Move("db", "completed", 2.5)]]),
        (5, [[Move("app", "started", 3.5, token="t-app")], [Known("x", 4.5)]]),
        (6, [[Move("x", "failed", 4.5, "w2-1")]]),
        (7, [[Move("db", "pending", 6.5, "reset")]]),
    ]
    finals = {"agent 0": {"app": "started", "db": "pending", "x": "failed"}}
    return ops, changes, finals


def test_a_clean_history_passes() -> None:
    assert check(*clean()) == []


def early_start(ops: list[Op], changes: Changes, finals: dict) -> None:
    """app's start committed before db's completion."""
    changes[2], changes[3] = (4, changes[3][1][:1]), (5, changes[2][1] + changes[3][1][1:])


def lost(ops: list[Op], changes: Changes, finals: dict) -> None:
    """x's acknowledged fail is not in etcd."""
    del changes[4]
    finals["agent 0"]["x"] = "pending"


def lost_by_time(ops: list[Op], changes: Changes, finals: dict) -> None:
    """db's acknowledged completion is not in etcd (an operation matched by time)."""
    del changes[2]


def twice(ops: list[Op], changes: Changes, finals: dict) -> None:
    """x's fail applied twice: a change retried under a new key after its first went in."""
    changes.append((8, [[Move("x", "failed", 4.6, "w2-1")]]))


def twice_by_time(ops: list[Op], changes: Changes, finals: dict) -> None:
    """db reset twice by one `reset` (matched by time)."""
    changes.append((8, [[Move("db", "pending", 6.6, "reset")]]))
    finals["agent 0"]["db"] = "pending"


def maybe_twice(ops: list[Op], changes: Changes, finals: dict) -> None:
    """y's fail, told "may or may not have been made", made twice."""
    changes.append((8, [[Move("y", "failed", 5.5, "w2-2")], [Move("y", "failed", 5.6, "w2-2")]]))
    finals["agent 0"]["y"] = "failed"


def unchanged_changed(ops: list[Op], changes: Changes, finals: dict) -> None:
    """z's fail, told nothing was changed, is in etcd."""
    changes.append((8, [[Move("z", "failed", 5.5, "w3-1")]]))
    finals["agent 0"]["z"] = "failed"


def said_already_but_changed(ops: list[Op], changes: Changes, finals: dict) -> None:
    """A `complete` told "was already completed" completed db again: an extra completion
    within that operation's time and no other's."""
    changes.insert(3, (4, changes[2][1] + [[Move("db", "started", 3.12, "new run")]]))
    del changes[2]
    changes.insert(3, (5, [[Move("db", "completed", 3.15)]]))


def real_time(ops: list[Op], changes: Changes, finals: dict) -> None:
    """A fail acknowledged before another fail was invoked, yet ordered after it in etcd
    (an acknowledgement sent before the change was committed)."""
    ops.append(Op(1, 1, "fail", "w", 5.5, 5.9, OK, reason="w1-9"))
    changes.insert(4, (6, [[Move("w", "failed", 5.6, "w1-9")]]))
    changes[5] = (7, changes[5][1])
    changes[6] = (8, changes[6][1])
    finals["agent 0"]["w"] = "failed"


def diverged(ops: list[Op], changes: Changes, finals: dict) -> None:
    """An agent's final copy misses db's reset."""
    finals["agent 0"]["db"] = "completed"


def invalid_move(ops: list[Op], changes: Changes, finals: dict) -> None:
    """db completed twice in a row (completed -> completed is no move of the table)."""
    ops.append(Op(3, 2, "complete", "db", 2.5, 3.0, MAYBE))
    changes.insert(3, (4, [[Move("db", "completed", 2.9)]]))
    for i in range(4, len(changes)):
        changes[i] = (changes[i][0] + 1, changes[i][1])


@pytest.mark.parametrize(
    ("plant", "kind"),
    [
        (early_start, "early start"),
        (lost, "lost"),
        (lost_by_time, "lost"),
        (twice, "twice"),
        (twice_by_time, "twice"),
        (maybe_twice, "maybe twice"),
        (unchanged_changed, "unchanged changed"),
        (said_already_but_changed, "unchanged changed"),
        (real_time, "real time"),
        (diverged, "diverged"),
        (invalid_move, "invalid move"),
    ],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_a_planted_anomaly_is_reported(plant: Callable[..., None], kind: str) -> None:
    ops, changes, finals = clean()
    plant(ops, changes, finals)
    found = check(ops, changes, finals)
    assert kind in {anomaly.kind for anomaly in found}, found
