"""What the agent and every client share: the wire vocabulary, framing, default paths, errors.

    protocol      the frame types (requests, replies, events, unit views); msgspec only
    framing       bytes <-> frames: the length prefix, the size limit, the one decode path
    errors        every error unitsync reports, its wire code and its exit status
    bounds        what a unit may hold: every bound on what the agent stores, and the checks
    serving       the agent's side of a connection, sans-IO: the hello, what may be sent
                  when, replies split over frames (the counterpart of `session`)
    session       the client's side of a connection, sans-IO: trust, hello, replies, errors
    graph_id      a graph's id, made once and kept for good, and how people see it
    host/         the OS mechanisms both sides need (paths, /proc, peers, sd_notify, pidfds,
                  lock files, backoff); it imports nothing else of unitsync
    timefmt       how times and durations are written for people, on both sides
    runlog/       the runs' output logs in the state dir: format, layout, reader (`run`
                  writes them, `logs` and the clients read them, the agent forgets them)

Nothing here knows about the graph, the journal or the command line.
"""

__version__ = "0.1.0"
"""The one version: the package metadata reads it (pyproject `dynamic`), hellos carry it."""
