"""Retry a finished flow run of either flow (``build-pyramid`` or ``update-pyramid``): the same flow
run id runs again, so only the tiles that did not complete are written again (task cache keys are
scoped to the flow run id and results are persisted).

:func:`mark_for_retry` sets what Prefect 3.8's default UI (v2) sets from a run's **Retry** button:
the state ``Scheduled`` named ``AwaitingRetry``, proposed with ``force=True``. The v2 button's message
is "Retry from the UI"; ours is :data:`RETRY_MESSAGE`. The classic UI (v1, still bundled) sends the
same state with ``force=False``; ``mark_for_retry(..., force=False)`` does that too. The server then
applies its orchestration rules, which accept a failed, crashed or cancelled run of a deployment
and refuse a run without a deployment (ABORT "Cannot reschedule a run without an associated
deployment.") and a completed run whose result is persisted (REJECT "Run is already COMPLETED.").
Both UIs offer Retry only for runs of a deployment in a final state. A worker polling the
deployment's pool then runs it again.

:func:`retry_here` runs it again in this process instead (it picks the flow by the run's flow name).
It claims the run the way a worker does (``Pending``), without going through ``AwaitingRetry``
(except for a run that has not finished, with ``unfinished=True``).
"""

from __future__ import annotations

import importlib
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import Pending, Scheduled, State

RETRY_MESSAGE = "Retry via topozarr-flows"

#: flow name -> (module, flow object): the flows ``retry`` knows how to run again
FLOWS = {
    "build-pyramid": ("topozarr_flows.build.flow", "build_pyramid"),
    "update-pyramid": ("topozarr_flows.update.flow", "update_pyramid"),
}


class RetryRefused(RuntimeError):
    """The run cannot be retried (not finished, unknown flow) or the server refused the retry."""


def _read_run(client: Any, flow_run_id: UUID | str) -> FlowRun:
    return client.read_flow_run(UUID(str(flow_run_id)))


def _require_final(run: FlowRun, unfinished: bool) -> None:
    if not unfinished and (run.state is None or not run.state.is_final()):
        raise RetryRefused(f"flow run {run.id} is {run.state.name if run.state else 'without a state'}: "
                           "only a finished run (Completed, Failed, Cancelled, Crashed) can be retried; if "
                           "nothing runs it any more (its worker or process was killed), pass unfinished=True "
                           "(CLI: --unfinished)")


def flow_of(client: Any, run: FlowRun) -> Any:
    """The flow object that executes ``run``: chosen by the name of the run's flow.

    :param client: a Prefect client.
    :param run: the flow run.
    """
    name = client.read_flow(run.flow_id).name
    if name not in FLOWS:
        raise RetryRefused(f"flow run {run.id} is a run of flow {name!r}; topozarr-flows runs {sorted(FLOWS)}")
    module, attr = FLOWS[name]
    return getattr(importlib.import_module(module), attr)


def mark_for_retry(flow_run_id: UUID | str, *, force: bool = True, unfinished: bool = False) -> SetStateStatus:
    """Set the finished run ``flow_run_id`` to ``Scheduled``/``AwaitingRetry`` (see the module doc).

    ``force=True`` (the default UI's choice) bypasses the server's orchestration rules; ``force=False``
    (the classic UI's) lets them decide. A run that has not finished is refused (it would run twice)
    unless ``unfinished=True``: for a run the API still shows as Running (or Pending, ...) whose
    process is gone, e.g. after its worker was killed. Returns ``SetStateStatus.ACCEPT``; raises
    :class:`RetryRefused` when the run is refused or the server does not accept the state."""
    with get_client(sync_client=True) as client:
        run = _read_run(client, flow_run_id)
        _require_final(run, unfinished)
        result = client.set_flow_run_state(run.id, Scheduled(name="AwaitingRetry", message=RETRY_MESSAGE),
                                           force=force)
    if result.status != SetStateStatus.ACCEPT:
        reason = getattr(result.details, "reason", None)
        raise RetryRefused(f"flow run {run.id}: the server answered {result.status.value} to AwaitingRetry"
                           f"{f': {reason}' if reason else ''}")
    return result.status


def retry_here(flow_run_id: UUID | str, *, unfinished: bool = False) -> State:
    """Run the finished run ``flow_run_id`` again in this process, with this checkout's code and
    environment (S3 settings, ``PREFECT_LOCAL_STORAGE_PATH`` for the cached task results), and
    return its final state.

    The run goes straight from its final state to ``Pending`` (not forced: the server's rules
    apply, as to a worker's claim, including a deployment's concurrency limit), never through
    ``Scheduled``, so no worker polling the deployment's pool can start it as well. Of two
    ``--here`` retries of one run, the second is refused (ABORT).

    ``unfinished=True`` also retries a run the API still shows as not finished (see
    :func:`mark_for_retry`): it is first forced to ``AwaitingRetry``, then claimed the same way (a
    worker polling the deployment's pool could claim it in between; then it runs there)."""
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        run = _read_run(client, flow_run_id)
        _require_final(run, unfinished)
        flow = flow_of(client, run)  # before any state change: an unknown flow is refused untouched
        if not run.state or not run.state.is_final():  # Running/Pending -> Pending is refused: reschedule first
            mark_for_retry(run.id, unfinished=True)
        claim = client.set_flow_run_state(run.id, Pending(message=f"{RETRY_MESSAGE} (here)"), force=False)
        run = client.read_flow_run(run.id)
    if claim.status != SetStateStatus.ACCEPT:
        raise RetryRefused(f"flow run {run.id} was not claimed here: the server answered {claim.status.value}"
                           f" ({getattr(claim.details, 'reason', None)}); it is {run.state.name!r}")
    # the engine validates the parameters into the flow's model (BuildParams / UpdateParams)
    return run_flow(flow, flow_run=run, parameters=run.parameters, return_type="state")
