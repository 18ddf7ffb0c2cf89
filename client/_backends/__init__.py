"""The clients' I/O, one module per world; the client's one source calls nothing else.

    trio  the trio client's: trio's sockets, clock and cancellation; never starts an agent
    sync  the blocking client's: plain sockets and `time`; starts an agent (SPEC §7)

Each module offers the same names, async in `trio` and plain in `sync`, so that the
generated blocking client differs from its source only by token substitution
(`unitsync.client.unasync`):

- `CLIENT_NAME`, `CONNECT_TIMEOUT`, `REPLY_TIMEOUT`, `START_WAIT`: the world's defaults
  (None: no bound of the client's own); `Callback[T]`: how a caller's callback is called;
- a backend (`TrioBackend`, `SyncBackend`) made with the client's `autostart`: `connect(path)`
  (one try: BlockingIOError while the agent's listen backlog is full, another OSError if
  nothing listens), `sleep`, `clock`, `shield` (a block that finishes even if its caller is
  cancelled), and `may_start_agent` / `start_agent` (where a client that finds no agent may
  start one);
- a stream (`TrioStream`, `SyncStream`): `send_all`, `receive(size, timeout)` (b"" once the
  agent closed, TimeoutError once `timeout` passed), `receive_now(size)` (None if nothing
  has arrived), `fileno`, closing, and `socket`, the stdlib socket beneath (SO_PEERCRED).

Error rules: a broken connection is raised as the socket's own OSError in both worlds, so
both clients' messages name the same error (`Session.connection_lost` words it).
"""
