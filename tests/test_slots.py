"""The write tasks' concurrency slots: short leases, written down while held, given back after a crash."""

from __future__ import annotations

import uuid

import pytest
from prefect import flow, task
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.states import Running

from flows import recovery, slot_ledger
from flows.slots import LEASE_SECONDS, LimitMissing, hold_slot


def _active(harness, limit: str) -> int:
    with harness.client() as c:
        return c.read_global_concurrency_limit_by_name(limit).active_slots


@task
def _noop() -> None:
    pass


@flow
def _dead_flow() -> None:
    pass


def _running_task_run(harness) -> tuple[str, str]:
    """A flow run and a task run of it, both Running, as a killed attempt leaves them."""
    with harness.client() as c:
        run = c.create_flow_run(_dead_flow, state=Running())
        task_run = c.create_task_run(_noop, flow_run_id=run.id, dynamic_key=uuid.uuid4().hex, state=Running())
    return str(run.id), str(task_run.id)


def test_a_held_slot_is_recorded_then_forgotten(prefect_harness):
    limit = f"slots-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 2)
    run_id = str(uuid.uuid4())
    with hold_slot(limit, flow_run_id=run_id) as lease_id:
        assert _active(prefect_harness, limit) == 1
        assert [h.lease_id for h in slot_ledger.held_by(run_id)] == [lease_id]
        assert slot_ledger.pending_of(run_id) == []
    assert _active(prefect_harness, limit) == 0
    assert slot_ledger.held_by(run_id) == [] and not (slot_ledger.root() / run_id).exists()


def test_a_missing_limit_is_an_error_not_unlimited(prefect_harness):
    with pytest.raises(LimitMissing, match="'no-such-limit-topozarr' does not exist"):
        with hold_slot("no-such-limit-topozarr"):
            pass


def test_recover_releases_recorded_and_unrecorded_slots_and_crashes_the_task_runs(prefect_harness):
    """One slot recorded in the ledger, one granted to a process killed before it could record the lease
    id (only its pending entry is left): both come back, and the dead task run ends Crashed."""
    limit = f"slots-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 3)
    flow_run_id, task_run_id = _running_task_run(prefect_harness)
    holder = ConcurrencyLeaseHolder(type="task_run", id=uuid.UUID(task_run_id))
    with prefect_harness.client() as c:
        granted = [c.increment_concurrency_slots_with_lease(names=[limit], slots=1, mode="concurrency",
                                                           lease_duration=LEASE_SECONDS, holder=holder).json()
                   for _ in range(2)]
    slot_ledger.record(flow_run_id, uuid.UUID(granted[0]["lease_id"]), limit, task_run_id)
    slot_ledger.record_pending(flow_run_id, limit, task_run_id)  # the second grant's answer was lost
    assert _active(prefect_harness, limit) == 2

    found = recovery.recover(flow_run_id, "its process died (test)")
    assert (found.slots_released, found.task_runs_crashed) == (2, 1)
    assert _active(prefect_harness, limit) == 0
    assert slot_ledger.held_by(flow_run_id) == [] and slot_ledger.pending_of(flow_run_id) == []
    with prefect_harness.client() as c:
        state = c.read_task_run(uuid.UUID(task_run_id)).state
    assert state.is_crashed() and state.message == "its process died (test)"
    # a second pass finds nothing left
    again = recovery.recover(flow_run_id, "again")
    assert (again.slots_released, again.task_runs_crashed) == (0, 0)
