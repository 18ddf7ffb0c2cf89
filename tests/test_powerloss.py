"""Power loss, not only process death (SPEC §4): every state the disk can be left in recovers.

SIGKILL (test_crash.py) never loses the page cache, so it cannot catch a missing fsync,
a rename whose folder was not synced, or a tail of zeros. Here the journal runs on a
recording disk (crashdisk.py) and every crash state of every disk operation is
recovered and held to the oracle (powerloss.py). The mutation tests at the end break
the journal on purpose: the harness must catch each break.

More seeds for a nightly run: `UNITSYNC_POWERLOSS_SEEDS=200 python -m pytest -q -s
tests/test_powerloss.py -k long` (the figures are printed with -s); one failing seed
alone: `UNITSYNC_POWERLOSS_SEED=137 python -m pytest -q -s tests/test_powerloss.py -k long`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from unitsync.agent.store.journal import writer as journal_module
from unitsync.agent.store.journal.disk import Disk, write_all
from unitsync.agent.store.journal.writer import SNAPSHOT_NAME, Journal

from harness.crashdisk import SimDisk
from harness.powerloss import OPS, Report, check, random_ops, run_workload

SEEDS = int(os.environ.get("UNITSYNC_POWERLOSS_SEEDS", "4"))
"""Long random workloads checked (4 in CI; a nightly run sets more)."""
ONE_SEED = os.environ.get("UNITSYNC_POWERLOSS_SEED")
"""Set, only this seed's workload is checked: to re-run the one a failure named."""
LONG = 40
"""Operations in each long random workload."""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The state dir: real (it holds the lock), its journal files simulated."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def sequences(longest: int) -> Iterator[tuple[str, ...]]:
    for length in range(longest + 1):
        yield from itertools.product(OPS, repeat=length)


def check_sequences(
    folder: Path, report: Report, disk: Callable[[], SimDisk] | None = None
) -> None:
    for ops in sequences(3):
        trace = run_workload(folder, "+".join(ops) or "empty", ops, disk() if disk else None)
        check(trace, folder, report)


def test_every_sequence_of_up_to_three_operations_survives_power_loss(folder: Path) -> None:
    report = Report()
    check_sequences(folder, report)
    print(f"\npower loss, every sequence of up to 3 operations: {report}")
    assert report.workloads == 40 and report.recovery_states > 0


def test_long_random_workloads_survive_power_loss(folder: Path) -> None:
    report = Report()
    seeds = [int(ONE_SEED)] if ONE_SEED is not None else range(SEEDS)
    for seed in seeds:
        check(run_workload(folder, f"long-{seed}", random_ops(seed, LONG)), folder, report)
    print(f"\npower loss, seeds {seeds}, workloads of {LONG} operations: {report}")
    assert report.workloads == len(seeds)


# --- the harness has teeth: each break below must be caught --------------------------------


class NoFolderSyncAfterSnapshotRename(SimDisk):
    """The journal's folder fsync right after the snapshot's rename, patched out."""

    renamed_snapshot = False

    def rename(self, src: Path, dst: Path) -> None:
        super().rename(src, dst)
        self.renamed_snapshot = Path(dst).name == SNAPSHOT_NAME

    def fsync_dir(self, folder: Path) -> None:
        if not self.renamed_snapshot:
            super().fsync_dir(folder)
        self.renamed_snapshot = False


def acknowledge_before_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch's fsync happens only when the next batch comes, after its acknowledgement."""
    unsynced: set[int] = set()

    def write(self: Journal, data: bytes) -> None:
        if self._fd is None:
            self._start_fresh_log()
        assert self._fd is not None
        if self._fd in unsynced:
            self._disk.fsync(self._fd)
        write_all(self._disk, self._fd, data)
        unsynced.add(self._fd)

    monkeypatch.setattr(Journal, "_write", write)


def no_fsync_before_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot's temp file renamed into place without its fsync."""

    def write_temp(disk: Disk, path: Path, data: bytes) -> Path:
        tmp = path.with_name(path.name + ".tmp")
        fd = disk.create(tmp)
        write_all(disk, fd, data)
        disk.close(fd)
        return tmp

    monkeypatch.setattr(journal_module, "write_temp", write_temp)


@pytest.mark.parametrize(
    "breakage",
    ["no folder fsync after the snapshot rename", "ack before fsync", "no fsync before rename"],
)
def test_the_harness_catches_a_broken_journal(
    folder: Path, monkeypatch: pytest.MonkeyPatch, breakage: str
) -> None:
    disk = None
    if breakage == "no folder fsync after the snapshot rename":
        disk = lambda: NoFolderSyncAfterSnapshotRename(folder)  # noqa: E731
    elif breakage == "ack before fsync":
        acknowledge_before_fsync(monkeypatch)
    else:
        no_fsync_before_rename(monkeypatch)
    with pytest.raises(AssertionError, match=r"seed '.*', workload op") as caught:
        check_sequences(folder, Report(), disk)
    print(f"\n{breakage}: {caught.value}")
