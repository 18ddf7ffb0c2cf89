"""What a readiness detector is, and where it reports: the seam between `ServiceRun` and
the three ways to be ready (`probe`, `output`, `notify_socket`).

A detector never talks to the agent and never ends the service: it watches, and tells
its `Listener` (the `ServiceRun`) that the service is ready, or what it says it is doing.
One that reads the service's output (`--ready-log`) says so with `reads_output = True`
and reads it through `seen(stream, data)`, a tap on the `ServiceRun`'s `output.Relay`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # (for the types only: a plain `run` loads no detector before its wait)
    from ..children import Child, Exits
    from ..reactor import Reactor


class Listener(Protocol):
    """Where a detector reports (the `ServiceRun`)."""

    def ready(self, how: str) -> None: ...

    def status_text(self, text: str) -> None:
        """What the service says it is doing while it starts (sd_notify's STATUS=)."""
        ...


class Detector(Protocol):
    """One way for a service to say it is ready: a probe, an output line, sd_notify."""

    def child_options(self) -> dict[str, Any]:
        """`spawn` options it needs (`env`, `stdout`, `stderr`), made just before the spawn."""
        ...

    def begin(self, reactor: Reactor, exits: Exits, service: Child, listener: Listener) -> None:
        """The service runs: watch it."""
        ...

    def stop(self) -> None:
        """Readiness no longer matters: stop watching for it (output still flows)."""
        ...

    def waiting_for(self) -> str:
        """What was awaited, for the reason of a service not ready in time."""
        ...

    def finish(self) -> None:
        """The service is gone (or never started): take what it left, release everything.

        Called exactly once; readiness found in the last output is still reported."""
        ...
