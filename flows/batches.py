"""What every region-batch task and every level loop does, shared by the build and update flows."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import xarray as xr
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run, task_run
from prefect.futures import PrefectFuture, wait

from topozarr_core.executor import write_shared_batch
from topozarr_core.io_select import open_array_for
from topozarr_core.level_cache import LevelCache
from topozarr_core.plan import RegionPlan
from topozarr_core.regions import WriteContext, write_region_batch
from topozarr_core.targets import error_summary

from . import faults
from .slots import hold_slot


class BatchesFailed(RuntimeError):
    """Some region batches failed after their retries; retry the flow run to redo only those."""


def write_one_batch(plan: RegionPlan, source: xr.Dataset, level: int, index: int, *, io: str, limit: str,
                    fork: Any = None, store: Callable[[], Any], cache: LevelCache | None = None) -> dict:
    """Write batch ``index`` of ``level`` holding one slot of the global limit ``limit``.

    With an Icechunk ``fork`` the batch writes into its own copy of it (exactly as a remote worker
    would) and returns that copy for merging; otherwise into ``store()``. With ``cache`` (the one
    the run's batch tasks share in this process) regions reduce into and read from memory where
    it holds their data, see :func:`topozarr_core.executor.write_shared_batch`.
    """
    batch = next(lp for lp in plan.levels if lp.level == level).batches[index]
    if fork is not None:
        fork = pickle.loads(pickle.dumps(fork))
        target = fork.store
    else:
        target = store()
    with hold_slot(limit, flow_run_id=_current(flow_run.id), task_run_id=_current(task_run.id)):
        started = time.time()
        faults.maybe_fail(batch.key)
        ctx = WriteContext(plan=plan, source=source, store=target, open_array=open_array_for(io, target),
                           cache=cache)
        result = write_region_batch(ctx, batch) if cache is None else write_shared_batch(ctx, batch)
        finished = time.time()
    get_run_logger().info("wrote %s: %d regions, %.1f MB in %.2f s", batch.key, result.regions,
                          result.bytes_written / 1e6, result.seconds)
    out = {"key": batch.key, "level": level, "regions": result.regions, "bytes": result.bytes_written,
           "seconds": result.seconds, "started": started, "finished": finished}
    if fork is not None:
        out["fork"] = fork
    return out


def _current(run_id: object) -> str | None:
    """The runtime's id as a string (None outside a run)."""
    return str(run_id) if run_id else None


def run_levels(
    levels: list[dict],
    submit: Callable[[int, int, Any], PrefectFuture],
    *,
    fork: Callable[[int], Any] | None = None,
    commit: Callable[[int, list[Any]], Any] | None = None,
    description: str = "region batches written",
) -> list[dict]:
    """Level by level: submit every batch, wait, fail clearly, commit (Icechunk), report progress.

    Returns one row per level (the planned level fields plus ``seconds``) for the table artifact.
    """
    logger = get_run_logger()
    total = sum(lv["batches"] for lv in levels)
    progress = create_progress_artifact(0.0, description=f"{description} ({total} in all)")
    done, rows = 0, []
    for lv in levels:
        level = lv["level"]
        t0 = time.perf_counter()
        level_fork = fork(level) if fork else None
        futures = [submit(level, i, level_fork) for i in range(lv["batches"])]
        wait(futures)
        failed = [(i, f) for i, f in enumerate(futures) if not f.state.is_completed()]
        if failed:
            raise BatchesFailed(failure_line(level, failed, len(futures)))
        results = [f.result() for f in futures]
        if commit:
            commit(level, [r["fork"] for r in results])
        done += len(results)
        update_progress_artifact(progress, 100.0 * done / max(total, 1))
        seconds = time.perf_counter() - t0
        fresh = [r for f, r in zip(futures, results) if f.state.name != "Cached"]  # Cached: an earlier attempt's
        reused = len(results) - len(fresh)
        logger.info("level %d: %d batches written by this attempt (%.1f MB), %d reused from an earlier attempt, %.1f s",
                    level, len(fresh), sum(r["bytes"] for r in fresh) / 1e6, reused, seconds)
        rows.append({**lv, "written": len(fresh), "reused": reused, "seconds": round(seconds, 2)})
    return rows


def runs_in_this_process() -> bool:
    """Whether the current flow's task runner runs tasks in this process's threads: then its batch
    tasks can share one level cache (a Dask or process runner's tasks each compute from the store)."""
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    ctx = FlowRunContext.get()
    return ctx is not None and isinstance(ctx.task_runner, ThreadPoolTaskRunner)


def failure_line(level: int, failed: list[tuple[int, PrefectFuture]], total: int) -> str:
    """One line for the flow run's state: which batches failed, and the first one's root cause. It is
    also logged as the flow's last error, so ``prefect deployment run --watch`` (which prints only the
    final state's name) shows it in the log stream it follows."""
    index, future = failed[0]
    cause = future.state.result(raise_on_failure=False)
    why = error_summary(cause, limit=240) if isinstance(cause, BaseException) else (future.state.message or "")
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    line = (f"level {level}: {len(failed)} of {total} batches failed after their retries; "
            f"write-L{level}-B{index:05d}{more}: {why}; retry the run to redo only the failed batches")
    get_run_logger().error("%s", line)
    return line
