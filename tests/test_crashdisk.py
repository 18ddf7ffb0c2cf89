"""The crash disk on its own (crashdisk.py): the states it builds are the ones it promises."""

from __future__ import annotations

from pathlib import Path

from harness.crashdisk import EXHAUSTIVE, SAMPLES, SECTOR, SimDisk, fates

FOLDER = Path("/state")


def test_past_1024_combinations_the_states_are_seeded_samples_within_the_rules() -> None:
    disk = SimDisk(FOLDER, {"log": b"S" * SECTOR})  # durable already
    fd = disk.open_append(FOLDER / "log")
    for i in range(5):  # five appends of two sectors each: 6 fates apiece, 7,776 combinations
        disk.write(fd, bytes([65 + i]) * (2 * SECTOR))
    checkpoint = disk.checkpoints[-1]
    assert checkpoint.combinations() > EXHAUSTIVE

    states = list(checkpoint.states("seed"))
    assert len(states) == SAMPLES + 2
    assert states[0][1] == checkpoint.volatile  # everything applied
    assert states[1][1] == {"log": b"S" * SECTOR}  # everything dropped
    for combo, files in states:
        assert all(fate in fates(op) for op, fate in zip(checkpoint.pending, combo, strict=True))
        assert files["log"].startswith(b"S" * SECTOR)  # nothing crosses the fsync
    assert len({combo for combo, _ in states}) > SAMPLES // 2  # samples, not one state again
    assert list(checkpoint.states("seed")) == states  # a seed gives the same states again
    assert [c for c, _ in checkpoint.states("other")] != [c for c, _ in states]


def test_after_a_failed_fsync_no_later_fsync_makes_those_writes_durable() -> None:
    """fsyncgate: the retried fsync succeeds, the write may still be gone after power loss."""
    disk = SimDisk(FOLDER, {"log": b"header"})
    fd = disk.open_append(FOLDER / "log")
    disk.write(fd, b"lost?")
    disk.fsync_failed(fd)
    disk.fsync(fd)  # the retry "succeeds"
    disk.write(fd, b"synced")
    disk.fsync(fd)
    assert disk.files == {"log": b"headerlost?synced"}  # a reader still sees it all
    logs = {files["log"] for _, files in disk.checkpoints[-1].states("seed")}
    assert b"headerlost?synced" in logs
    assert b"header\0\0\0\0\0synced" in logs  # dropped: a hole before what was synced after
    assert all(log.endswith(b"synced") for log in logs)  # what the later fsync covered stays
