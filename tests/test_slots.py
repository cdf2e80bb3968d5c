"""The write tasks' concurrency slots: short leases, written down while held, given back after a crash."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from prefect import flow, task
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.states import Running

from flows import recovery, slot_ledger
from flows.slots import HANDOFF_SECONDS, LEASE_SECONDS, LimitMissing, hold_slot, release_idle, wind_down


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
    # left idle for the run's next batch: still held and recorded, until the run's batches are over
    assert _active(prefect_harness, limit) == 1 and [h.lease_id for h in slot_ledger.held_by(run_id)] == [lease_id]
    assert release_idle(run_id) == 1
    assert _active(prefect_harness, limit) == 0
    assert slot_ledger.held_by(run_id) == [] and not (slot_ledger.root() / run_id).exists()


def test_the_runs_next_batch_takes_the_lease_over_and_an_untaken_one_goes_back_by_itself(prefect_harness):
    limit = f"slots-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 2)
    run_id, first, second = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    with hold_slot(limit, flow_run_id=run_id, task_run_id=first) as lease_a:
        pass
    with hold_slot(limit, flow_run_id=run_id, task_run_id=second) as lease_b:
        assert _active(prefect_harness, limit) == 1
        assert [(h.lease_id, h.task_run_id) for h in slot_ledger.held_by(run_id)] == [(lease_a, second)]
    assert lease_b == lease_a
    with hold_slot(limit, flow_run_id=str(uuid.uuid4())) as other_run:  # another run never takes it
        assert other_run != lease_a and _active(prefect_harness, limit) == 2
    deadline = time.monotonic() + HANDOFF_SECONDS + 10
    while (_active(prefect_harness, limit) or slot_ledger.held_by(run_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _active(prefect_harness, limit) == 0 and slot_ledger.held_by(run_id) == []


def test_once_the_run_winds_down_its_leases_go_back_at_once(prefect_harness):
    limit = f"slots-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 3)
    run_id = str(uuid.uuid4())
    with hold_slot(limit, flow_run_id=run_id):
        pass
    with hold_slot(limit, flow_run_id=run_id) as still_running:
        with hold_slot(limit, flow_run_id=run_id) as other:
            assert _active(prefect_harness, limit) == 2 and other != still_running
        wind_down(run_id)  # every batch submitted: the idle lease goes back (in the background) ...
        deadline = time.monotonic() + 10
        while _active(prefect_harness, limit) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _active(prefect_harness, limit) == 1
    # ... and one handed back now is given back before the block ends, no timer
    assert _active(prefect_harness, limit) == 0 and slot_ledger.held_by(run_id) == []
    release_idle(run_id)


def test_a_batch_waiting_for_a_full_limit_takes_a_lease_handed_back_in_its_run(prefect_harness):
    """Limit 1: the second batch of the run waits (all slots taken) and takes the first one's lease
    when it ends, without the server granting another; the limit is never exceeded."""
    limit = f"slots-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 1)
    run_id = str(uuid.uuid4())
    got: dict[str, uuid.UUID] = {}
    entered = threading.Event()

    def second() -> None:
        entered.wait(30)
        with hold_slot(limit, flow_run_id=run_id, task_run_id=str(uuid.uuid4())) as lease:
            got["second"] = lease

    waiter = threading.Thread(target=second)
    waiter.start()
    with hold_slot(limit, flow_run_id=run_id, task_run_id=str(uuid.uuid4())) as lease:
        got["first"] = lease
        entered.set()
        time.sleep(1.0)  # the second asks meanwhile and is told the limit is full
        assert _active(prefect_harness, limit) == 1
    waiter.join(30)
    assert got["second"] == got["first"]
    assert release_idle(run_id) == 1 and _active(prefect_harness, limit) == 0


def test_handed_over_leases_never_exceed_the_limit(prefect_harness):
    limit = f"slots-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 2)
    run_id = str(uuid.uuid4())
    in_use: set[uuid.UUID] = set()
    guard = threading.Lock()
    most, errors = [0], []

    def batches() -> None:
        for _ in range(3):
            with hold_slot(limit, flow_run_id=run_id, task_run_id=str(uuid.uuid4())) as lease:
                with guard:
                    if lease in in_use:
                        errors.append(f"lease {lease} used by two batches at once")
                    in_use.add(lease)
                    most[0] = max(most[0], len(in_use))
                time.sleep(0.05)
                with guard:
                    in_use.discard(lease)

    threads = [threading.Thread(target=batches) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and most[0] <= 2, (errors, most)
    release_idle(run_id)
    assert _active(prefect_harness, limit) == 0 and slot_ledger.held_by(run_id) == []


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
    # a third lease was given back, but its holder died before it removed its record: a stale entry
    with prefect_harness.client() as c:
        released = uuid.UUID(c.increment_concurrency_slots_with_lease(
            names=[limit], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS, holder=holder).json()["lease_id"])
        c.release_concurrency_slots_with_lease(released)
    slot_ledger.record(flow_run_id, released, limit, task_run_id)
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


RENEW_IN_CONTEXT = """
import sys, time
from prefect.settings import PREFECT_API_URL, temporary_settings
from flows import slots

urls = []
real = slots._renew_once
slots._renew_once = lambda client, lease_id: urls.append((str(client.api_url), real(client, lease_id)))
slots.RENEW_SECONDS = 0.1
with temporary_settings(updates={PREFECT_API_URL: sys.argv[1]}):
    with slots.hold_slot(sys.argv[2]):
        time.sleep(0.6)
print(urls)
"""


def test_the_lease_is_renewed_against_the_api_of_the_holders_context(prefect_harness, tmp_path):
    """The renewal thread uses the holder's Prefect settings, also when they exist only in context
    variables (``temporary_settings``: a new thread does not inherit them by itself)."""
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    limit = f"slots-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 1)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="false", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", RENEW_IN_CONTEXT, prefect_harness.api_url, limit], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    renewed = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert renewed and all(url.rstrip("/") == prefect_harness.api_url.rstrip("/") and ok for url, ok in renewed), (
        renewed, out.stderr[-2000:])
    assert "could not renew" not in out.stderr
    assert _active(prefect_harness, limit) == 0
