"""The output logs of runs (SPEC §15): what `run` writes and `logs` reads, in the state dir.

    format   the records of a log file: framing, checksums, and reading past damage
    layout   where a unit's log lives: its folder, one file per run and segment, and the
             folder rules (private, ours)
    reader   a unit's log as lines: runs chosen, damage and drops said, followed live

`run` writes (`unitsync.cli.run.recorder`), `logs` and both clients read, the agent removes
a forgotten unit's folder. Nothing here talks to the agent; it imports msgspec and the
standard library only, so `run`'s start-up pays for nothing it does not use.
"""
