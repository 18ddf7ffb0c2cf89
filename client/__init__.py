"""unitsync's clients: one I/O-free session (`session`), two thin I/O loops around it.

    client        the blocking `Client` (plain sockets; what the CLI uses; no trio)
    async_client  the trio `AsyncClient` (imports trio: import it only from trio programs)
    session       the protocol rules of one connection: trust, hello, replies, errors
    retry         what a call does across connections: start tokens, backoff
    autostart     start an agent for a blocking client that found none (loaded only then)
    owners        who owns a run: a process of this host as the wire's `Owner`

Importing this package, `client` or `session` never imports trio.
"""
