"""Disk faults (SPEC §4): for every n, the nth disk operation fails, and nobody is lied to.

Each kind (ENOSPC, EDQUOT, EIO, a short write), once or from then on, for n = 1, 2, ...
until the workload no longer reaches operation n: see faultloop.py for what each run
checks. Then the behaviours one at a time, where a reader can see them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from unitsync.agent.journal import Journal
from unitsync.agent.service import Service

from faultdisk import KINDS, Fault
from faultloop import FaultRun


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from-then-on"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_nth_operation_fails_for_every_n(folder: Path, kind: str, persistent: bool) -> None:
    clean = FaultRun(folder, None).run()
    assert clean.refusals == clean.stops == 0
    runs = []
    for n in itertools.count(1):
        run = FaultRun(folder, Fault(kind, n, persistent)).run()
        if not run.disk.hits:
            break  # the workload is over before operation n
        runs.append(run)
    assert len(runs) > (10 if kind == "short" else 40), f"only {len(runs)} operations to fail"
    refusals = sum(run.refusals for run in runs)
    stops = sum(run.stops for run in runs)
    print(
        f"\n{kind} {'from then on' if persistent else 'once'}: n = 1..{len(runs)}, "
        f"{refusals} changes refused, {stops} stops"
    )
    if kind == "short":
        assert refusals == stops == 0
    elif kind == "EIO":
        assert stops > 0 and refusals == 0
    else:
        assert refusals > 0 and stops == 0


def skip_the_cut_back(self: Journal) -> None:
    self._torn = False


def keep_the_refused_changes(self: Service, graph: object) -> None:
    pass


@pytest.mark.parametrize(
    ("breakage", "finding"),
    [
        (skip_the_cut_back, "part of an entry was left in the log"),
        (keep_the_refused_changes, "builds on a refused one|graph served is not the acknowledged"),
    ],
    ids=["no cut back", "no rollback"],
)
def test_the_fault_loop_catches_a_broken_journal(
    folder: Path, monkeypatch: pytest.MonkeyPatch, breakage: object, finding: str
) -> None:
    owner = Journal if breakage is skip_the_cut_back else Service
    name = "_cut_back" if breakage is skip_the_cut_back else "_rolled_back"
    monkeypatch.setattr(owner, name, breakage)
    with pytest.raises(AssertionError, match=finding):
        for n in range(1, 60):
            FaultRun(folder, Fault("ENOSPC", n, persistent=True)).run()
