"""The local executor of a region plan: a bounded thread pool in this process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import numpy as np
import psutil

from .plan import RegionPlan
from .regions import WriteContext, write_region

#: Fraction of available RAM the in-flight regions may use.
RAM_FRACTION = 0.5
#: Regions in flight per worker (bounds memory to about workers x this x region size).
INFLIGHT_PER_WORKER = 2


def region_peak_bytes(plan: RegionPlan) -> int:
    """Largest working set of one region: its input window, output and encode buffers."""
    peak = 0
    for lp in plan.levels:
        for batch in lp.batches:
            for region in batch.regions:
                spec = plan.var(region.var)
                n = int(np.prod(region.shape()))
                item = np.dtype(spec.level_dtype(region.level)).itemsize
                peak = max(peak, n * item * (lp.step**2 + 2))
    return peak


def auto_workers(plan: RegionPlan, max_workers: int | None) -> int:
    if max_workers is not None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        return int(max_workers)
    cpus = os.cpu_count() or 1
    per_region = max(1, region_peak_bytes(plan) * INFLIGHT_PER_WORKER)
    by_ram = int(psutil.virtual_memory().available * RAM_FRACTION // per_region)
    return max(1, min(cpus, by_ram))


@contextlib.contextmanager
def _synchronous_dask() -> Iterator[None]:
    """Lazy dask-backed sources compute inside our threads: no nested thread pools."""
    try:
        import dask
    except ImportError:  # pragma: no cover
        yield
        return
    with dask.config.set(scheduler="synchronous"):
        yield


def run_plan(ctx: WriteContext, workers: int, progress: bool = False) -> int:
    """Write every region of the plan, level by level; returns bytes written."""
    plan = ctx.plan
    total = sum(lp.n_regions for lp in plan.levels)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="region", desc="pyramid")
    written = 0
    try:
        with _synchronous_dask(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="topozarr") as pool:
            for lp in plan.levels:
                if bar is not None:
                    bar.set_description(f"level {lp.level}")
                regions = [r for b in lp.batches for r in b.regions]
                pending: set[Future] = set()
                limit = workers * INFLIGHT_PER_WORKER
                for region in regions:
                    if len(pending) >= limit:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        written += _collect(done, bar)
                    pending.add(pool.submit(write_region, ctx, region))
                done, _ = wait(pending)
                written += _collect(done, bar)
                if ctx.cache is not None and lp.level >= 1:
                    ctx.cache.release(lp.level - 1)
    finally:
        if bar is not None:
            bar.close()
    return written


def _collect(done: set[Future], bar) -> int:
    n = 0
    for fut in done:
        n += fut.result()  # re-raises the first failure
        if bar is not None:
            bar.update(1)
    return n
