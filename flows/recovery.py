"""Clean up after a dead attempt of a flow run: give back its concurrency slots, end its task runs.

When a flow-run process is SIGKILLed (OOM killer, node loss, ``kill -9``), nothing in it can release
the slots its batches held or report their task runs. Two places do it instead, with
:func:`recover`:

- the worker: Prefect's process worker sees the process exit, marks the flow run Crashed and runs the
  flow's ``on_crashed`` hooks (:func:`on_crashed`), within seconds of the kill;
- the next attempt of the same flow run (a retry from the UI, ``topozarr-flows retry``), before it
  does anything else (:func:`recover_previous_attempt`), for when no worker saw the crash.

Where neither runs (the whole machine is gone), the slots come back when their 60 s leases expire.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from . import lease_lookup, slot_ledger
from .slots import LEASE_SECONDS, release_if_held

logger = logging.getLogger("topozarr.recovery")
UNFINISHED = [StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED]


@dataclass(frozen=True)
class Recovered:
    slots_released: int
    task_runs_crashed: int

    def __str__(self) -> str:
        return (f"released {self.slots_released} concurrency slot(s) and ended {self.task_runs_crashed} "
                "task run(s) of a dead attempt as Crashed")


def recover(flow_run_id: str | UUID, why: str) -> Recovered:
    """Release the leases the run recorded and mark its unfinished task runs Crashed with ``why``.

    Only call it when no attempt of the run is alive: from the crash hook, or first thing in a new
    attempt (every unfinished task run then belongs to a dead one)."""
    flow_run_id = str(flow_run_id)
    released = 0
    with get_client(sync_client=True) as client:
        for held in slot_ledger.held_by(flow_run_id):
            released += release_if_held(client, held.lease_id)
            slot_ledger.forget(held.path)
        stale = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED))),
        )
        released += _release_unrecorded(client, flow_run_id, {str(t.id) for t in stale})
        for task_run in stale:
            client.set_task_run_state(task_run.id, Crashed(message=why), force=True)
    return Recovered(released, len(stale))


def _release_unrecorded(client: Any, flow_run_id: str, dead_task_runs: set[str]) -> int:
    """Slots asked for by the dead attempt whose grant it never recorded (killed mid-request): found by
    holder in the server's lease storage where it is readable here; otherwise they come back when
    their lease expires."""
    released = 0
    for pending in slot_ledger.pending_of(flow_run_id):
        found = lease_lookup.leases_held_by(client, pending.limit, dead_task_runs)
        if found is None:
            logger.warning("a slot of %r asked for by task run %s may stay taken until its lease expires (%.0f s)",
                           pending.limit, pending.task_run_id, LEASE_SECONDS)
        else:
            released += sum(release_if_held(client, lease_id) for lease_id in found)
        slot_ledger.forget(pending.path)
    return released


def recover_previous_attempt(flow_run_id: str | UUID | None, run_count: int) -> Recovered | None:
    """In a retry (``run_count`` > 1): clean up what an earlier, killed attempt left behind."""
    if flow_run_id is None or run_count <= 1:
        return None
    found = recover(flow_run_id, f"its flow run's attempt {run_count - 1} died; attempt {run_count} redoes it")
    return found if found.slots_released or found.task_runs_crashed else None


def on_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    """The flows' ``on_crashed`` hook; the worker runs it after the flow-run process died."""
    why = ". ".join((state.message or "crashed").split(". ")[:2]).rstrip(".")  # exit code and signal, not advice
    found = recover(flow_run.id, f"the flow run process died ({why}); retry the flow run to redo this")
    logger.warning("flow run %s crashed: %s", flow_run.id, found)


def before_attempt() -> None:
    """First thing in a flow: a retry cleans up after the earlier attempt it replaces, and says so."""
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    found = recover_previous_attempt(flow_run.id, flow_run.run_count)
    if found:
        get_run_logger().warning("%s", found)
