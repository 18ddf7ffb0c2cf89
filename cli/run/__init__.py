"""`unitsync sync run`: the supervisor of a command, its readiness and its hold on the unit.

    command     the agent calls `run` makes: want, start, complete or fail, restarting, stopped
    follow      what each end of the command leads to: a restart, a stop, a supersede
    supervisor  the command's life: spawned, watched until ready, followed until it exits,
                started again (one `Respawned` event per restart)
    policy      --restart: whether and when a command that ended is started again
    output      the command's output passed through `run` (pipes or a pty) to its readers
    recorder    the unit's log: each run's output kept in the state dir (`sync logs`)
    readiness/  how a service says it is ready: --ready-cmd, --ready-log, --notify
    hold        the run kept through agent restarts, and the agent's orders obeyed (a newer
                run's supersede; `sync stop`, `sync restart`)
    children    spawning, signals passed on, exits learnt without polling
    group       the command's process group, and the terminal lent to it
    reactor     a small blocking event loop (the command line does not import trio)

Only `command` talks to the agent; the rest knows processes, descriptors and time.
"""
