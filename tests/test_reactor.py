"""`run`'s event loop (`cli/run/reactor.py`): readers told when readable, timers in order,
and nothing told of news meant for a reader removed meanwhile. Real pipes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from unitsync.cli.run.reactor import Reactor


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    loop = Reactor()
    yield loop
    loop.close()


@pytest.fixture
def pipes() -> Iterator[set[int]]:
    """The descriptors a test opened and has not closed, closed after it."""
    open_fds: set[int] = set()
    yield open_fds
    for fd in open_fds:
        os.close(fd)


def _pipe(pipes: set[int]) -> tuple[int, int]:
    read_end, write_end = os.pipe()
    pipes.update((read_end, write_end))
    return read_end, write_end


def test_a_reader_is_told_when_its_descriptor_is_readable(
    reactor: Reactor, pipes: set[int]
) -> None:
    quiet, _ = _pipe(pipes)
    loud, loud_writer = _pipe(pipes)
    told: list[str] = []
    reactor.add_reader(quiet, lambda: told.append("quiet"))
    reactor.add_reader(loud, lambda: told.append(os.read(loud, 10).decode()))
    reactor.call_later(0.0, lambda: told.append("timer"))
    reactor.run_once()
    assert told == ["timer"]  # nothing readable: the timer ended the wait
    os.write(loud_writer, b"news")
    reactor.run_once()
    assert told == ["timer", "news"]
    with pytest.raises(KeyError):
        reactor.add_reader(loud, lambda: None)


def test_a_reader_removed_in_the_same_round_is_not_told(reactor: Reactor, pipes: set[int]) -> None:
    first, first_writer = _pipe(pipes)
    second, second_writer = _pipe(pipes)
    told: list[int] = []

    def remove_the_other(me: int, other: int) -> None:
        told.append(me)
        reactor.remove_reader(other)

    reactor.add_reader(first, lambda: remove_the_other(first, second))
    reactor.add_reader(second, lambda: remove_the_other(second, first))
    os.write(first_writer, b"x")
    os.write(second_writer, b"x")
    reactor.run_once()
    assert len(told) == 1  # whichever came first removed the other


def test_a_descriptor_number_taken_again_is_not_told_the_old_news(
    reactor: Reactor, pipes: set[int]
) -> None:
    first, first_writer = _pipe(pipes)
    old, old_writer = _pipe(pipes)
    told: list[str] = []

    def replace_old() -> None:
        told.append("first")
        reactor.remove_reader(old)
        os.close(old)
        pipes.discard(old)
        new_read, _ = _pipe(pipes)  # the lowest free number: the old one's
        assert new_read == old
        reactor.add_reader(new_read, lambda: told.append("new"))

    reactor.add_reader(first, replace_old)
    reactor.add_reader(old, lambda: told.append("old"))
    os.write(first_writer, b"x")
    os.write(old_writer, b"x")  # readable when polled: news of the old descriptor
    reactor.run_once()
    assert "new" not in told and "old" not in told[1:]


def test_timers_run_in_order_and_cancelled_ones_not_at_all(reactor: Reactor) -> None:
    told: list[str] = []
    now = reactor.now()
    reactor.call_at(now + 0.002, lambda: told.append("second"))
    reactor.call_at(now, lambda: told.append("first"))
    reactor.call_at(now + 0.001, lambda: told.append("cancelled")).cancel()
    reactor.call_at(now + 0.002, lambda: told.append("third"))  # same time: in the order set
    for _ in range(1000):  # (each round waits for the next timer; a real hang ends here)
        if len(told) == 3:
            break
        reactor.run_once()
    assert told == ["first", "second", "third"]


def test_a_descriptor_closed_while_watched_is_dropped_quietly(
    reactor: Reactor, pipes: set[int]
) -> None:
    """As `epoll` forgets a closed descriptor: its reader is not told (it would read a
    closed descriptor) and the loop does not spin on it; its owner may still remove it."""
    closed, _ = _pipe(pipes)
    told: list[str] = []
    reactor.add_reader(closed, lambda: told.append("closed"))
    os.close(closed)
    pipes.discard(closed)
    for _ in range(3):
        reactor.call_later(0.0, lambda: told.append("timer"))
        reactor.run_once()
    assert told == ["timer", "timer", "timer"]
    reactor.remove_reader(closed)
