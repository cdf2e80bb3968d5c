"""Clean up after a dead attempt of a flow run: give back its concurrency slots, end its task runs.

When a flow-run process is SIGKILLed (OOM killer, node loss, ``kill -9``), nothing in it can give
back the slots its tiles held or report their task runs. Two places do it instead, with
:func:`recover`, through Prefect's public client:

- the worker: Prefect's process worker sees the process exit, marks the flow run Crashed and runs the
  flow's ``on_crashed`` hooks (:func:`on_crashed`), within seconds of the kill;
- the next attempt of the same flow run (a retry from the UI, ``topozarr-flows retry``), before it
  does anything else (:func:`before_attempt`), for when no worker saw the crash.

Each slot's lease names the task run holding it (:mod:`topozarr_flows.prefect_api.slots`), so the slots of the dead
attempt's unfinished task runs are given back by task run, then those runs are marked Crashed.
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

from topozarr_flows.prefect_api.slots import release_held_by

logger = logging.getLogger("topozarr.recovery")
UNFINISHED = [StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED]


@dataclass(frozen=True)
class Recovered:
    """What :func:`recover` did: the concurrency slots released and the task runs marked Crashed."""
    slots_released: int
    task_runs_crashed: int

    def __str__(self) -> str:
        return (f"released {self.slots_released} concurrency slot(s) and ended {self.task_runs_crashed} "
                "task run(s) of a dead attempt as Crashed")


def recover(flow_run_id: str | UUID, limit: str | None, why: str) -> Recovered:
    """Give back the slots of ``limit`` held by the run's unfinished task runs and mark them Crashed
    with ``why``.

    Only call it when no attempt of the run is alive: from the crash hook, or first thing in a new
    attempt (every unfinished task run then belongs to a dead one).

    :param flow_run_id: the flow run's id.
    :param limit: the write limit's name, or None (no slots to release).
    :param why: the message of the Crashed states.
    """
    with get_client(sync_client=True) as client:
        stale = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(flow_run_id))])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED))),
        )
    released = release_held_by(limit, [t.id for t in stale]) if limit and stale else 0
    with get_client(sync_client=True) as client:
        for task_run in stale:
            client.set_task_run_state(task_run.id, Crashed(message=why), force=True)
    return Recovered(released, len(stale))


def _limit_of(parameters: dict[str, Any] | None) -> str | None:
    params = (parameters or {}).get("params")
    if params is None:
        return None
    return getattr(params, "concurrency_limit", None) or (params.get("concurrency_limit")
                                                          if isinstance(params, dict) else None)


def on_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    """The flows' ``on_crashed`` hook; the worker runs it after the flow-run process died.

    :param flow: the flow.
    :param flow_run: the flow run that crashed.
    :param state: its Crashed state.
    """
    why = ". ".join((state.message or "crashed").split(". ")[:2]).rstrip(".")  # exit code and signal, not advice
    found = recover(flow_run.id, _limit_of(flow_run.parameters),
                    f"the flow run process died ({why}); retry the flow run to redo this")
    logger.warning("flow run %s crashed: %s", flow_run.id, found)


def before_attempt(limit: str) -> None:
    """First thing in a flow: a retry cleans up after the earlier attempt it replaces, and says so.

    :param limit: the write limit's name.
    """
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    if flow_run.id is None or flow_run.run_count <= 1:
        return
    found = recover(flow_run.id, limit, f"its flow run's attempt {flow_run.run_count - 1} died; "
                    f"attempt {flow_run.run_count} redoes it")
    if found.slots_released or found.task_runs_crashed:
        get_run_logger().warning("%s", found)
