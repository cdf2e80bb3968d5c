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

from topozarr_core.dependencies import batch_dependencies
from topozarr_core.executor import write_shared_batch
from topozarr_core.io_select import open_array_for
from topozarr_core.level_cache import LevelCache
from topozarr_core.plan import RegionPlan
from topozarr_core.regions import WriteContext, write_region_batch
from topozarr_core.targets import error_summary

from . import faults
from .pipeline import run_pipelined
from .slots import hold_slot, release_idle, wind_down


#: Seconds between updates of a run's progress artifact at least (the UI polls it; nobody reads faster).
PROGRESS_SECONDS = 2.0


class BatchesFailed(RuntimeError):
    """Some region batches failed after their retries; retry the flow run to redo only those."""


def write_one_batch(plan: RegionPlan, source: xr.Dataset, level: int, index: int, *, io: str, limit: str,
                    fork: Any = None, store: Callable[[], Any], cache: LevelCache | None = None,
                    cache_only: bool = False) -> dict:
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
        result = write_region_batch(ctx, batch) if cache is None else write_shared_batch(ctx, batch, cache_only)
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
    commit: Callable[[int, list[Any], bool], Any] | None = None,
    description: str = "region batches written",
    depends: list[list] | None = None,
    in_flight: int = 4,
    level_written: Callable[[int], None] = lambda level: None,
    reads_target: bool = True,
) -> list[dict]:
    """Run every level's batches (see :func:`_run_levels`); then give back the slots they left idle for
    each other (:func:`flows.slots.release_idle`), so none waits for its hand-off timer.

    ``level_written(level)`` is called (in this thread) once a level is complete in the target
    (Icechunk: committed), e.g. to check it while coarser levels are written (:mod:`flows.level_checks`)."""
    try:
        return _run_levels(levels, submit, fork=fork, commit=commit, description=description,
                           depends=depends, in_flight=in_flight, level_written=level_written,
                           reads_target=reads_target)
    finally:
        release_idle(_current(flow_run.id))


def _run_levels(
    levels: list[dict],
    submit: Callable[[int, int, Any], PrefectFuture],
    *,
    fork: Callable[[int], Any] | None,
    commit: Callable[[int, list[Any], bool], Any] | None,
    description: str,
    depends: list[list] | None,
    in_flight: int,
    level_written: Callable[[int], None],
    reads_target: bool,
) -> list[dict]:
    """Run every level's batches, fail clearly, commit (Icechunk), report progress.

    With ``depends`` (:func:`plan_depends`), a batch starts as soon as the batches under it are written
    (:mod:`flows.pipeline`); otherwise level by level: submit every batch, wait, commit. With Icechunk,
    ``fork(level)`` gives the first level's fork and ``commit(level, forks, last)`` merges a level's
    forks, commits them and returns the next level's fork (of that commit; None when ``last``), so
    each level's writers see the levels under it: level by level, unless no batch reads the target
    (``reads_target=False``: the first attempt with the shared cache, every coarse level reduced in
    memory, :func:`reads_only_cache`); then every batch writes into a fork of the first commit and each
    level is committed as soon as it is complete (forks of an older commit merge into the newer head:
    levels are disjoint arrays). Returns one row per level (the planned level fields plus ``written``,
    ``reused`` and ``seconds``) for the table artifact.
    """
    logger = get_run_logger()
    total = sum(lv["batches"] for lv in levels)
    progress = create_progress_artifact(0.0, description=f"{description} ({total} in all)")
    by_level = {lv["level"]: lv for lv in levels}
    rows: dict[int, dict] = {}

    def level_done(level: int, futures: list[PrefectFuture], seconds: float) -> None:
        results = [f.result() for f in futures]
        fresh = [r for f, r in zip(futures, results) if f.state.name != "Cached"]  # Cached: an earlier attempt's
        reused = len(results) - len(fresh)
        logger.info("level %d: %d batches written by this attempt (%.1f MB), %d reused from an earlier attempt, %.1f s",
                    level, len(fresh), sum(r["bytes"] for r in fresh) / 1e6, reused, seconds)
        rows[level] = {**by_level[level], "written": len(fresh), "reused": reused, "seconds": round(seconds, 2)}

    if depends is not None and (fork is None or not reads_target):
        base = fork(levels[0]["level"]) if fork and levels else None
        last_level = levels[-1]["level"] if levels else None

        def finished_level(level: int, tally) -> None:
            futures = [tally.futures[i] for i in sorted(tally.futures)]
            if all(f.state.is_completed() for f in futures):
                if commit:  # (the same task, key and result as level by level: a retry reuses it)
                    commit(level, [f.result()["fork"] for f in futures], level == last_level)
                level_done(level, futures, tally.seconds)
                level_written(level)

        last_update = [time.perf_counter()]

        def batch_done(n: int) -> None:
            # each update is an API call and an event for the server to store: at most one per
            # PROGRESS_SECONDS (a run of 25 batches made 25 of them), and the last
            now = time.perf_counter()
            if n == total or now - last_update[0] >= PROGRESS_SECONDS:
                last_update[0] = now
                update_progress_artifact(progress, 100.0 * n / max(total, 1))

        edges = {(lvl, i): [tuple(k) for k in keys] for lvl, i, keys in depends}
        tallies, failed, not_started = run_pipelined(levels, edges, lambda level, i: submit(level, i, base),
                                                     in_flight=in_flight, on_level_done=finished_level,
                                                     on_batch_done=batch_done,
                                                     on_all_submitted=lambda: wind_down(_current(flow_run.id)))
        if failed:
            level = failed[0][0]
            here = [(i, tallies[level].futures[i]) for lvl, i in failed if lvl == level]
            raise BatchesFailed(failure_line(level, here, by_level[level]["batches"], not_started=not_started))
        return [rows[lv["level"]] for lv in levels]

    done = 0
    level_fork = fork(levels[0]["level"]) if fork and levels else None
    for n, lv in enumerate(levels):
        level = lv["level"]
        t0 = time.perf_counter()
        futures = [submit(level, i, level_fork) for i in range(lv["batches"])]
        if n == len(levels) - 1:
            wind_down(_current(flow_run.id))  # no batch will ask for a slot after these
        wait(futures)
        failed_here = [(i, f) for i, f in enumerate(futures) if not f.state.is_completed()]
        if failed_here:
            raise BatchesFailed(failure_line(level, failed_here, len(futures)))
        if commit:
            level_fork = commit(level, [f.result()["fork"] for f in futures], n == len(levels) - 1)
        done += len(futures)
        update_progress_artifact(progress, 100.0 * done / max(total, 1))
        level_done(level, futures, time.perf_counter() - t0)
        level_written(level)
    return [rows[lv["level"]] for lv in levels]


def plan_depends(plan: RegionPlan, sources: dict[int, int] | None = None) -> list[list]:
    """The plan's batch dependencies as plain data (a task result): ``[level, index, [[level, index], ...]]``."""
    return [[lvl, i, [list(k) for k in keys]] for (lvl, i), keys in batch_dependencies(plan, sources).items()]


def run_depends(planned: list[list] | None, plan: RegionPlan, cache: LevelCache | None,
                run_count: int) -> tuple[list[list] | None, bool]:
    """What this attempt's batches wait for, and whether they write from the shared cache only.

    The first attempt of a run whose batches share one level cache in this process (``cache``) runs
    every batch here, so a precomputed level's batch needs only its producers written (the levels
    in between need not be: levels 2..6 of a 1 GB run no longer wait for each other). Any other
    attempt (a retry reuses batches that never fed this process's cache) waits for the level below
    in the store (``planned``, the plan task's edges)."""
    if planned is None or cache is None or run_count != 1 or not cache.precomputed:
        return planned, False
    return plan_depends(plan, cache.sources()), True


def reads_only_cache(plan: RegionPlan, cache: LevelCache | None) -> bool:
    """Whether batches that write from the shared cache only read nothing from the target: every level
    but the plan's first is precomputed (reduced in memory by the regions under it)."""
    if cache is None or not plan.levels:
        return False
    first = plan.levels[0].level
    return all(lp.level in cache.precomputed for lp in plan.levels if lp.level != first)


def runs_in_this_process() -> bool:
    """Whether the current flow's task runner runs tasks in this process's threads: then its batch
    tasks can share one level cache (a Dask or process runner's tasks each compute from the store)."""
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    ctx = FlowRunContext.get()
    return ctx is not None and isinstance(ctx.task_runner, ThreadPoolTaskRunner)


def failure_line(level: int, failed: list[tuple[int, PrefectFuture]], total: int, not_started: int = 0) -> str:
    """One line for the flow run's state: which batches failed, and the first one's root cause. It is
    also logged as the flow's last error, so ``prefect deployment run --watch`` (which prints only the
    final state's name) shows it in the log stream it follows."""
    index, future = failed[0]
    cause = future.state.result(raise_on_failure=False)
    why = error_summary(cause, limit=240) if isinstance(cause, BaseException) else (future.state.message or "")
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    above = f"; {not_started} batches of coarser levels that read them were not started" if not_started else ""
    line = (f"level {level}: {len(failed)} of {total} batches failed after their retries; "
            f"write-L{level}-B{index:05d}{more}: {why}{above}; retry the run to redo only the failed batches")
    get_run_logger().error("%s", line)
    return line
