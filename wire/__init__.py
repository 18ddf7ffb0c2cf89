"""What the agent and every client share: the wire vocabulary, framing, default paths, errors.

    protocol      the frame types (requests, replies, events, unit views); msgspec only
    framing       bytes <-> frames: the length prefix, the size limit, the one decode path
    errors        every error unitsync reports, its wire code and its exit status
    bounds        what a unit may hold: every bound on what the agent stores, and the checks
    serving       the agent's side of a connection, sans-IO: the hello, what may be sent
                  when, replies split over frames (the counterpart of `session`)
    paths         where the agent listens and keeps its state by default
    processes     processes as /proc names them: a run's owner, and does it still run
    local         Unix facts both sides need: the peer of a socket, sd_notify receivers
    timefmt       how times and durations are written for people, on both sides

Nothing here knows about the graph, the journal or the command line.
"""

__version__ = "0.1.0"
"""The one version: the package metadata reads it (pyproject `dynamic`), hellos carry it."""
