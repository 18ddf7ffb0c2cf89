"""The error mapping (`unitsync.wire.errors`): every code the agent can send comes back, in
every client, as one exception class with one exit status, and goes out again unchanged."""

from __future__ import annotations

import typing

import pytest

from unitsync.wire.errors import from_reply, to_reply
from unitsync.wire.protocol import Error, ErrorCode

EXIT_STATUS = {
    "dependency_failed": ("DependencyFailed", 4),
    "not_durable": ("NotDurable", 6),
    "once_done": ("AlreadyDone", 7),
    "busy": ("AgentBusy", 3),
    "shutting_down": ("AgentGone", 3),
    "protocol": ("ProtocolError", 1),
    "graph_changed": ("GraphChanged", 3),
    "superseded": ("Superseded", 1),
    "untrusted": ("AgentUntrusted", 3),
    "start_failed": ("AgentStartFailed", 3),
    "timeout": ("WaitTimeout", 5),
    "unit_failed": ("UnitFailed", 4),
}
"""What README's exit-code table says of each code; every other code is a refusal, exit 1."""


@pytest.mark.parametrize("code", typing.get_args(ErrorCode))
def test_every_code_the_agent_sends_is_one_error_with_one_exit_status(code: str) -> None:
    reply = Error(code, f"what went wrong ({code})", unit="app", dependency="db")  # type: ignore[arg-type]
    exc = from_reply(reply)
    assert (type(exc).__name__, exc.exit_code) == EXIT_STATUS.get(code, ("Refused", 1))
    assert str(exc) == f"what went wrong ({code})"
    assert to_reply(exc) == reply  # and back, unchanged, as the agent sends it
