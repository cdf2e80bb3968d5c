"""One slot of a Prefect global concurrency limit, held with a short lease that a crash cannot keep.

Prefect's ``concurrency()`` leases slots for 300 s and hides the lease id, so after a SIGKILL the
slots stay taken for up to five minutes and nobody can give them back. Here the lease is the
shortest the server accepts (60 s), renewed every :data:`RENEW_SECONDS` while the batch runs, and
recorded in :mod:`flows.slot_ledger` so that the worker's crash hook or the run's retry releases it
at once. The next batch of the same run in the same process takes a finished batch's lease over
(:data:`HANDOFF_SECONDS`) instead of giving it back and asking again: a run of 25 batches on 4
slots asks the server for 4 leases, not 25. Waiting for a busy limit polls at most every
:data:`MAX_POLL_SECONDS` (the server's ``Retry-After`` grows with the average occupancy, up to 30 s,
and would leave freed slots idle).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
from prefect.client.schemas.objects import ConcurrencyLeaseHolder

from topozarr_core.targets import error_summary

from . import slot_ledger
from .api_client import shared_client
from .api_once import post_patiently

#: The shortest lease Prefect 3.8's server grants: a dead holder's slot is free at most this long after
#: its last renewal (plus one pass of the server's repossessor, PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS).
LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0
MAX_POLL_SECONDS = 0.5
#: A batch that ends leaves its lease idle this long for the next batch of the same flow run in the
#: same process, which takes it over instead of releasing one slot and asking for another (two API
#: requests and a transaction each, with SQLite's "database is locked" retries, per batch); a lease
#: nobody takes is given back after it, and all of a run's idle leases when its batches are over
#: (:func:`release_idle`). Another run waiting for the limit waits that much longer at most.
HANDOFF_SECONDS = float(os.environ.get("TOPOZARR_SLOT_HANDOFF_SECONDS", "0.5"))
#: Prefect 3.8 keeps leases in the server's memory by default: a server restart (and every ad hoc run,
#: which starts its own ephemeral server) forgets them while the slots they hold stay counted, so a
#: killed holder's slots would never come back. On disk (under PREFECT_HOME) they survive; importing
#: ``flows`` and infra/prefect-server.sh select this (env PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE).
LEASES_ON_DISK = "prefect.server.concurrency.lease_storage.filesystem"

logger = logging.getLogger("topozarr.slots")


class LimitMissing(RuntimeError):
    """The global concurrency limit does not exist (or is inactive): acquiring it would limit nothing."""


@contextmanager
def hold_slot(limit: str, *, flow_run_id: str | None = None, task_run_id: str | None = None) -> Iterator[UUID]:
    """Hold one slot of ``limit`` for the block (waiting for one if all are taken).

    A lease this flow run's previous batch in this process left idle (:data:`HANDOFF_SECONDS`) is
    taken over instead of asking the server: the limit counts it as held all along."""
    key = _pool_key(limit, flow_run_id)
    lease = _take_idle(key, task_run_id) or _new_lease(key, task_run_id)
    try:
        yield lease.id
    finally:
        _hand_back(key, lease)


@dataclass(eq=False)
class _Lease:
    """One lease this process holds: renewed by its own thread until given back to the server."""

    id: UUID
    path: Path | None  # its ledger record
    stop: threading.Event
    renewer: threading.Thread
    generation: int = 0  # bumped at every hand-back: an expiry timer of an older one does nothing


_IDLE: dict[tuple, list[_Lease]] = {}
_IDLE_GUARD = threading.Lock()
_HANDED_BACK = threading.Condition()  # notified when a lease is left idle (a waiting asker takes it)


def _pool_key(limit: str, flow_run_id: str | None) -> tuple:
    from prefect.settings import get_current_settings

    return (os.getpid(), str(get_current_settings().api.url), limit, flow_run_id)


def _new_lease(key: tuple, task_run_id: str | None) -> _Lease:
    limit, flow_run_id = key[2], key[3]
    holder = ConcurrencyLeaseHolder(type="task_run", id=UUID(task_run_id)) if task_run_id else None
    client = shared_client()  # one per process (flows.api_client)
    pending = slot_ledger.record_pending(flow_run_id, limit, task_run_id) if flow_run_id else None
    granted = _acquire(client, limit, holder, take_over=lambda: _take_idle(key, task_run_id))
    if isinstance(granted, _Lease):  # handed back by a batch of this run while we waited
        if pending is not None:
            pending.unlink(missing_ok=True)
        return granted
    lease_id = granted
    path = slot_ledger.record(flow_run_id, lease_id, limit, task_run_id) if flow_run_id else None
    if pending is not None:
        pending.unlink(missing_ok=True)
    stop = threading.Event()
    # the renewal thread talks to the same API as this one: Prefect's settings (temporary_settings,
    # the harness) live in context variables, which a new thread does not inherit by itself
    context = contextvars.copy_context()
    renewer = threading.Thread(target=context.run, args=(_renew_until, lease_id, stop), daemon=True,
                               name=f"topozarr-slot-{lease_id}")
    renewer.start()
    return _Lease(lease_id, path, stop, renewer)


def _take_idle(key: tuple, task_run_id: str | None) -> _Lease | None:
    with _IDLE_GUARD:
        idle = _IDLE.get(key)
        if not idle:
            return None
        lease = idle.pop()
        lease.generation += 1
    if lease.path is not None:  # the ledger names the task run holding it now
        slot_ledger.record(key[3], lease.id, key[2], task_run_id)
    return lease


def _hand_back(key: tuple, lease: _Lease) -> None:
    """Leave the lease idle for the run's next batch; give it back if none takes it in time (or at
    once when no batch of the run will ask any more, :func:`wind_down`)."""
    if key[3] is None or HANDOFF_SECONDS <= 0:
        _close(lease)
        return
    with _IDLE_GUARD:
        closing = (key[0], key[3]) in _WINDING_DOWN
    if closing:
        _close_quietly(lease)
        return
    with _IDLE_GUARD:
        lease.generation += 1
        generation = lease.generation
        _IDLE.setdefault(key, []).append(lease)
    with _HANDED_BACK:
        _HANDED_BACK.notify_all()
    context = contextvars.copy_context()  # this thread's Prefect settings, for the release
    timer = threading.Timer(HANDOFF_SECONDS, context.run, args=(_expire, key, lease, generation))
    timer.daemon = True
    timer.start()


def _expire(key: tuple, lease: _Lease, generation: int) -> None:
    with _IDLE_GUARD:
        idle = _IDLE.get(key, [])
        if lease.generation != generation or lease not in idle:
            return  # taken over since
        idle.remove(lease)
        if not idle:
            _IDLE.pop(key, None)
    _close_quietly(lease)


def _close(lease: _Lease) -> None:
    lease.stop.set()
    lease.renewer.join()
    release(shared_client(), lease.id)
    if lease.path is not None:
        slot_ledger.forget(lease.path)


def wind_down(flow_run_id: str | None) -> None:
    """Every batch of the run has been submitted: from now on a lease handed back is given back at
    once, and those idle now are given back in the background (:func:`release_idle` waits for them)."""
    run = (os.getpid(), flow_run_id)
    with _IDLE_GUARD:
        _WINDING_DOWN.add(run)
        leases = _pop_idle(flow_run_id)
    closers = _start_closing(leases)
    with _IDLE_GUARD:
        _CLOSERS.setdefault(run, []).extend(closers)


def release_idle(flow_run_id: str | None) -> int:
    """Give back at once every lease of ``flow_run_id`` left idle in this process (the run's batches
    are over: its slots must not wait for the hand-off timer), and wait for those :func:`wind_down`
    gives back. Returns how many leases were given back."""
    run = (os.getpid(), flow_run_id)
    with _IDLE_GUARD:
        _WINDING_DOWN.discard(run)
        leases = _pop_idle(flow_run_id)
        closers = _CLOSERS.pop(run, [])
    closers += _start_closing(leases)
    for t in closers:
        t.join()
    return len(closers)


_WINDING_DOWN: set[tuple] = set()  # (pid, flow run id) of runs whose batches are all submitted
_CLOSERS: dict[tuple, list[threading.Thread]] = {}


def _pop_idle(flow_run_id: str | None) -> list[_Lease]:
    """Remove and return the run's idle leases (hold _IDLE_GUARD)."""
    keys = [k for k in _IDLE if k[0] == os.getpid() and k[3] == flow_run_id]
    leases = [lease for k in keys for lease in _IDLE.pop(k)]
    for lease in leases:
        lease.generation += 1  # their expiry timers do nothing now
    return leases


def _start_closing(leases: list[_Lease]) -> list[threading.Thread]:
    """Give the leases back at once, not one after another (a release is a round trip, more on a busy
    SQLite server)."""
    closers = [threading.Thread(target=contextvars.copy_context().run, args=(_close_quietly, lease),
                                name=f"topozarr-release-{lease.id}") for lease in leases]
    for t in closers:
        t.start()
    return closers


def _close_quietly(lease: _Lease) -> None:
    """Give an idle lease back, logging (not raising) a failure: its slot then comes back when the
    lease expires, and the ledger still names it for a retry's recovery."""
    try:
        _close(lease)
    except Exception as exc:  # noqa: BLE001 -- a timer thread or a run's cleanup: nobody to raise to
        logger.warning("could not give back concurrency lease %s: %s", lease.id, error_summary(exc, limit=200))


def release(client, lease_id: UUID) -> None:
    """Give the lease's slots back (a lease the server no longer knows is a no-op there)."""
    post_patiently(client, "/v2/concurrency_limits/decrement-with-lease", {"lease_id": str(lease_id)})


def release_if_held(client, lease_id: UUID) -> bool:
    """Give the lease's slots back; False when the server no longer holds it (expired, released).

    Prefect 3.8 answers the release of an unknown lease with success too, so the lease is renewed
    first (410 Gone when it is not held): a recovery counts only the slots it really gave back."""
    try:
        client.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (404, 410):
            return False
        raise
    release(client, lease_id)
    return True


def _acquire(client, limit: str, holder: ConcurrencyLeaseHolder | None,
             take_over: Callable[[], "_Lease | None"] = lambda: None) -> "UUID | _Lease":
    """Ask until granted. One thread of this process asks at a time per limit (as Prefect's own
    acquisition service does): a crowd of threads polling at once makes the SQLite server answer 503
    ("database is locked"). Each request is sent once (:mod:`flows.api_once`: Prefect's client would
    sleep 2 s, 4 s, ... after a 503); a busy server is asked again after 20 ms, doubling up to 0.5 s;
    all slots taken (423) is polled every :data:`MAX_POLL_SECONDS` at most, and between polls a lease
    handed back in this process (``take_over``) is taken instead."""
    body: dict = {"names": [limit], "slots": 1, "mode": "concurrency", "lease_duration": LEASE_SECONDS}
    if holder is not None:
        body["holder"] = holder.model_dump(mode="json")
    with _asking(limit):
        while True:
            taken = take_over()
            if taken is not None:
                return taken
            try:
                response = post_patiently(client, "/v2/concurrency_limits/increment-with-lease", body)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:  # 423: all slots taken
                    raise
                advised = float(exc.response.headers.get("Retry-After", MAX_POLL_SECONDS))
                with _HANDED_BACK:  # woken early by a lease handed back here
                    _HANDED_BACK.wait(min(advised, MAX_POLL_SECONDS) * random.uniform(0.5, 1.0))
                continue
            break
    body = response.json()
    if not body.get("limits"):
        if body.get("lease_id"):
            release(client, UUID(body["lease_id"]))
        raise LimitMissing(f"global concurrency limit {limit!r} does not exist or is inactive: "
                           "create it (infra/setup-prefect.sh) so that it limits something")
    return UUID(body["lease_id"])


_ASKING: dict[str, threading.Lock] = {}
_ASKING_GUARD = threading.Lock()


def _asking(limit: str) -> threading.Lock:
    with _ASKING_GUARD:
        return _ASKING.setdefault(limit, threading.Lock())


def _renew_until(lease_id: UUID, stop: threading.Event) -> None:
    """Renew the lease every RENEW_SECONDS; a failed renewal is logged and retried at the next tick
    (the lease still has LEASE_SECONDS - RENEW_SECONDS to go)."""
    while not stop.wait(RENEW_SECONDS):
        try:
            _renew_once(shared_client(), lease_id)
        except Exception as exc:  # noqa: BLE001 -- the batch goes on; the next tick tries again
            logger.warning("could not renew concurrency lease %s: %s", lease_id, type(exc).__name__)


def _renew_once(client, lease_id: UUID) -> bool:
    client.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS)
    return True
