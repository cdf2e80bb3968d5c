"""Find a dead holder's leases in the server's own lease storage, when it is on this machine.

A process killed while the server was granting it a slot never learned the lease id, so the slot
ledger cannot name it. Prefect 3.8's API cannot list a limit's leases, but with the filesystem lease
storage (which ``flows`` selects, see :data:`flows.slots.LEASES_ON_DISK`) a process sharing the server's
``PREFECT_HOME`` (the ephemeral server of ad hoc runs, a local server and its process worker) can read
them with Prefect's own storage class and release them through the API like any other lease.
"""

from __future__ import annotations

import os
from uuid import UUID

from .slots import LEASES_ON_DISK


def leases_held_by(client, limit: str, holder_ids: set[str]) -> list[UUID] | None:
    """Lease ids on ``limit`` held by any of ``holder_ids`` (task run ids); None when the server's lease
    storage is not readable here (another storage, or another machine)."""
    holders = active_leases(client, limit)
    if holders is None:
        return None
    return [lease_id for lease_id, holder in holders if holder in holder_ids]


def active_leases(client, limit: str) -> list[tuple[UUID, str | None]] | None:
    """Every lease the server holds on ``limit``, with its holder's id (a task run id, or None); None
    when the server's lease storage is not readable here."""
    if os.environ.get("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASES_ON_DISK) != LEASES_ON_DISK:
        return None
    from prefect.exceptions import ObjectNotFound
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage
    from prefect.utilities.asyncutils import run_coro_as_sync

    storage = ConcurrencyLeaseStorage()
    if not storage.storage_path.is_dir():
        return None
    try:
        limit_id = client.read_global_concurrency_limit_by_name(limit).id
    except ObjectNotFound:
        return []
    holders = run_coro_as_sync(storage.list_holders_for_limit(limit_id)) or []
    return [(lease_id, str(holder.id) if holder is not None else None) for lease_id, holder in holders]
