"""Run tiles (:mod:`topozarr_core.plan.tiles`): each as its regions through a bounded thread pool in this process.

:func:`write_tiles` is what every executor calls: ``Pyramid.write`` with a whole stage of tiles at
once, a Prefect task or a Dask worker with one tile. Inside, :func:`run_plan` follows the regions'
dependency graph (:mod:`topozarr_core.plan.graph`) and reduces each region into the coarser levels it feeds
in memory (:mod:`topozarr_core.write.level_cache`), so a tile reads its input once whatever its size.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from topozarr_core.plan.graph import region_graph
from topozarr_core.plan.regions import RegionPlan
from topozarr_core.plan.tiles import Tile, TilePlan
from topozarr_core.write.allocator import TASK_LINGER_SECONDS, large_blocks_reused
from topozarr_core.write.gc_pause import old_objects_frozen
from topozarr_core.write.level_cache import LevelCache
from topozarr_core.write.region import WriteContext, write_region
from topozarr_core.write.tile_pool import TilePool, shared_pool
from topozarr_core.write.window_cache import WindowCache

#: Fraction of available RAM the in-flight regions may use.
RAM_FRACTION = 0.5
#: Regions in flight per worker (bounds memory to about workers x this x region size).
INFLIGHT_PER_WORKER = 2


def region_peak_bytes(plan: RegionPlan) -> int:
    """Largest working set of one region: its input window, output and encode buffers.

    :param plan: the region plan.
    """
    peak = 0
    for lp in plan.levels:
        for region in lp.regions:
            spec = plan.var(region.var)
            n = int(np.prod(region.shape()))
            item = np.dtype(spec.level_dtype(region.level)).itemsize
            peak = max(peak, n * item * (lp.step**2 + 2))
    return peak


def auto_workers(plan: RegionPlan, max_workers: int | None) -> int:
    """The number of region threads: ``max_workers`` when given, else the CPU count capped by the available RAM.

    :param plan: the region plan (its largest region sizes the RAM cap).
    :param max_workers: the caller's choice (>= 1), or None.
    """
    if max_workers is not None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        return int(max_workers)
    cpus = os.cpu_count() or 1
    per_region = max(1, region_peak_bytes(plan) * INFLIGHT_PER_WORKER)
    by_ram = int(psutil.virtual_memory().available * RAM_FRACTION // per_region)
    return max(1, min(cpus, by_ram))


def run_plan(ctx: WriteContext, workers: int, progress: bool = False,
             level_ready: Callable[[int], None] | None = None,
             idle_step: Callable[[], bool] | None = None,
             pool: Executor | None = None) -> int:
    """Write every region of the plan; returns bytes written.

    Regions run as soon as the regions of the previous level under them are written (see
    :mod:`topozarr_core.plan.graph`), coarsest ready level first (largest first once the finest level is all
    submitted), at most ``workers x INFLIGHT_PER_WORKER`` at a time. ``level_ready(level)``, when
    given, is called before a level's first region is submitted and blocks until the level exists
    in the target; ``idle_step()`` is called between submitting and waiting, to do a short piece of
    other work (creating the next level, see :mod:`topozarr_core.publish.level_init`) while regions run, until it
    returns False. A cached
    level is released once every region of the next level is written. The first failure stops
    submissions and is re-raised once the regions in flight have finished. ``pool``: run the regions
    in that executor (shared by the tiles a process runs at once) instead of a new one of ``workers``
    threads; in a :class:`~topozarr_core.write.tile_pool.TilePool` they go before the regions of runs
    that started later. At most ``workers x INFLIGHT_PER_WORKER`` regions of this plan are in flight either way.

    :param ctx: the plan, source, target and cache of the write.
    :param workers: threads (the pool's size, or the in-flight budget with ``pool``).
    :param progress: show a progress bar.
    :param level_ready: called with a level before its first region is submitted; returns once the level exists.
    :param idle_step: a short piece of other work, called between submitting and waiting until it returns False.
    :param pool: an executor shared by the tiles a process runs at once, instead of a new pool.
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
        with old_objects_frozen(), large_blocks_reused(linger=TASK_LINGER_SECONDS), _pool(pool, workers) as pool:
            # in a shared TilePool, this run's regions go before those of any run that started later
            submit = functools.partial(pool.submit_at, pool.ticket()) if isinstance(pool, TilePool) else pool.submit
            running: dict[Future, int] = {}
            while ready or running:
                while ready and len(running) < limit:
                    i = heapq.heappop(ready)[-1]
                    region = graph.regions[i]
                    if region.level not in started_levels:
                        if level_ready is not None:
                            level_ready(region.level)
                        started_levels.add(region.level)
                    running[submit(write_region, ctx, region)] = i
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


@contextlib.contextmanager
def _pool(shared: Executor | None, workers: int) -> Iterator[Executor]:
    if shared is not None:
        yield shared
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="topozarr") as own:
        yield own


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


# -- tiles --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileResult:
    """What running tiles returns: small numbers, never arrays (a task's result)."""

    keys: tuple[str, ...]
    levels: tuple[int, ...]
    regions: int
    bytes_written: int
    seconds: float


def tile_cache(plan: TilePlan, regions: RegionPlan, tiles: list[Tile] | tuple[Tile, ...]) -> LevelCache | None:
    """The in-memory levels of a run of ``tiles`` (see :mod:`topozarr_core.write.level_cache`); an update's covers only
    its window along the append dim (:class:`topozarr_core.write.window_cache.WindowCache`).

    :param plan: the tile plan.
    :param regions: the region plan of ``tiles``.
    :param tiles: the tiles that run together.
    """
    r = plan.restricted
    if r is None:
        return LevelCache.for_plan(regions)
    dim = r["dim"]
    spans = [t.window[plan.var(t.variables[0]).dims.index(dim)] for t in tiles
             if dim in plan.var(t.variables[0]).dims]
    if not spans:
        return None
    start = max(r["start"], min(a for a, _ in spans))
    stop = max(b for _, b in spans) if r["stop"] is None else min(r["stop"], max(b for _, b in spans))
    if stop <= start:
        return None
    return WindowCache.for_update(regions, dim, start, stop, {tuple(p) for p in r["whole"]})


def write_tiles(plan: TilePlan, tiles: list[Tile] | tuple[Tile, ...], *, source: Any, store: Any,
                workers: int, open_array: Any = None, keep_in_memory: bool = True, progress: bool = False,
                timer: Any = None, level_ready: Callable[[int], None] | None = None,
                idle_step: Callable[[], bool] | None = None, pool: Executor | None = None,
                regions: RegionPlan | None = None) -> TileResult:
    """Write every shard of ``tiles``: their regions, run by :func:`run_plan`.

    Tiles of one stage never share a shard, so any executor may run them at once, each here or in
    another process. ``keep_in_memory=False`` reads each level back from the target instead of
    reducing it in memory (less RAM, more reads). ``regions``: ``plan.region_plan(tiles)`` when the
    caller has it already. Idempotent: running a tile again writes the same bytes.

    :param plan: the tile plan.
    :param tiles: the tiles to write.
    :param source: the source dataset (level 0's input).
    :param store: the target zarr store.
    :param workers: region threads.
    :param open_array: opens the target's arrays (``(store, path, mode) -> zarr.Array``; default zarr's).
    :param keep_in_memory: reduce coarser levels in memory (False: read each level back from the target).
    :param progress: show a progress bar.
    :param timer: a :class:`~topozarr_core.write.stats.RegionTimer` for per-level timings, or None.
    :param level_ready: called before a level's first region (see :func:`run_plan`).
    :param idle_step: short work between submissions (see :func:`run_plan`).
    :param pool: a shared executor (see :func:`run_plan`).
    :param regions: ``plan.region_plan(tiles)`` when the caller has it already.
    """
    t0 = time.perf_counter()
    regions = plan.region_plan(tiles) if regions is None else regions
    cache = tile_cache(plan, regions, tiles) if keep_in_memory and regions.levels else None
    ctx = WriteContext(plan=regions, source=source, store=store, cache=cache, open_array=open_array, timer=timer)
    written = run_plan(ctx, workers, progress=progress, level_ready=level_ready, idle_step=idle_step,
                       pool=pool) if regions.levels else 0
    return TileResult(tuple(t.key for t in tiles), tuple(sorted({lvl for t in tiles for lvl in t.levels})),
                      sum(lp.n_regions for lp in regions.levels), written, time.perf_counter() - t0)


def write_tile_in_task(plan: TilePlan, tile: Tile, *, source: Any, store: Any, io: str = "auto") -> TileResult:
    """Write one tile as a task of any runner does (a flow's thread runner, a Dask worker): on all the
    process's cores, in its shared pool (:func:`shared_pool`), so the tiles it runs at once share them,
    through the codec pipeline ``io`` chooses for ``store``.

    :param plan: the tile plan.
    :param tile: the tile.
    :param source: the source dataset, opened lazily.
    :param store: the target store.
    :param io: ``"auto"``, ``"python"`` or ``"rust"`` (see :func:`topozarr_core.write.codec_pipeline.resolve_io`).
    """
    from topozarr_core.write.codec_pipeline import open_array_for

    return write_tiles(plan, [tile], source=source, store=store, workers=os.cpu_count() or 1,
                       open_array=open_array_for(io, store), pool=shared_pool())
