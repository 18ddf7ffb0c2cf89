"""The client session on its own: bytes in, events out, no socket (issue 9).

Both clients only move bytes for it, so each rule is tested here once, with the agent's
side played by frames built from the wire types; `test_clients.py` checks both clients
against real agents.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from unitsync.wire.errors import (
    AgentBusy,
    AgentGone,
    AgentUntrusted,
    DependencyFailed,
    GraphChanged,
)
from unitsync.wire.framing import decode_request, encode, take_frame
from unitsync.wire.host.peer import Peer
from unitsync.wire.protocol import (
    PROTOCOL_VERSION,
    Complete,
    Error,
    Hello,
    Ok,
    Ping,
    Pong,
    Request,
    Start,
    Status,
    StatusReply,
    UnitView,
    Waiting,
    Want,
    Welcome,
)
from unitsync.wire.session import NEED_DATA, GraphMemory, Session, State, check_trust

PATH = Path("/run/user/1000/unitsync/agent.sock")
GRAPH = "a1" * 16
WELCOME = encode(Welcome(PROTOCOL_VERSION, "0.1.0", 42, GRAPH, "/home/me/.local/state/unitsync"))
PONG = encode(Pong("0.1.0", 42, 1.0, str(PATH)))
ME = 1000


def sent(data: bytes) -> list[object]:
    """The requests in bytes a session asked to send."""
    buffer, requests = bytearray(data), []
    while (body := take_frame(buffer)) is not None:
        requests.append(decode_request(body))
    return requests


def greeted() -> Session:
    """A session past its first exchange (a ping), between requests."""
    session = Session(PATH)
    session.send(Ping())
    session.receive_data(WELCOME + PONG)
    assert isinstance(session.next_event(), Pong)
    return session


def view(name: str) -> UnitView:
    return UnitView(name, "pending", True, 0.0, "", [], 0, [], [], [])


# --- the exchange ------------------------------------------------------------------------------


def test_the_hello_goes_with_the_first_request_only() -> None:
    session = Session(PATH, client="cli")
    first = sent(session.send(Ping()))
    assert [type(r) for r in first] == [Hello, Ping]
    assert first[0].client.startswith("cli/")  # type: ignore[attr-defined]
    assert session.state is State.GREETING
    session.receive_data(WELCOME + PONG)
    assert isinstance(session.next_event(), Pong)
    assert session.state is State.IDLE and session.welcome is not None
    assert [type(r) for r in sent(session.send(Want("app", ["db"])))] == [Want]


def test_a_reply_arriving_byte_by_byte_comes_out_whole() -> None:
    session = Session(PATH)
    session.send(Ping())
    for byte in WELCOME + PONG:
        assert session.next_event() is NEED_DATA
        session.receive_data(bytes([byte]))
    assert isinstance(session.next_event(), Pong)


def test_a_start_hears_waiting_events_until_it_is_started() -> None:
    session = greeted()
    session.send(Start("app"))
    session.receive_data(encode(Waiting("app", ["db"], 1.0)))
    assert isinstance(session.next_event(), Waiting)
    assert session.state is State.AWAITING


def test_a_reply_split_over_frames_comes_out_whole() -> None:
    session = greeted()
    session.send(Status())
    session.receive_data(encode(StatusReply([view("a"), view("b")], 1.0, more=True)))
    assert session.next_event() is NEED_DATA  # the first part is not handed out alone
    session.receive_data(encode(StatusReply([view("c")], 1.0)))
    whole = session.next_event()
    assert isinstance(whole, StatusReply) and not whole.more
    assert [u.name for u in whole.units] == ["a", "b", "c"]
    assert session.state is State.IDLE


def test_an_error_reply_is_raised_as_its_error_and_ends_the_exchange() -> None:
    session = greeted()
    session.send(Start("app"))
    session.receive_data(
        encode(Error("dependency_failed", "db failed", unit="app", dependency="db"))
    )
    with pytest.raises(DependencyFailed, match="db failed") as caught:
        session.next_event()
    assert caught.value.exit_code == 4
    assert session.state is State.IDLE  # the connection may carry the next request


# --- one graph per client (SPEC §11) ------------------------------------------------------------


def test_a_client_names_the_graph_of_its_first_welcome_in_every_later_hello() -> None:
    memory = GraphMemory()
    first = Session(PATH, memory=memory)
    [hello, _ping] = sent(first.send(Ping()))
    assert hello.graph == ""  # type: ignore[attr-defined]  # first contact
    first.receive_data(WELCOME + PONG)
    assert isinstance(first.next_event(), Pong)
    assert (memory.graph, memory.state) == (GRAPH, "/home/me/.local/state/unitsync")
    [again, _ping] = sent(Session(PATH, memory=memory).send(Ping()))
    assert again.graph == GRAPH  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("request_", "said"),
    [
        (
            Start("app"),
            "not the one 'app' was waiting in (a1a1a1a1, state in D1); not starting app",
        ),
        (
            Start("svc", again=True),
            "not the one 'svc' was running in (a1a1a1a1, state in D1); not taking svc's run back",
        ),
        (
            Complete("svc"),
            "not the one 'svc' was running in (a1a1a1a1, state in D1); not completing svc",
        ),
        (
            Ping(),
            "not the one this client talked to before (a1a1a1a1, state in D1); "
            "nothing was done there",
        ),
    ],
)
def test_a_welcome_from_another_graph_ends_the_connection_naming_both(
    request_: Request, said: str
) -> None:
    memory = GraphMemory()
    memory.graph, memory.state = GRAPH, "D1"
    session = Session(PATH, memory=memory)
    session.send(request_)
    other = "b2" * 16
    session.receive_data(encode(Welcome(PROTOCOL_VERSION, "0.1.0", 43, other, "D2")) + PONG)
    with pytest.raises(GraphChanged) as caught:
        session.next_event()
    assert str(caught.value) == (
        f"the agent at {PATH} now serves another graph (b2b2b2b2, state in D2), {said}"
    )
    assert caught.value.exit_code == 3 and not caught.value.passing  # never retried
    assert (caught.value.expected, caught.value.found) == (GRAPH, other)
    assert session.state is State.CLOSED  # no reply of the other graph is ever taken
    assert memory.graph == GRAPH  # still the client's graph


# --- breaches: the session ends, saying what happened ------------------------------------------


def test_a_refusal_before_the_welcome_is_raised_as_itself() -> None:
    session = Session(PATH)
    session.send(Ping())
    session.receive_data(encode(Error("busy", "the agent serves 8 connections")))
    with pytest.raises(AgentBusy, match="8 connections"):
        session.next_event()
    assert session.state is State.CLOSED


@pytest.mark.parametrize(
    ("before", "reply", "message"),
    [
        (None, PONG, "answered Pong before its welcome"),
        (Ping(), encode(Ok()), "unexpected Ok"),
        (Status(), PONG, "unexpected Pong"),
    ],
)
def test_a_reply_out_of_turn_ends_the_session(before: object, reply: bytes, message: str) -> None:
    session = Session(PATH) if before is None else greeted()
    session.send(before or Ping())  # type: ignore[arg-type]
    session.receive_data(reply)
    with pytest.raises(AgentGone, match=message):
        session.next_event()
    assert session.state is State.CLOSED


def test_a_reply_when_nothing_was_asked_ends_the_session() -> None:
    session = greeted()
    session.receive_data(PONG)
    with pytest.raises(AgentGone, match="sent Pong when nothing was asked"):
        session.next_event()


def test_the_agent_closing_mid_reply_is_told_apart_from_closing_between() -> None:
    session = greeted()
    session.send(Ping())
    session.receive_data(PONG[:5])
    session.receive_data(b"")
    with pytest.raises(AgentGone, match="closed in the middle of a reply"):
        session.next_event()
    closed = greeted()
    closed.send(Ping())
    closed.receive_data(b"")
    with pytest.raises(AgentGone, match=f"the agent at {PATH} closed the connection"):
        closed.next_event()


def test_an_unreadable_frame_ends_the_session_naming_it() -> None:
    session = greeted()
    session.send(Ping())
    session.receive_data(b"\x00\x00\x00\x03abc")
    with pytest.raises(AgentGone, match="a frame this client cannot read"):
        session.next_event()


# --- the reconnect-once rule and abandoned calls -----------------------------------------------


def test_a_request_may_go_again_only_on_a_reused_connection_that_said_nothing() -> None:
    fresh = Session(PATH)
    fresh.send(Ping())
    assert not fresh.retry_is_safe  # the first exchange: the agent may have seen it
    reused = greeted()
    reused.send(Ping())
    assert reused.retry_is_safe  # closed as idle: it never carried the request
    reused.receive_data(PONG[:2])
    assert not reused.retry_is_safe  # part of a reply came: the request was seen


def test_a_call_given_up_half_way_cannot_be_followed_on_the_same_session() -> None:
    session = greeted()
    session.send(Start("app"))  # ... and the caller is cancelled before the reply
    with pytest.raises(RuntimeError, match="in state AWAITING"):
        session.send(Ping())  # the clients open a new connection instead


# --- trust, without a second user --------------------------------------------------------------


def folder(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 1, 1, 2, uid, uid, 4096, 0, 0, 0))


@pytest.mark.parametrize(
    ("owner", "mode", "peer"),
    [(ME, 0o700, ME), (0, 0o755, ME), (ME, 0o700, 0), (0, 0o755, 0)],
    ids=["all mine", "root's folder (/run/user)", "an agent run as root", "all root's"],
)
def test_the_users_own_agent_and_roots_are_trusted(owner: int, mode: int, peer: int) -> None:
    check_trust(PATH, folder(owner, mode), Peer(7, peer, peer), ME)


@pytest.mark.parametrize(
    ("owner", "mode", "peer", "message"),
    [
        (2000, 0o700, ME, "belongs to uid 2000, not to you"),
        (0, 0o1777, ME, "writable by others (mode 1777)"),  # /tmp itself
        (ME, 0o770, ME, "writable by others (mode 0770)"),
        (ME, 0o702, ME, "writable by others (mode 0702)"),
        (ME, 0o700, 2000, "it runs as uid 2000 (pid 7)"),
    ],
    ids=["another's folder", "a shared folder", "group-writable", "world-writable", "another's"],
)
def test_anything_else_is_refused_before_a_byte_is_sent(
    owner: int, mode: int, peer: int, message: str
) -> None:
    with pytest.raises(AgentUntrusted, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_trust(PATH, folder(owner, mode), Peer(7, peer, peer), ME)
