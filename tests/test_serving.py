"""The agent's side of a connection on its own: frames in, frames to send, no socket.

`wire.serving` holds every rule of the agent's side of the protocol; the agent's
connection task only moves its frames (`test_agent.py`, `test_hostile.py` check that
against real sockets). Here each rule is tested once, and the two sans-IO ends are played
against each other: the client's `Session` and the agent's `Serving`, bytes both ways.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from unitsync.wire import __version__
from unitsync.wire.bounds import MAX_DEPS, MAX_REASON_BYTES
from unitsync.wire.errors import GraphChanged, Refused
from unitsync.wire.framing import MAX_FRAME, encode, take_frame
from unitsync.wire.protocol import (
    PROTOCOL_VERSION,
    Changed,
    Error,
    Fail,
    FullView,
    Hello,
    Ok,
    Order,
    Ping,
    Pong,
    Start,
    Started,
    Status,
    StatusReply,
    UnitView,
    Waiting,
    Want,
    Watch,
    Welcome,
)
from unitsync.wire.serving import (
    SHUTTING_DOWN,
    Serving,
    State,
    busy,
    too_large,
    untrusted,
)
from unitsync.wire.session import NEED_DATA, GraphMemory, Session

GRAPH = "a1" * 16
STATE = "/home/me/.local/state/unitsync"
PID = 42
ORDER = Order("svc", "supersede", "t1", "a new run")


def body(message: msgspec.Struct) -> bytes:
    """A frame's body, as the connection hands it over (header taken off)."""
    return encode(message)[4:]


def greeted() -> Serving:
    """A connection past its hello, between exchanges."""
    serving = Serving(GRAPH, STATE, PID)
    assert serving.hello(body(Hello(PROTOCOL_VERSION, "test/1"))) == [serving.welcome]
    return serving


def view(name: str, reason: str = "") -> UnitView:
    return UnitView(name, "pending", True, 0.0, reason, [], 0, [], [], [])


# --- the hello ---------------------------------------------------------------------------------


def test_a_hello_of_this_version_is_welcomed_naming_the_graph_served() -> None:
    serving = Serving(GRAPH, STATE, PID)
    [welcome] = serving.hello(body(Hello(PROTOCOL_VERSION, "cli/0.1.0")))
    assert welcome == Welcome(PROTOCOL_VERSION, __version__, PID, GRAPH, STATE)
    assert serving.state is State.IDLE


@pytest.mark.parametrize(
    ("first", "said"),
    [
        (body(Ping()), "the first frame must be a hello stating the version"),
        (body(Hello(PROTOCOL_VERSION - 1)), f"protocol version {PROTOCOL_VERSION - 1} is not"),
        (b"\xc1", "invalid request"),
    ],
    ids=["not a hello", "another version", "not msgpack"],
)
def test_a_first_frame_that_is_not_a_good_hello_is_refused_and_ends_it(
    first: bytes, said: str
) -> None:
    serving = Serving(GRAPH, STATE, PID)
    [refusal] = serving.hello(first)
    assert isinstance(refusal, Error) and refusal.code == "protocol"
    assert said in refusal.message
    assert serving.state is State.CLOSED


def test_another_version_is_told_which_one_this_agent_speaks() -> None:
    [refusal] = Serving(GRAPH, STATE, PID).hello(body(Hello(PROTOCOL_VERSION + 1)))
    assert isinstance(refusal, Error)
    assert refusal.message == (
        f"protocol version {PROTOCOL_VERSION + 1} is not supported; this agent "
        f"({__version__}) speaks version {PROTOCOL_VERSION}: use a matching unitsync"
    )


def test_a_hello_naming_another_graph_is_welcomed_then_told_and_nothing_is_read() -> None:
    serving = Serving(GRAPH, STATE, PID)
    other = "b2" * 16
    welcome, changed = serving.hello(body(Hello(PROTOCOL_VERSION, "cli", graph=other)))
    assert welcome == serving.welcome
    assert isinstance(changed, Error) and changed.code == "graph_changed"
    assert changed.message == (
        f"this agent serves graph a1a1a1a1 (state in {STATE}), not graph b2b2b2b2, the one "
        "this client talked to before; nothing was done"
    )
    assert serving.state is State.CLOSED
    with pytest.raises(RuntimeError, match="in state CLOSED"):
        serving.request(body(Want("app", ["db"])))  # the connection reads nothing more


def test_a_hello_naming_this_graph_goes_on() -> None:
    serving = Serving(GRAPH, STATE, PID)
    assert serving.hello(body(Hello(PROTOCOL_VERSION, graph=GRAPH))) == [serving.welcome]
    assert serving.state is State.IDLE


def test_nothing_is_sent_before_the_welcome() -> None:
    serving = Serving(GRAPH, STATE, PID)
    serving.push(ORDER)
    assert not serving.orders_due()
    with pytest.raises(RuntimeError, match="a request in state GREETING"):
        serving.request(body(Ping()))
    with pytest.raises(RuntimeError, match="in state GREETING"):
        serving.reply(Pong(__version__, PID, 1.0, "/s"))


def test_only_the_agents_own_user_may_talk_to_it() -> None:
    assert untrusted(1000, 1000) is None
    refusal = untrusted(2000, 1000)
    assert refusal == Error("untrusted", "uid 2000 may not use this agent; it serves uid 1000 only")


# --- requests ----------------------------------------------------------------------------------


def test_a_request_is_decoded_and_its_reply_ends_the_exchange() -> None:
    serving = greeted()
    assert serving.request(body(Want("app", ["db"]))) == Want("app", ["db"])
    assert serving.state is State.SERVING
    assert serving.reply(Ok(unit="app")) == [Ok(unit="app")]
    assert serving.state is State.IDLE


def test_a_second_hello_is_a_protocol_error_and_the_connection_goes_on() -> None:
    serving = greeted()
    error = serving.request(body(Hello(PROTOCOL_VERSION)))
    assert error == Error("protocol", "hello may only be sent once, as the first frame")
    assert serving.reply(error) == [error]
    assert serving.state is State.IDLE
    assert serving.request(body(Ping())) == Ping()


def test_a_frame_that_is_no_request_is_answered_and_the_connection_goes_on() -> None:
    serving = greeted()
    error = serving.request(msgspec.msgpack.encode({"op": "launch", "unit": "x"}))
    assert isinstance(error, Error) and error.code == "protocol"
    assert "invalid request" in error.message
    serving.reply(error)
    assert serving.state is State.IDLE


@pytest.mark.parametrize(
    "request_",
    [
        Want("app", [f"d{i}" for i in range(MAX_DEPS + 1)]),
        Fail("app", "r" * (MAX_REASON_BYTES + 1)),
    ],
    ids=["too many deps", "reason too long"],
)
def test_a_request_past_a_bound_is_refused_as_the_client_would_refuse_it(
    request_: msgspec.Struct,
) -> None:
    serving = greeted()
    error = serving.request(msgspec.msgpack.encode(request_))
    assert isinstance(error, Error) and error.code in ("invalid", "usage")
    with pytest.raises(Exception) as client_side:
        Session(Path("/s")).send(request_)  # type: ignore[arg-type]
    assert error.message == str(client_side.value)


def test_a_string_that_is_not_utf8_is_refused_saying_so() -> None:
    serving = greeted()
    want = b"\x83\xa2op\xa4want\xa4unit\xa1\xff\xa4deps\x91\xa2db"  # unit: the byte 0xff
    error = serving.request(want)
    assert error == Error("protocol", "invalid request: Invalid UTF-8 encoded string")


def test_a_reply_the_request_does_not_get_is_the_agents_bug_never_sent() -> None:
    serving = greeted()
    serving.request(body(Status()))
    with pytest.raises(RuntimeError, match="Ok does not answer Status"):
        serving.reply(Ok())


def test_a_start_hears_waiting_before_its_start_and_no_timeout_applies() -> None:
    serving = greeted()
    serving.request(body(Start("app", token="t")))
    assert serving.open_ended
    on = [f"d{i}" for i in range(MAX_DEPS + 20)]  # from a journal older than the bound
    [waiting] = serving.reply(Waiting("app", on, 1.0))
    assert isinstance(waiting, Waiting) and waiting.on == on[:MAX_DEPS]
    assert len(encode(waiting)) <= MAX_FRAME
    assert serving.state is State.SERVING
    serving.reply(Started("app", at=2.0, waited=1.0))
    assert serving.state is State.IDLE and not serving.open_ended


def test_an_error_ends_any_exchange() -> None:
    serving = greeted()
    serving.request(body(Start("app")))
    serving.reply(Waiting("app", ["db"], 1.0))
    serving.reply(Error("dependency_failed", "db failed", unit="app", dependency="db"))
    assert serving.state is State.IDLE


# --- what may be sent when -------------------------------------------------------------------


def test_an_order_waits_for_the_end_of_the_exchange_under_way() -> None:
    serving = greeted()
    serving.request(body(Start("web", token="t2")))
    serving.reply(Waiting("web", ["db"], 1.0))
    serving.push(ORDER)  # pushed by another task while the start waits
    assert not serving.orders_due()  # never inside a reply
    serving.reply(Started("web", at=2.0, waited=1.0))
    assert list(serving.orders_due()) == [ORDER]
    assert not serving.orders_due()  # sent once


def test_an_order_pushed_between_exchanges_is_due_at_once() -> None:
    serving = greeted()
    serving.push(ORDER)
    assert list(serving.orders_due()) == [ORDER]


def test_a_watch_sends_its_events_until_the_end() -> None:
    serving = greeted()
    serving.request(body(Watch()))
    assert serving.open_ended
    assert serving.reply(FullView([view("a")], 1.0)) == [FullView([view("a")], 1.0)]
    assert serving.state is State.WATCHING
    changed = Changed(view("a"), at=2.0)
    assert serving.reply(changed) == [changed]
    serving.push(ORDER)
    assert not serving.orders_due()  # a watch has no between
    with pytest.raises(RuntimeError, match="a watch sends no Pong"):
        serving.reply(Pong(__version__, PID, 1.0, "/s"))
    assert serving.closing(SHUTTING_DOWN) == [SHUTTING_DOWN]
    assert serving.state is State.CLOSED


def test_a_list_of_units_is_split_into_frames_under_the_limit() -> None:
    serving = greeted()
    serving.request(body(Status()))
    units = [view(f"u{i}", reason="r" * 4000) for i in range(400)]  # about 1.6 MB
    frames = serving.reply(StatusReply(units, 1.0, boot=3))
    assert len(frames) > 1
    assert all(len(encode(frame)) <= MAX_FRAME for frame in frames)
    assert [frame.more for frame in frames] == [True] * (len(frames) - 1) + [False]  # type: ignore[attr-defined]
    assert {frame.boot for frame in frames} == {3}  # type: ignore[attr-defined]
    assert [u for frame in frames for u in frame.units] == units  # type: ignore[attr-defined]
    assert serving.state is State.IDLE


def test_the_refusals_made_outside_an_exchange_say_what_to_do() -> None:
    assert "raise --max-connections" in busy(8).message
    assert "please report this as a bug" in too_large(MAX_FRAME + 1).message


# --- both ends, no socket --------------------------------------------------------------------


def exchange(session: Session, serving: Serving, request: msgspec.Struct, *replies: object):
    """Send `request` from the client's side, answer it with `replies` from the agent's; the
    events the client hands out."""
    buffer = bytearray(session.send(request))  # type: ignore[arg-type]
    sent: list[msgspec.Struct] = []
    while serving.state is not State.CLOSED and (frame := take_frame(buffer)) is not None:
        if serving.state is State.GREETING:
            sent += serving.hello(frame)
        else:
            assert serving.request(frame) == request
    for reply in replies:
        sent += serving.reply(reply)  # type: ignore[arg-type]
    for frame in sent:
        session.receive_data(encode(frame))
    events = []
    while (event := session.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def test_the_client_session_and_the_agents_side_agree() -> None:
    session, serving = Session(Path("/s")), Serving(GRAPH, STATE, PID)
    pong = Pong(__version__, PID, 1.0, "/s", graph=GRAPH)
    assert exchange(session, serving, Ping(), pong) == [pong]
    units = [view(f"u{i}", reason="r" * 4000) for i in range(400)]
    [whole] = exchange(session, serving, Status(), StatusReply(units, 2.0))
    assert isinstance(whole, StatusReply) and whole.units == units  # split, then whole again
    waiting, started = Waiting("app", ["db"], 1.0), Started("app", at=2.0, waited=1.0)
    assert exchange(session, serving, Start("app"), waiting, started) == [waiting, started]
    with pytest.raises(Refused, match="unknown unit"):
        exchange(session, serving, Status("ghost"), Error("unknown_unit", "unknown unit 'ghost'"))
    assert serving.state is State.IDLE


def test_a_client_of_another_graph_hears_why_and_the_agent_reads_nothing_more() -> None:
    memory = GraphMemory()
    memory.graph, memory.state = "b2" * 16, "/elsewhere"
    session, serving = Session(Path("/s"), memory=memory), Serving(GRAPH, STATE, PID)
    with pytest.raises(GraphChanged):
        exchange(session, serving, Want("app", ["db"]))
    assert serving.state is State.CLOSED
