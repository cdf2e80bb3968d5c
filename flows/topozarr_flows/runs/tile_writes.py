"""What every tile task does, in the build and the update flow: hold a slot, write the tile, report."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import xarray as xr
from prefect import get_run_logger
from prefect.runtime import task_run

from topozarr_core.plan.tiles import TilePlan
from topozarr_core.write.executor import write_tile_in_task
from topozarr_flows.prefect_api.outage_retries import NotRetryable
from topozarr_flows.prefect_api.slots import hold_slot
from topozarr_flows.runs import faults


class SourceChanged(NotRetryable):
    """A retried run's source no longer gives the tile plan the run was started with (not retried: a
    new run plans the new source)."""


def write_one_tile(plan: TilePlan, source: xr.Dataset, key: str, *, io: str, limit: str, fork: Any = None,
                   store: Callable[[], Any], fingerprint: str = "") -> dict:
    """Write tile ``key`` of ``plan`` holding one slot of the task concurrency limit ``limit``.

    With an Icechunk ``fork`` the tile writes into its own copy of it (exactly as a remote worker
    would) and returns that copy for merging; otherwise into ``store()``. The tile is written by
    :func:`topozarr_core.write.executor.write_tile_in_task`: its regions run in this process's shared
    thread pool, so the tiles a process runs at once share its cores.

    :param plan: the run's tile plan (re-derived in each process from the run's parameters).
    :param source: the source dataset, opened lazily.
    :param key: the tile's key in ``plan``.
    :param io: ``"auto"``, ``"python"`` or ``"rust"``: the codec pipeline the tile writes with.
    :param limit: the name of the task concurrency limit whose slot the tile holds while it writes.
    :param fork: an Icechunk fork (a picklable writable session) to write into, or None.
    :param store: makes the plain Zarr target store (called only without ``fork``).
    :param fingerprint: the plan's fingerprint when the run was planned: a tile of a retried run whose
        source now gives another plan is refused (:class:`SourceChanged`) before it writes. Empty: not
        checked.
    :returns: the tile's key, levels, regions, bytes and times (and its fork, with ``fork``).
    """
    if fingerprint and plan.fingerprint() != fingerprint:
        raise SourceChanged("the source changed since this run was planned (its tile plan differs); "
                            "start a new run instead of retrying this one")
    tile = plan.tile(key)
    if fork is not None:
        fork = pickle.loads(pickle.dumps(fork))  # a fresh copy for each attempt: a retry starts clean
        target = fork.store
    else:
        target = store()
    with hold_slot(limit, str(task_run.id) if task_run.id else None):
        started = time.time()
        faults.maybe_fail(key)
        target = faults.wrap_store(key, target)
        result = write_tile_in_task(plan, tile, source=source, store=target, io=io)
        finished = time.time()
    get_run_logger().info("wrote %s: %d regions, %.1f MB in %.2f s", tile.label, result.regions,
                          result.bytes_written / 1e6, result.seconds)
    out = {"key": key, "levels": list(tile.levels), "regions": result.regions, "bytes": result.bytes_written,
           "seconds": result.seconds, "started": started, "finished": finished}
    if fork is not None:
        out["fork"] = fork
    return out
