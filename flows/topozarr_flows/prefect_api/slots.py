"""One slot of the global write limit per tile task, through Prefect's public client.

The limit is a Prefect **task concurrency limit** (a tag limit: ``prefect concurrency-limit create
topozarr-writes 4``, shown under Concurrency in the UI with the task runs holding it). A tile task
holds one slot for as long as it writes (:func:`hold_slot`):

* the lease is the shortest the server grants (60 s), renewed every :data:`RENEW_SECONDS` while the
  tile runs and given back when it ends (whatever way it ends), so no lease outlives its task on any
  runner;
* the lease names its holder (the task run), so a dead process's slots can be given back by task run at
  once (:func:`release_held_by`, used by :mod:`topozarr_flows.prefect_api.recovery`) instead of after the lease expires, and
  a wait that gives up can say who holds the slots;
* the wait for a slot is bounded (``TOPOZARR_SLOT_WAIT_SECONDS``, 30 minutes by default): then
  :class:`SlotWaitTimeout` names the task runs holding the slots, and the task fails instead of hanging
  (its retries wait again); a full limit is polled every :data:`POLL_SECONDS` at most;
* the requests go through :func:`topozarr_flows.prefect_api.client.client` (one client per process, short back-off on a busy
  SQLite server: why not Prefect's ``concurrency()`` context manager, which sleeps 2 s there).

The tile tasks are not tagged with the limit's tag (Prefect's engine would then take a second slot for
them, with no bound on the wait).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import httpx
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import ObjectNotFound

from topozarr_core.store.errors import error_summary
from topozarr_flows.prefect_api.client import client

#: The shortest lease Prefect's server grants: a holder that dies unseen frees its slot at most this long
#: after its last renewal (plus one pass of the server's repossessor, 15 s by default).
LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0
#: How long a tile waits for a slot before it fails with :class:`SlotWaitTimeout`.
DEFAULT_WAIT_SECONDS = 1800.0
#: A full limit is asked again after at most this long (the server's Retry-After grows with the slots'
#: average occupancy, up to 30 s, and would leave freed slots idle).
POLL_SECONDS = 0.5
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
    """The name of a task concurrency limit among Prefect's global limits.

    :param tag: the limit's tag.
    """
    return f"tag:{tag}"


def wait_seconds() -> float:
    """Seconds a task waits for a slot of the write limit (``TOPOZARR_SLOT_WAIT_SECONDS``, else the default)."""
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
    holder = ConcurrencyLeaseHolder(type="task_run", id=UUID(task_run_id)) if task_run_id else None
    _check_active(limit)  # the server grants an inactive limit's "slot" without taking one
    lease_id = _acquire(limit, holder, wait_seconds() if wait is None else wait)
    stop = threading.Event()
    # the renewal thread talks to the same API as this one: Prefect's settings live in context variables,
    # which a new thread does not inherit by itself
    renewer = threading.Thread(target=contextvars.copy_context().run, args=(_renew_until, lease_id, stop),
                               daemon=True, name=f"topozarr-slot-{lease_id}")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        client().release_concurrency_slots_with_lease(lease_id)


def _acquire(limit: str, holder: ConcurrencyLeaseHolder | None, wait: float) -> UUID:
    """Ask for a slot until granted, polling a full limit (423) every :data:`POLL_SECONDS` at most."""
    deadline = time.monotonic() + wait
    while True:
        try:
            response = client().increment_concurrency_slots_with_lease(
                names=[limit_name(limit)], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS, holder=holder)
            break
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423: every slot is taken
                raise
            now = time.monotonic()
            if now >= deadline:
                raise SlotWaitTimeout(f"no slot of concurrency limit {limit!r} came free within {wait:.0f} s; "
                                      f"{holders_line(limit)}") from None
            advised = float(exc.response.headers.get("Retry-After", POLL_SECONDS))
            time.sleep(min(advised, POLL_SECONDS, deadline - now) * random.uniform(0.5, 1.0))
    body = response.json()
    if not body.get("limits"):  # missing or inactive: the server took no slot
        if body.get("lease_id"):
            client().release_concurrency_slots_with_lease(UUID(body["lease_id"]))
        raise LimitMissing(f"concurrency limit {limit!r} does not exist or is inactive: create it "
                           f"(prefect concurrency-limit create {limit} 4) so that it limits something")
    return UUID(body["lease_id"])


#: Seconds a limit found active is trusted to stay so (one request per limit and process that often,
#: not one per tile).
ACTIVE_CHECK_SECONDS = 60.0
_active: dict[tuple, float] = {}


def _check_active(limit: str) -> None:
    """Raise :class:`LimitMissing` unless ``limit`` exists and is active (checked at most once per
    :data:`ACTIVE_CHECK_SECONDS` per process)."""
    key = (os.getpid(), str(client().api_url), limit)
    if time.monotonic() - _active.get(key, -ACTIVE_CHECK_SECONDS) < ACTIVE_CHECK_SECONDS:
        return
    try:
        found = client().read_global_concurrency_limit_by_name(limit_name(limit))
    except ObjectNotFound:
        found = None
    if found is None or not found.active:
        raise LimitMissing(f"concurrency limit {limit!r} does not exist or is inactive: create it "
                           f"(prefect concurrency-limit create {limit} 4) so that it limits something")
    _active[key] = time.monotonic()


def _renew_until(lease_id: UUID, stop: threading.Event) -> None:
    """Renew the lease every RENEW_SECONDS; a failed renewal is logged and retried at the next tick
    (the lease still has LEASE_SECONDS - RENEW_SECONDS to go)."""
    while not stop.wait(RENEW_SECONDS):
        try:
            client().renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS)
        except Exception as exc:  # noqa: BLE001 -- the tile goes on; the next tick tries again
            logger.warning("could not renew concurrency lease %s: %s", lease_id, error_summary(exc, limit=200))


def holders(limit: str) -> list[UUID]:
    """The task runs holding slots of ``limit`` now."""
    try:
        return list(client().read_concurrency_limit_by_tag(limit).active_slots)
    except ObjectNotFound:
        return []


def holders_line(limit: str) -> str:
    """``held by 4 task run(s): tile-S0-00001 (flow run 'brave-fox', Running), ...``.

    :param limit: the limit's name.
    """
    ids = holders(limit)
    if not ids:
        return "the server lists no task run holding them (slots taken without a lease holder)"
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    api = client()
    runs = api.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids)), limit=len(ids))
    flows = {}
    for run in runs:
        if run.flow_run_id and run.flow_run_id not in flows:
            try:
                flows[run.flow_run_id] = api.read_flow_run(run.flow_run_id).name
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
    """Give back every slot of ``limit`` that the (dead) task runs hold; returns how many runs held one.

    :param limit: the limit's name.
    :param task_run_ids: the dead task runs.
    """
    held = set(holders(limit))
    released = 0
    for task_run_id in task_run_ids:
        if task_run_id in held:
            client().decrement_v1_concurrency_slots([limit], task_run_id, occupancy_seconds=LEASE_SECONDS)
            released += 1
    return released


def ensure_limit(limit: str, slots: int) -> tuple[int, bool]:
    """The slots of task concurrency limit ``limit`` and whether it was created now (with ``slots``)."""
    api = client()
    try:
        found = api.read_global_concurrency_limit_by_name(limit_name(limit))
    except ObjectNotFound:
        api.create_concurrency_limit(tag=limit, concurrency_limit=slots)
        return slots, True
    if not found.active:
        raise LimitMissing(f"concurrency limit {limit!r} exists but is inactive: it would limit nothing")
    return found.limit, False
