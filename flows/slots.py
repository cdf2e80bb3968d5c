"""One slot of a Prefect global concurrency limit, held with a short lease that a crash cannot keep.

Prefect's ``concurrency()`` leases slots for 300 s and hides the lease id, so after a SIGKILL the
slots stay taken for up to five minutes and nobody can give them back. Here the lease is the
shortest the server accepts (60 s), renewed every :data:`RENEW_SECONDS` while the batch runs, and
recorded in :mod:`flows.slot_ledger` so that the worker's crash hook or the run's retry releases it
at once. Waiting for a busy limit polls at most every :data:`MAX_POLL_SECONDS` (the server's
``Retry-After`` grows with the average occupancy, up to 30 s, and would leave freed slots idle).
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import httpx
from prefect.client.schemas.objects import ConcurrencyLeaseHolder

from . import slot_ledger
from .api_client import shared_client
from .api_once import post_patiently

#: The shortest lease Prefect 3.8's server grants: a dead holder's slot is free at most this long after
#: its last renewal (plus one pass of the server's repossessor, PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS).
LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0
MAX_POLL_SECONDS = 0.5
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
    """Hold one slot of ``limit`` for the block (waiting for one if all are taken)."""
    holder = ConcurrencyLeaseHolder(type="task_run", id=UUID(task_run_id)) if task_run_id else None
    client = shared_client()  # one per process (flows.api_client)
    pending = slot_ledger.record_pending(flow_run_id, limit, task_run_id) if flow_run_id else None
    lease_id = _acquire(client, limit, holder)
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
    try:
        yield lease_id
    finally:
        stop.set()
        renewer.join()
        release(client, lease_id)
        if path is not None:
            slot_ledger.forget(path)


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


def _acquire(client, limit: str, holder: ConcurrencyLeaseHolder | None) -> UUID:
    """Ask until granted. One thread of this process asks at a time per limit (as Prefect's own
    acquisition service does): a crowd of threads polling at once makes the SQLite server answer 503
    ("database is locked"). Each request is sent once (:mod:`flows.api_once`: Prefect's client would
    sleep 2 s, 4 s, ... after a 503); a busy server is asked again after 20 ms, doubling up to 0.5 s;
    all slots taken (423) is polled every :data:`MAX_POLL_SECONDS` at most."""
    body: dict = {"names": [limit], "slots": 1, "mode": "concurrency", "lease_duration": LEASE_SECONDS}
    if holder is not None:
        body["holder"] = holder.model_dump(mode="json")
    with _asking(limit):
        while True:
            try:
                response = post_patiently(client, "/v2/concurrency_limits/increment-with-lease", body)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:  # 423: all slots taken
                    raise
                advised = float(exc.response.headers.get("Retry-After", MAX_POLL_SECONDS))
                time.sleep(min(advised, MAX_POLL_SECONDS) * random.uniform(0.5, 1.0))
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
