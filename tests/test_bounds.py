"""Every stored thing has a bound, and with them every view and reply fits in a frame (SPEC §12).

The worst case is built from the bounds themselves (`wire.bounds`): a unit with every list
full and every string as long as it may be, shown with every field the agent fills. If a
bound is raised past what a frame holds, `test_the_biggest_unit_view_fits_in_a_frame`
fails, and `test_a_bound_raised_past_the_frame_is_caught` shows that it would.
"""

from __future__ import annotations

import socket
from pathlib import Path

import msgspec
import pytest
import trio

from unitsync.agent.core import views
from unitsync.agent.core.graph import Graph
from unitsync.agent.core.records import HistoryEntry, OwnerRecord, UnitImage
from unitsync.agent.core.views import unit_view
from unitsync.agent.serve.server import AgentConfig
from unitsync.agent.service import Service
from unitsync.client import Client
from unitsync.wire import bounds
from unitsync.wire.bounds import (
    DEPENDENTS_SHOWN,
    HISTORY_LIMIT,
    MAX_COMMAND_BYTES,
    MAX_DEPS,
    MAX_NAME_BYTES,
    MAX_REASON_BYTES,
    check_request,
    escaped,
)
from unitsync.wire.errors import Refused, UsageError
from unitsync.wire.framing import MAX_FRAME, decode_reply, encode, take_frame
from unitsync.wire.protocol import (
    PROTOCOL_VERSION,
    Changed,
    Error,
    Fail,
    FullView,
    Hello,
    Owner,
    Start,
    StatusReply,
    Waiting,
    Want,
)

from harness.applied import AppliedGraph

BIG_INT = 2**63 - 1
"""Numbers encode at most this wide."""


def longest_name(tag: int) -> str:
    """A distinct name of exactly MAX_NAME_BYTES bytes of UTF-8 (several bytes a character)."""
    head = f"{tag:06d}-"
    return (
        head + "é" * ((MAX_NAME_BYTES - len(head)) // 2) + "x" * ((MAX_NAME_BYTES - len(head)) % 2)
    )


def worst_case_graph(
    deps: int = MAX_DEPS, history: int = HISTORY_LIMIT, reason: int = MAX_REASON_BYTES
) -> tuple[Graph, str]:
    """A graph whose unit `name` has everything a unit may hold at its bound, and more units
    wanting it than a view lists."""
    name = longest_name(0)
    text = "r" * reason
    entries = [
        HistoryEntry(float(BIG_INT), "completed", "completed", text, float(BIG_INT), BIG_INT)
        for _ in range(history)
    ]
    owner = OwnerRecord(BIG_INT, BIG_INT, "c" * MAX_COMMAND_BYTES, "start", "p" * 64, "h" * 255)
    dep_names = [longest_name(i) for i in range(1, deps + 1)]
    wanting = [longest_name(100_000 + i) for i in range(DEPENDENTS_SHOWN + 50)]
    images = [
        UnitImage(
            name, "completed", float(BIG_INT), text, dep_names, entries, "t" * 64, True, owner
        )
    ]
    images += [UnitImage(dep, "completed", 0.0, "", [], []) for dep in dep_names]
    images += [UnitImage(w, "pending", 0.0, "", [name], []) for w in wanting]
    return Graph.from_images(images), name


def biggest_frame(graph: Graph, name: str) -> int:
    """The largest frame any reply or event showing `name` takes: its view in a `status`
    reply, a watcher's full view and change, a `start`'s progress."""
    pending = list(graph.units[name].deps)
    view = unit_view(graph, name, waiting_on=pending, waiters=BIG_INT, owner_alive=None)
    at = float(BIG_INT)
    frames = [
        StatusReply([view], at, more=True, boot=BIG_INT, boot_since=at),
        FullView([view], at, more=True),
        Changed(view, at),
        Waiting(name, pending[:MAX_DEPS], at),
    ]
    return max(len(msgspec.msgpack.encode(frame)) + 4 for frame in frames)


def test_the_biggest_unit_view_fits_in_a_frame() -> None:
    graph, name = worst_case_graph()
    size = biggest_frame(graph, name)
    print(f"\nthe biggest unit view's frame: {size:,} bytes of {MAX_FRAME:,}")
    assert size <= MAX_FRAME
    view = unit_view(graph, name)
    assert len(view.dependencies) == MAX_DEPS and len(view.history) == HISTORY_LIMIT
    assert view.cut == [f"dependents: 50 of {DEPENDENTS_SHOWN + 50:,} not listed (a view lists "
                        f"the first {DEPENDENTS_SHOWN} by name)"]  # fmt: skip
    encode(Changed(view, 0.0))  # the frame encoder agrees


def test_a_bound_raised_past_the_frame_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check has teeth: with three times the dependencies allowed, the worst case is
    past the frame limit (and an agent built that way would break `status` for everyone)."""
    monkeypatch.setattr(views, "MAX_DEPS", 3 * MAX_DEPS)
    graph, name = worst_case_graph(deps=3 * MAX_DEPS)
    assert biggest_frame(graph, name) > MAX_FRAME


def test_what_a_journal_holds_past_the_bounds_is_cut_in_the_view() -> None:
    """A journal written before the bounds may hold more: the view cuts it and says what."""
    graph, name = worst_case_graph(deps=3 * MAX_DEPS, reason=5 * MAX_REASON_BYTES)
    unit = graph.units[name]
    unit.owner = OwnerRecord(1, 1, "x" * 900_000, "start")
    assert biggest_frame(graph, name) <= MAX_FRAME
    view = unit_view(graph, name, waiting_on=list(unit.deps))
    assert len(view.dependencies) == len(view.waiting_on) == MAX_DEPS
    assert len(view.reason.encode()) == MAX_REASON_BYTES and view.reason.endswith("…")
    assert all(len(t.reason.encode()) <= MAX_REASON_BYTES for t in view.history)
    assert view.owner is not None and len(view.owner.command.encode()) == MAX_COMMAND_BYTES
    fields = sorted(entry.split(":")[0] for entry in view.cut)
    assert fields == ["dependencies", "dependents", "history", "owner", "reason", "waiting_on"]
    assert "1,000 of 1,500 not listed (stored before that bound)" in " ".join(view.cut)


@pytest.mark.parametrize(
    ("request_", "bound"),
    [
        (Want("big", [f"d{i}" for i in range(MAX_DEPS + 1)]), f"at most {MAX_DEPS}"),
        (Fail("u", "x" * (MAX_REASON_BYTES + 1)), f"longer than {MAX_REASON_BYTES} bytes"),
        (Start("u", owner=Owner(1, 1, "c" * (MAX_COMMAND_BYTES + 1))), "limit is 1024 bytes"),
        (Start("u", token="t" * 65), "limit is 64 bytes"),
    ],
    ids=["dependencies", "reason", "owner command", "token"],
)
def test_a_request_past_a_bound_is_refused_naming_it(request_: object, bound: str) -> None:
    with pytest.raises(Refused, match=bound) as refused:
        check_request(request_)  # type: ignore[arg-type]
    assert refused.value.exit_code == 1


def test_a_string_that_is_not_utf8_is_a_usage_error_naming_it_as_typed() -> None:
    with pytest.raises(UsageError, match=r"the dependency 'a\\xff' is not valid UTF-8") as error:
        check_request(Want("app", ["ok", "a\udcff"]))
    assert error.value.exit_code == 2
    assert escaped("it's é\udcfe\n") == "'it\\'s é\\xfe\\n'"


async def test_the_agent_refuses_what_a_client_would_not_send(
    agent: Service, config: AgentConfig
) -> None:
    """The agent checks every request itself: a raw frame past a bound is refused with an
    error reply, nothing stored, and the connection goes on."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(str(config.socket))
    buffer = bytearray()

    async def ask(request: object) -> object:
        data = memoryview(encode(request))  # type: ignore[arg-type]
        while data:
            data = data[await sock.send(data) :]
        while (body := take_frame(buffer)) is None:
            buffer.extend(await sock.recv(65536))
        return decode_reply(body)

    await ask(Hello(PROTOCOL_VERSION))
    owner = Owner(1, 1, "sh -c " + "x" * 900_000)
    reply = await ask(Start("svc", owner=owner))
    assert isinstance(reply, Error) and "an owner's command line is 900006 bytes" in reply.message
    reply = await ask(Want("big", [f"dep{i}" for i in range(1, 25_001)]))
    assert isinstance(reply, Error) and "would want 25000 units" in reply.message
    for i in range(50):
        assert not isinstance(await ask(Fail("poison", f"{i}" + "p" * 4000, force=True)), Error)
    sock.close()
    assert "svc" not in agent.graph.units and "big" not in agent.graph.units
    views_ = await trio.to_thread.run_sync(lambda: Client(config.socket).status())
    assert {view.name for view in views_} == {"poison"}


def test_a_client_refuses_before_sending(tmp_path: Path) -> None:
    """No socket is even needed: the request is refused before a frame is built."""
    client = Client(tmp_path / "nowhere.sock", autostart=False)
    with pytest.raises(Refused, match=f"at most {MAX_DEPS}"):
        client.want("big", *(f"dep{i}" for i in range(25_000)))
    with pytest.raises(UsageError, match=r"unit name 'a\\xff'"):
        client.complete("a\udcff")


def test_the_bounds_are_the_documented_numbers() -> None:
    """README and SPEC name these numbers: change them there too."""
    assert (MAX_NAME_BYTES, MAX_DEPS, MAX_REASON_BYTES, MAX_COMMAND_BYTES, HISTORY_LIMIT) == (
        255,
        500,
        4096,
        1024,
        100,
    )
    assert (bounds.MAX_TOKEN_BYTES, DEPENDENTS_SHOWN) == (64, 500)


def test_a_5000_deep_critical_chain_prints_in_proportion_to_its_length() -> None:
    """It printed 25 MB: each step was indented one more than the last."""
    from unitsync.cli.timeline.critical_chain import critical_chain
    from unitsync.cli.timeline.model import build_timeline
    from unitsync.cli.timeline.text import render_chain

    graph, depth, now = AppliedGraph(), 5000, 1_700_000_000.0
    for i in range(1, depth):
        graph.want(f"c{i}", [f"c{i - 1}"], now=now)
    for i in range(depth):
        graph.start(f"c{i}", now=now + i)
        graph.complete(f"c{i}", now=now + i + 0.5)
    timeline = build_timeline([unit_view(graph, name) for name in graph.units], now + depth)
    text = render_chain(timeline, critical_chain(timeline, f"c{depth - 1}"))
    lines = text.splitlines()
    print(f"\na {depth}-deep critical chain: {len(text):,} characters")
    assert len(lines) == depth + 3 and max(map(len, lines)) < 120
