"""The local executor of a region plan: a bounded thread pool in this process."""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import numpy as np
import psutil

from .dependencies import region_graph
from .gc_pause import old_objects_frozen
from .level_cache import LevelCache
from .paths import missing_dtype
from .plan import RegionBatch, RegionPlan
from .regions import BatchResult, WriteContext, write_region

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


def run_plan(ctx: WriteContext, workers: int, progress: bool = False,
             level_ready: Callable[[int], None] | None = None,
             idle_step: Callable[[], bool] | None = None) -> int:
    """Write every region of the plan; returns bytes written.

    Regions run as soon as the regions of the previous level under them are written (see
    :mod:`.dependencies`), coarsest ready level first (largest first once the finest level is all
    submitted), at most ``workers x INFLIGHT_PER_WORKER`` at a time. ``level_ready(level)``, when
    given, is called before a level's first region is submitted and blocks until the level exists
    in the target; ``idle_step()`` is called between submitting and waiting, to do a short piece of
    other work (creating the next level, see :mod:`.init_ahead`) while regions run, until it
    returns False. A cached
    level is released once every region of the next level is written. The first failure stops
    submissions and is re-raised once the regions in flight have finished.
    """
    cache = ctx.cache
    sources = {} if cache is None else cache.sources()
    graph = region_graph(ctx.plan, sources)
    waits = list(graph.waits_for)
    left_per_level = Counter(r.level for r in graph.regions)
    releasable = _release_rules(ctx)
    order = _feeding_order(graph)
    finest = min(left_per_level, default=0)
    unsubmitted_finest = left_per_level[finest]
    priority = _pipeline_priority(graph, order)
    ready = [priority(i) for i in range(len(graph.regions)) if waits[i] == 0]
    heapq.heapify(ready)
    started_levels: set[int] = set()
    limit = workers * INFLIGHT_PER_WORKER
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(graph.regions), unit="region", desc="pyramid")
    written = 0
    try:
        with old_objects_frozen(), _synchronous_dask(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="topozarr") as pool:
            running: dict[Future, int] = {}
            while ready or running:
                while ready and len(running) < limit:
                    i = heapq.heappop(ready)[-1]
                    region = graph.regions[i]
                    if region.level not in started_levels:
                        if level_ready is not None:
                            level_ready(region.level)
                        started_levels.add(region.level)
                    running[pool.submit(write_region, ctx, region)] = i
                    if region.level == finest:
                        unsubmitted_finest -= 1
                        if unsubmitted_finest == 0:  # the tail: largest first (see _tail_priority)
                            priority = _tail_priority(graph, order)
                            ready = [priority(j[-1]) for j in ready]
                            heapq.heapify(ready)
                if idle_step is not None and running and not idle_step():
                    idle_step = None
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    written += fut.result()  # re-raises the first failure; the pool drains the rest
                    level = graph.regions[i].level
                    left_per_level[level] -= 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_description(f"level {_lowest_unfinished(left_per_level)}")
                    for j in graph.unblocks[i]:
                        waits[j] -= 1
                        if waits[j] == 0:
                            heapq.heappush(ready, priority(j))
                    if left_per_level[level] == 0:
                        for kept, needs in list(releasable.items()):
                            if all(left_per_level[lvl] == 0 for lvl in needs):
                                cache.release(kept)
                                del releasable[kept]
    finally:
        if bar is not None:
            bar.close()
    return written


def _release_rules(ctx: WriteContext) -> dict[int, set[int]]:
    """Cached level -> the levels whose regions read it: it is dropped once they are all written.

    A kept level is read by its own regions (which write it) and by the next level's when that
    level is not precomputed (it reduces from the kept one).
    """
    if ctx.cache is None:
        return {}
    planned = {lp.level for lp in ctx.plan.levels}
    rules = {}
    for lvl in sorted(planned - {0}):
        needs = {lvl}
        if lvl + 1 in planned and lvl + 1 not in ctx.cache.precomputed:
            needs.add(lvl + 1)
        rules[lvl] = needs
    return rules


def _lowest_unfinished(left_per_level: Counter) -> int:
    return min((lvl for lvl, n in left_per_level.items() if n > 0), default=max(left_per_level, default=0))


def _pipeline_priority(graph, order: list[tuple]) -> Callable[[int], tuple]:
    """Heap key while the finest level is being read: coarsest ready level first (its blocks are
    dropped soonest), then feeding order."""
    return lambda i: (-graph.regions[i].level, order[i], i)


def _tail_priority(graph, order: list[tuple]) -> Callable[[int], tuple]:
    """Heap key once every finest-level region is submitted: largest region first.

    What is left then (the last coarse regions, all ready at about the same time) is a set of
    independent jobs; starting the longest ones first (LPT) ends the write soonest, whereas
    coarsest-first would leave the largest shard to run alone at the end.
    """
    return lambda i: (-math.prod(graph.regions[i].shape()), order[i], i)


def _feeding_order(graph) -> list[tuple]:
    """Sort key per region: regions feeding the same coarser region run together.

    Among ready regions of one level, those under the first region of the next level come first,
    so that coarser region (and the one above it) becomes ready as early as possible.
    """
    key: list[tuple] = [()] * len(graph.regions)
    for i in sorted(range(len(graph.regions)), key=lambda i: -graph.regions[i].level):
        parents = graph.unblocks[i]
        key[i] = (min(key[p] for p in parents) if parents else ()) + (i,)
    return key


# -- batches run as separate tasks (the flows) ------------------------------------------------------

def shared_cache_bytes(plan: RegionPlan) -> int:
    """Memory a cache shared by batch tasks may hold at worst: every block level whole (a block
    lives from its first producer's write until its own batch is written, and a failed or slow batch
    can keep all of them alive): about a third of level 0."""
    cache = LevelCache.for_plan(plan, keep_whole=False)
    total = 0
    for lvl, var in cache.block_index:
        spec = plan.var(var)
        item = np.dtype(spec.out_dtype).itemsize
        item += np.dtype(missing_dtype(plan.factors[lvl])).itemsize if spec.track_missing else 0
        total += int(np.prod(spec.shapes[lvl])) * item
    return total


def shared_cache_for(plan: RegionPlan) -> LevelCache | None:
    """A cache for batch tasks of one run in one process, or None when it might not fit in RAM."""
    fits = shared_cache_bytes(plan) <= psutil.virtual_memory().available * RAM_FRACTION / 2
    return LevelCache.for_plan(plan, keep_whole=False) if fits else None


class IncompleteBlock(RuntimeError):
    """A batch scheduled to write from the shared cache found a block there incomplete."""


def write_shared_batch(ctx: WriteContext, batch: RegionBatch, cache_only: bool = False) -> BatchResult:
    """Write a batch with a cache shared by the batch tasks of one run in this process.

    Like :func:`.regions.write_region_batch`, region by region with the one region writer; a
    region whose block here is complete (every producer under it ran in this process) is only
    encoded, as in ``Pyramid.write``; any other is computed from the previous level in the store,
    as a task on another worker would. Each written region records the windows it reduced into.
    ``cache_only``: the batch was started once its producers were written, not the level below it
    (which may not be in the store yet): an incomplete block is then an error, never a read.
    """
    cache = ctx.cache
    if cache is None:
        raise ValueError("write_shared_batch needs ctx.cache (a LevelCache.for_plan(plan, keep_whole=False))")
    from_store = dataclasses.replace(ctx, cache=None)  # same open arrays, no cache
    t0 = time.perf_counter()
    with old_objects_frozen():
        written = _write_shared(ctx, from_store, batch, cache_only)
    return BatchResult(batch.key, batch.level, len(batch.regions), written, time.perf_counter() - t0)


def _write_shared(ctx: WriteContext, from_store: WriteContext, batch: RegionBatch, cache_only: bool) -> int:
    cache = ctx.cache
    written = 0
    for region in batch.regions:
        if region.level in cache.precomputed and not cache.complete(region.level, region.var, region.box):
            if cache_only:
                raise IncompleteBlock(f"{batch.key}: the level-{region.level} block of {region.var!r} at "
                                      f"{list(region.box)} is incomplete in the shared cache; retry the run "
                                      "(a retry reads the level below from the store)")
            cache.discard(region.level, region.var, region.box)
            written += write_region(from_store, region)  # reduces into nothing: its coarser blocks stay incomplete
            continue
        written += write_region(ctx, region)
        for level, window in cache.fed_windows(region.level, region.var, region.box):
            cache.mark_fed(level, region.var, window)
    return written
