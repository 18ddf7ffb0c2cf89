"""The OS mechanisms both sides need, one of each: what this host says, never the protocol.

    paths      where the agent listens and keeps its state by default
    processes  processes as /proc names them: who a process is, its parent, does it still run
    peer       who is at the other end of a Unix socket, who listens at an address, who
               holds an agent's socket lock
    lockfile   lock files that name their holder and go when released (flock, /proc/locks)
    notify     sd_notify: the address, sending, a private receiving socket, reading datagrams
    exits      learning that a process has exited without polling (pidfds)
    backoff    the one exponential backoff every retry loop uses
    inotify    being told that files in a folder changed (a log being followed)

Imports nothing else of unitsync (`tests/test_layers.py` checks it): the agent, the clients
and the command line each put their own policy on top (who may notify, what a lock held
by another means), in their own words.
"""
