"""A graph's identity (SPEC §11): made once when the graph is created, kept for good.

A journal's state dir keeps it in its format (`agent.store.journal.logfile`), an etcd prefix
in one key (`agent.store.etcd.store`). The agent names it in every welcome and pong; a client
remembers the one it first talked to (`wire.session.GraphMemory`), so a reconnection that finds an
agent of another graph, at the same socket, carries out nothing.

An id is 32 lowercase hex digits (128 random bits): two graphs never share one. People
see it shortened, as git shows a commit.
"""

from __future__ import annotations

SIZE = 16
"""Bytes of randomness: a collision between two graphs is out of the question."""
SHOWN = 8
"""Hex digits shown to people: enough to tell a user's few graphs apart at a glance."""
_HEX = frozenset("0123456789abcdef")


def new_graph_id() -> str:
    import secrets  # the agent's alone: clients only compare and show ids

    return secrets.token_hex(SIZE)


def is_graph_id(text: str) -> bool:
    return len(text) == 2 * SIZE and set(text) <= _HEX


def short(graph: str) -> str:
    """The id as people see it (`ping`, messages); an empty id (an older agent) as `?`."""
    return graph[:SHOWN] or "?"
