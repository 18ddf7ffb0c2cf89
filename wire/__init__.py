"""What the agent and every client share: the wire vocabulary, framing, default paths, errors.

    protocol      the frame types (requests, replies, events, unit views); msgspec only
    framing       bytes <-> frames: the length prefix, the size limit, the one decode path
    errors        every error unitsync reports, its wire code and its exit status
    bounds        what a unit may hold: every bound on what the agent stores, and the checks
    frame_stream  frames over a trio socket (the only module here that imports trio)
    host/         the OS mechanisms both sides need (paths, /proc, peers, sd_notify, pidfds);
                  it imports nothing else of unitsync
    timefmt       how times and durations are written for people, on both sides

Nothing here knows about the graph, the journal or the command line.
"""

__version__ = "0.1.0"
"""The one version: the package metadata reads it (pyproject `dynamic`), hellos carry it."""
