"""Batch tasks without level barriers: what each batch waits for, and the flow's scheduler keeping to it."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from prefect import flow, task

from flows.batches import plan_depends
from flows.pipeline import run_pipelined
from tests.conftest import make_raster
from tests.test_executor import KW, SMALL, _overlaps
from topozarr_core import create_pyramid
from topozarr_core.dependencies import batch_dependencies
from topozarr_core.gc_pause import old_objects_frozen
from topozarr_core.plan import restrict_plan


@pytest.mark.parametrize("case", ["2d", "3d-factors", "restricted"])
def test_batch_dependencies_equal_brute_force(case):
    if case == "2d":
        plan = create_pyramid(make_raster(ny=700, nx=900), levels=5, **SMALL, **KW).region_plan(
            max_region_bytes=300_000, regions_per_batch=3)
    elif case == "3d-factors":
        plan = create_pyramid(make_raster(ny=500, nx=610, nt=6), factors=[1, 2, 6, 12], **SMALL, **KW).region_plan(
            regions_per_batch=2)
    else:
        full = create_pyramid(make_raster(ny=300, nx=400, nt=9), levels=3, **SMALL, **KW).region_plan()
        plan = restrict_plan(full, "time", 4, regions_per_batch=2)
    deps = batch_dependencies(plan)
    batches = {(lp.level, b.index): b for lp in plan.levels for b in lp.batches}
    assert set(deps) == set(batches) and len(batches) > 10
    planned = [lp.level for lp in plan.levels]
    for (level, index), batch in batches.items():
        if level == planned[0]:
            assert deps[(level, index)] == ()
            continue
        below = planned[planned.index(level) - 1]
        step = plan.factors[level] // plan.factors[below]
        expected = {(lvl, i) for (lvl, i), other in batches.items() if lvl == below
                    and any(o.var == r.var and _overlaps(plan, r, o, step) for r in batch.regions for o in other.regions)}
        assert set(deps[(level, index)]) == expected, (level, index)
    # as plain data (a task result) it round-trips
    assert {(lvl, i): tuple(tuple(k) for k in keys) for lvl, i, keys in plan_depends(plan)} == deps


def test_min_batch_bytes_sizes_batches_by_their_output():
    pyramid = create_pyramid(make_raster(ny=1024, nx=1024), levels=3, chunks_per_shard=1, target_chunk_bytes=65_536,
                             **KW)
    region = pyramid.region_plan().levels[0].batches[0].regions[0]
    region_bytes = region.shape()[0] * region.shape()[1] * 4  # float32
    by_bytes = pyramid.region_plan(target_batches_per_level=64, min_batch_bytes=3 * region_bytes)
    for lp, unbatched in zip(by_bytes.levels, pyramid.region_plan().levels):
        assert lp.n_regions == unbatched.n_regions
        assert {len(b.regions) for b in lp.batches[:-1]} <= {3} and len(lp.batches[-1].regions) <= 3
    assert len(by_bytes.levels[0].batches) == -(-by_bytes.levels[0].n_regions // 3) > 10
    # an explicit regions_per_batch wins
    explicit = pyramid.region_plan(regions_per_batch=1, min_batch_bytes=3 * region_bytes)
    assert {len(b.regions) for lp in explicit.levels for b in lp.batches} == {1}
    # an update's restricted plan is regrouped the same way
    restricted = restrict_plan(pyramid.region_plan(regions_per_batch=1), "lon", 0, target_batches_per_level=64,
                               min_batch_bytes=2 * region_bytes)
    assert max(len(b.regions) for b in restricted.levels[0].batches) == 2


def test_gc_stays_frozen_while_any_overlapping_write_runs():
    inside = threading.Event()
    leave = threading.Event()

    def other_write():
        with old_objects_frozen():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other_write)
    with old_objects_frozen():
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the objects of this process (pytest, xarray, prefect, ...)
        t.start()
        inside.wait(10)
    assert gc.get_freeze_count() > frozen * 0.9  # the other write still runs: still frozen (a few were freed)
    leave.set()
    t.join()
    assert gc.get_freeze_count() < frozen / 2  # the last write to end gave them back to the collector


LOG: list[tuple[str, str, float]] = []
LOCK = threading.Lock()


@task(name="pipeline-probe")
def _probe(level: int, index: int, fail: list[str], seconds: float) -> dict:
    key = f"L{level}-B{index}"
    with LOCK:
        LOG.append(("start", key, time.perf_counter()))
    time.sleep(seconds)
    with LOCK:
        LOG.append(("end", key, time.perf_counter()))
    if key in fail:
        raise RuntimeError(f"{key} fails")
    return {"key": key}


@flow(name="pipeline-probe-flow")
def _pipelined(levels: list[dict], depends: dict, fail: list[str], in_flight: int) -> dict:
    done_levels = []
    tallies, failed, not_started = run_pipelined(
        levels, depends,
        lambda level, i: _probe.with_options(retries=0).submit(level, i, fail, 0.3 if (level, i) == (0, 0) else 0.05),
        in_flight=in_flight, on_level_done=lambda level, tally: done_levels.append(level),
        on_all_submitted=lambda: LOG.append(("all-submitted", "", time.perf_counter())))
    return {"failed": failed, "not_started": not_started, "levels_done": done_levels}


def _times(kind: str) -> dict[str, float]:
    return {k: t for what, k, t in LOG if what == kind}


def test_a_batch_starts_when_what_it_reads_is_written_not_when_its_level_is(prefect_harness):
    # level 0: 4 batches (B0 slow); level 1: B0 reads L0 B0+B1, B1 reads L0 B2+B3; level 2 reads both
    levels = [{"level": 0, "batches": 4}, {"level": 1, "batches": 2}, {"level": 2, "batches": 1}]
    depends = {(1, 0): [(0, 0), (0, 1)], (1, 1): [(0, 2), (0, 3)], (2, 0): [(1, 0), (1, 1)]}
    LOG.clear()
    out = _pipelined(levels, depends, [], 2)
    assert out == {"failed": [], "not_started": 0, "levels_done": [0, 1, 2]}
    start, end = _times("start"), _times("end")
    for child, parents in depends.items():
        ck = f"L{child[0]}-B{child[1]}"
        assert all(start[ck] >= end[f"L{p[0]}-B{p[1]}"] for p in parents), ck
    assert start["L1-B1"] < end["L0-B0"]  # no barrier: it did not wait for the slow batch of level 0
    # told once that nothing is left to submit: after the last batch's inputs were written
    assert [what for what, _, _ in LOG].count("all-submitted") == 1
    assert _times("all-submitted")[""] >= max(end["L1-B0"], end["L1-B1"])
    # never more than in_flight at once
    events = sorted((t, +1 if what == "start" else -1) for what, _, t in LOG)
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2


def test_a_failed_batch_holds_back_only_what_reads_it(prefect_harness):
    levels = [{"level": 0, "batches": 4}, {"level": 1, "batches": 2}, {"level": 2, "batches": 1}]
    depends = {(1, 0): [(0, 0), (0, 1)], (1, 1): [(0, 2), (0, 3)], (2, 0): [(1, 0), (1, 1)]}
    LOG.clear()
    out = _pipelined(levels, depends, ["L0-B2"], 3)
    assert out["failed"] == [(0, 2)] and out["not_started"] == 2  # L1-B1 and L2-B0
    started = set(_times("start"))
    assert started == {"L0-B0", "L0-B1", "L0-B2", "L0-B3", "L1-B0"}
    assert out["levels_done"] == [0]  # level 1 has a batch that never ran
    assert [what for what, _, _ in LOG].count("all-submitted") == 1  # the blocked ones count as done with
