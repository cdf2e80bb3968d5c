"""Where a flow run's held concurrency leases are written down, so that someone else can release them.

A SIGKILLed process cannot release the global-concurrency slots it holds, and Prefect 3.8's API has
no way to list the leases of a limit. Each held slot is therefore recorded as one small file,
``<ledger>/<flow run id>/<lease id>``, created right after the slot is acquired and removed right
after it is released; before asking, ``pending-<task run id>`` says which limit is being asked for. The worker's crash hook and the next attempt of the same flow run (a retry)
read the run's folder and release what is left (:mod:`flows.recovery`).

The ledger is ``TOPOZARR_SLOT_LEDGER``, by default ``<PREFECT_HOME>/topozarr-slot-leases``: the
process worker and the flow-run processes it starts share it. Batches run on other machines (a Dask
cluster) record theirs there, out of the worker's sight; their slots come back when the lease expires
(:data:`flows.slots.LEASE_SECONDS` after the last renewal).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID


PENDING = "pending-"


def root() -> Path:
    configured = os.environ.get("TOPOZARR_SLOT_LEDGER")
    if configured:
        return Path(configured).expanduser()
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser() / "topozarr-slot-leases"


@dataclass(frozen=True)
class HeldSlot:
    """One recorded lease: which limit, held by which task run."""

    lease_id: UUID
    limit: str
    task_run_id: str | None
    path: Path


def record(flow_run_id: str, lease_id: UUID, limit: str, task_run_id: str | None) -> Path:
    folder = root() / flow_run_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / str(lease_id)
    path.write_text(json.dumps({"limit": limit, "task_run_id": task_run_id, "pid": os.getpid()}))
    return path


def record_pending(flow_run_id: str, limit: str, task_run_id: str | None) -> Path:
    """Written before asking for a slot: a process killed while the server grants it never learns the
    lease id, but this says which limit and holder (task run) to look for (:mod:`flows.lease_lookup`)."""
    folder = root() / flow_run_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PENDING}{task_run_id or os.getpid()}"
    path.write_text(json.dumps({"limit": limit, "task_run_id": task_run_id, "pid": os.getpid()}))
    return path


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()  # the run's folder goes with its last lease
    except OSError:
        pass


def held_by(flow_run_id: str) -> list[HeldSlot]:
    """The leases the flow run recorded and has not released (a torn record still names its lease)."""
    out = []
    for path, info in _entries(flow_run_id):
        try:
            lease_id = UUID(path.name)
        except ValueError:
            continue
        out.append(HeldSlot(lease_id, str(info.get("limit", "?")), info.get("task_run_id"), path))
    return out


@dataclass(frozen=True)
class PendingSlot:
    """A slot asked for whose answer was never recorded: it may or may not have been granted."""

    limit: str
    task_run_id: str | None
    path: Path


def pending_of(flow_run_id: str) -> list[PendingSlot]:
    return [PendingSlot(str(info.get("limit", "")), info.get("task_run_id"), path)
            for path, info in _entries(flow_run_id) if path.name.startswith(PENDING) and info.get("limit")]


def _entries(flow_run_id: str) -> list[tuple[Path, dict]]:
    folder = root() / flow_run_id
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.iterdir()):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            out.append((path, {}))
    return out
