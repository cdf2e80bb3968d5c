"""Retry a failed flow run exactly as the Prefect UI's Retry button does.

The UI sets the run's state to ``AwaitingRetry`` (a Scheduled state) with ``force=True``; a worker
then executes the same flow run id again. Because task cache keys are scoped to the flow run id
and results are persisted, only the batches that did not complete run again.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.states import AwaitingRetry, State


def mark_for_retry(flow_run_id: UUID | str) -> Any:
    """What the UI's Retry does: force the run into AwaitingRetry (picked up by a worker)."""
    with get_client(sync_client=True) as client:
        result = client.set_flow_run_state(UUID(str(flow_run_id)), AwaitingRetry(), force=True)
        return result.status


def retry_here(flow_run_id: UUID | str) -> State:
    """Mark for retry and execute the same flow run in this process (ad hoc runs without a worker)."""
    from prefect.flow_engine import run_flow

    from .build import build_pyramid
    from .params import BuildParams

    mark_for_retry(flow_run_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(flow_run_id)))
    params = BuildParams.model_validate(run.parameters["params"])
    return run_flow(build_pyramid, flow_run=run, parameters={"params": params}, return_type="state")
