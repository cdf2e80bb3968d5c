"""One slot of the global write limit per tile task, through Prefect's public concurrency API.

The limit is a Prefect **task concurrency limit** (a tag limit: ``prefect concurrency-limit create
topozarr-writes 4``, shown under Concurrency in the UI with the task runs holding it). A tile task
holds one slot for as long as it writes, with Prefect's ``concurrency()`` context manager:

* the lease is the shortest the server grants (60 s), renewed by Prefect while the tile runs and
  given back when it ends (whatever way it ends), so no lease outlives its task on any runner;
* the lease names its holder (the task run), so a dead process's slots can be given back by task
  run at once (:func:`release_held_by`, used by :mod:`flows.recovery`) instead of after the lease
  expires, and a wait that gives up can say who holds the slots;
* the wait for a slot is bounded (``TOPOZARR_SLOT_WAIT_SECONDS``, 30 minutes by default): then
  :class:`SlotWaitTimeout` names the task runs holding the slots, and the task fails instead of
  hanging (its retries wait again).

The tile tasks are not tagged with the limit's tag (Prefect's engine would then take a second slot
for them, with no bound on the wait).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

#: The shortest lease Prefect's server grants: a holder that dies unseen frees its slot at most this
#: long after its last renewal (plus one pass of the server's repossessor, 15 s by default).
LEASE_SECONDS = 60.0
#: How long a tile waits for a slot before it fails with :class:`SlotWaitTimeout`.
DEFAULT_WAIT_SECONDS = 1800.0
#: Where the servers this project starts keep concurrency leases (``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE``):
#: on disk under ``PREFECT_HOME``, not in the server's memory. An ephemeral server (ad hoc runs, the
#: demo) dies with its process while the slots its leases held stay counted in its database; on disk
#: the next server finds those leases and frees them when they expire. Set by the CLI, the test
#: harness and infra/prefect-server.sh, before their server starts.
LEASES_ON_DISK = "prefect.server.concurrency.lease_storage.filesystem"

logger = logging.getLogger("topozarr.slots")


class LimitMissing(RuntimeError):
    """The concurrency limit does not exist or is inactive: acquiring it would limit nothing."""


class SlotWaitTimeout(RuntimeError):
    """No slot of the limit came free in time; the message says which task runs hold them."""


def limit_name(tag: str) -> str:
    """The name of a task concurrency limit among Prefect's global limits."""
    return f"tag:{tag}"


def wait_seconds() -> float:
    return float(os.environ.get("TOPOZARR_SLOT_WAIT_SECONDS", DEFAULT_WAIT_SECONDS))


@contextmanager
def hold_slot(limit: str, task_run_id: str | None, wait: float | None = None) -> Iterator[None]:
    """Hold one slot of task concurrency limit ``limit`` for the block, on behalf of ``task_run_id``.

    :param limit: the limit's tag (e.g. ``topozarr-writes``).
    :param task_run_id: the task run holding the slot (recorded on the lease), or None outside a task.
    :param wait: seconds to wait for a slot at most (default :func:`wait_seconds`).
    :raises LimitMissing: the limit does not exist or is inactive.
    :raises SlotWaitTimeout: no slot came free in time (the message names the holders).
    """
    wait = wait_seconds() if wait is None else wait
    holder = ConcurrencyLeaseHolder(type="task_run", id=UUID(task_run_id)) if task_run_id else None
    _check_active(limit)  # Prefect grants an inactive limit's "slot" without taking one
    entered = False
    try:
        with concurrency(limit_name(limit), occupy=1, timeout_seconds=wait, lease_duration=LEASE_SECONDS,
                         strict=True, holder=holder, raise_on_lease_renewal_failure=False):
            entered = True
            yield
    except AcquireConcurrencySlotTimeoutError:
        if entered:
            raise
        raise SlotWaitTimeout(f"no slot of concurrency limit {limit!r} came free within {wait:.0f} s; "
                              f"{holders_line(limit)}") from None
    except ConcurrencySlotAcquisitionError:
        if entered:
            raise
        _check_active(limit)  # deleted or switched off since the check above: say so
        raise


def _check_active(limit: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(limit_name(limit))
        except ObjectNotFound:
            found = None
    if found is None or not found.active:
        raise LimitMissing(f"concurrency limit {limit!r} does not exist or is inactive: create it "
                           f"(prefect concurrency-limit create {limit} 4) so that it limits something")


def holders(limit: str) -> list[UUID]:
    """The task runs holding slots of ``limit`` now."""
    with get_client(sync_client=True) as client:
        try:
            return list(client.read_concurrency_limit_by_tag(limit).active_slots)
        except ObjectNotFound:
            return []


def holders_line(limit: str) -> str:
    """``held by 4 task runs: write-S0-00001 (flow run 'brave-fox', Running), ...``."""
    ids = holders(limit)
    if not ids:
        return "the server lists no task run holding them (slots taken without a lease holder)"
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids)), limit=len(ids))
        flows = {}
        for run in runs:
            if run.flow_run_id and run.flow_run_id not in flows:
                try:
                    flows[run.flow_run_id] = client.read_flow_run(run.flow_run_id).name
                except ObjectNotFound:
                    flows[run.flow_run_id] = str(run.flow_run_id)
    found = {r.id: r for r in runs}
    described = []
    for i in ids[:8]:
        run = found.get(i)
        if run is None:
            described.append(f"task run {i} (deleted)")
            continue
        state = run.state.name if run.state else "no state"
        described.append(f"{run.name} (flow run {flows.get(run.flow_run_id, '?')!r}, {state})")
    more = f", and {len(ids) - 8} more" if len(ids) > 8 else ""
    return f"held by {len(ids)} task run(s): {', '.join(described)}{more}"


def release_held_by(limit: str, task_run_ids: list[UUID]) -> int:
    """Give back every slot of ``limit`` that the (dead) task runs hold; returns how many runs held one."""
    held = set(holders(limit))
    released = 0
    with get_client(sync_client=True) as client:
        for task_run_id in task_run_ids:
            if task_run_id in held:
                client.decrement_v1_concurrency_slots([limit], task_run_id, occupancy_seconds=LEASE_SECONDS)
                released += 1
    return released


def ensure_limit(limit: str, slots: int) -> tuple[int, bool]:
    """The slots of task concurrency limit ``limit`` and whether it was created now (with ``slots``)."""
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(limit_name(limit))
        except ObjectNotFound:
            client.create_concurrency_limit(tag=limit, concurrency_limit=slots)
            return slots, True
        if not found.active:
            raise LimitMissing(f"concurrency limit {limit!r} exists but is inactive: it would limit nothing")
        return found.limit, False
