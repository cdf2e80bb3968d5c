"""Follow a flow run to its end and say how it ended in one line: the state and its message.

``prefect deployment run --watch`` prints only the final state's name ("Flow run finished in state
'Failed'"); the line that says which tile failed and why is the state's message. ``topozarr-flows
run ... --watch``, ``topozarr-flows watch RUN`` and ``topozarr-flows retry RUN --watch`` print it.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun

from topozarr_core.store.errors import redact


class WatchTimeout(TimeoutError):
    """The run did not end within the time given."""


def wait_for_end(flow_run_id: UUID | str, *, timeout: float | None = None, poll: float = 1.0,
                 start_after: Any = None) -> FlowRun:
    """The run once it is in a final state; with ``start_after`` (a state id), a final state other than
    that one (a retried run starts from its old final state).

    :param flow_run_id: the flow run's id.
    :param timeout: seconds to wait (None: no limit).
    :param poll: seconds between two reads of the run.
    :param start_after: a state id: wait for a final state other than that one.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(UUID(str(flow_run_id)))
            if run.state is not None and run.state.is_final() and run.state.id != start_after:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise WatchTimeout(f"flow run {flow_run_id} is still {run.state.name if run.state else '?'} "
                                   f"after {timeout:.0f} s")
            time.sleep(poll)


def end_line(run: FlowRun) -> str:
    """``flow run <id> (<name>): <State>: <message>``, credentials redacted, one line."""
    state = run.state
    message = " ".join((state.message or "").split()) if state else ""
    return redact(f"flow run {run.id} ({run.name}): {state.name if state else 'no state'}"
                  f"{': ' + message if message else ''}")
