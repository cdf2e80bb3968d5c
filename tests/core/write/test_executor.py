"""The local executor: dependency graph, pipelined levels, block cache, levels created on the way."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr

import topozarr_core.publish.level_init as init_ahead
import topozarr_core.write.executor as executor
from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import coarsen_reference, make_raster
from topozarr_core import create_pyramid
from topozarr_core.plan.graph import region_graph
from topozarr_core.plan.regions import restrict_plan
from topozarr_core.publish.root_doc import STATUS_KEY
from topozarr_core.write.level_cache import LevelCache

KW = dict(x_dim="lon", y_dim="lat")
SMALL = dict(chunks_per_shard=1, target_chunk_bytes=16_000)  # 128x128 chunks: many regions


def _overlaps(plan, region, other, step) -> bool:
    """Brute force: does ``other`` (level L-k) lie under ``region`` (level L) scaled by ``step``?"""
    spec = plan.var(region.var)
    yi, xi = spec.axes(plan.y_dim, plan.x_dim)
    for d, ((a, b), (c, e)) in enumerate(zip(region.box, other.box)):
        lo, hi = (a * step, b * step) if d in (yi, xi) else (a, b)
        if not (c < hi and e > lo):
            return False
    return True


@pytest.mark.parametrize("sources_from_cache", [False, True])
@pytest.mark.parametrize("case", ["2d", "3d-factors", "restricted"])
def test_region_graph_equals_brute_force(case, sources_from_cache):
    if case == "2d":
        p = create_pyramid(make_raster(ny=700, nx=900), levels=5, **SMALL, **KW)
        plan = p.region_plan(max_region_bytes=300_000)
    elif case == "3d-factors":
        p = create_pyramid(make_raster(ny=500, nx=610, nt=6), factors=[1, 2, 6, 12], **SMALL, **KW)
        plan = p.region_plan()
    else:
        p = create_pyramid(make_raster(ny=300, nx=400, nt=9), levels=3, **SMALL, **KW)
        plan = restrict_plan(p.region_plan(), "time", 4)
    sources = {}
    if sources_from_cache:
        cache = LevelCache.for_plan(plan)
        sources = {lvl: cache.producer.get(lvl, lvl - 1) for lvl in cache.precomputed}
    graph = region_graph(plan, sources)
    regions = graph.regions
    assert len(regions) == sum(lp.n_regions for lp in plan.levels) > 20
    for j, region in enumerate(regions):
        src = sources.get(region.level, region.level - 1)
        step = plan.factors[region.level] // plan.factors[src] if src >= 0 else 1
        expected = {i for i, other in enumerate(regions)
                    if other.level == src and other.var == region.var and _overlaps(plan, region, other, step)}
        got = {i for i, unblocks in enumerate(graph.unblocks) if j in unblocks}
        assert got == expected, region
        assert graph.waits_for[j] == len(expected)


def test_aligned_plan_chains_every_level_to_level_0():
    p = create_pyramid(make_raster(ny=512, nx=512), levels=4, **KW)
    cache = LevelCache.for_plan(p.region_plan())
    assert cache.precomputed == {1, 2, 3}
    assert cache.producer == {1: 0, 2: 0, 3: 0}
    assert cache.chain(0) == [1, 2, 3] and cache.chain(1) == []
    assert not cache.data and set(cache.block_index) == {(lvl, "air") for lvl in (1, 2, 3)}


def test_unaligned_levels_are_kept_whole_and_read_back():
    p = create_pyramid(make_raster(ny=700, nx=900), factors=[1, 3, 9, 27], **SMALL, **KW)
    # regions of one shard (small ones are otherwise grouped, here into whole levels, which line up)
    cache = LevelCache.for_plan(p.region_plan(max_region_bytes=SMALL["target_chunk_bytes"]))
    whole = {lvl for lvl, _ in cache.data}
    assert whole and all(lvl + 1 not in cache.precomputed for lvl in whole)


def _record_regions(monkeypatch):
    """Wrap write_region: (region, start, end) per region, in completion order."""
    log, lock, real = [], threading.Lock(), executor.write_region

    def recording(ctx, region):
        t0 = time.perf_counter()
        n = real(ctx, region)
        with lock:
            log.append((region, t0, time.perf_counter()))
        return n

    monkeypatch.setattr(executor, "write_region", recording)
    return log


def test_levels_pipeline_and_never_start_before_their_inputs(tmp_path, monkeypatch):
    ds = make_raster(ny=1024, nx=1024, nan_fraction=0.05)
    p = create_pyramid(ds, levels=4, **SMALL, **KW)
    log = _record_regions(monkeypatch)
    p.write(tmp_path / "p.zarr", max_workers=2, max_region_bytes=600_000)
    plan = p.region_plan(max_region_bytes=600_000)
    cache = LevelCache.for_plan(plan)
    graph = region_graph(plan, {lvl: cache.producer.get(lvl, lvl - 1) for lvl in cache.precomputed})
    ended = {r: end for r, _, end in log}
    started = {r: start for r, start, _ in log}
    assert set(ended) == set(graph.regions)
    for i, region in enumerate(graph.regions):
        for j in graph.unblocks[i]:
            assert ended[region] <= started[graph.regions[j]]
    last_level0 = max(end for r, _, end in log if r.level == 0)
    assert any(r.level == 1 and start < last_level0 for r, start, _ in log), "no level-1 region overlapped level 0"
    for lvl, f in enumerate(p.factors):
        got = zarr.open_array(tmp_path / "p.zarr", path=f"{lvl}/air")[...]
        np.testing.assert_allclose(got, coarsen_reference(ds, "air", f, "mean"), rtol=1e-6, equal_nan=True)


def test_tail_runs_largest_regions_first(tmp_path, monkeypatch):
    # after the last level-0 region, level 1 (512^2), 2 (256^2), 3 (128^2) and 4 (64^2) are ready
    # together; coarsest-first would start the largest last
    ds = make_raster(ny=1024, nx=1024)
    p = create_pyramid(ds, levels=5, chunks_per_shard=4, target_chunk_bytes=16_000, **KW)
    log = _record_regions(monkeypatch)
    p.write(tmp_path / "p.zarr", max_workers=1)  # one worker: regions start in submission order
    starts = [r for r, _, _ in sorted(log, key=lambda e: e[1])]
    last0 = max(i for i, r in enumerate(starts) if r.level == 0)
    tail = [int(np.prod(r.shape())) for r in starts[last0 + 1:]]
    assert len(set(tail)) >= 3
    assert tail == sorted(tail, reverse=True), [(r.level, r.shape()) for r in starts[last0 + 1:]]


def test_blocks_stay_few_and_are_all_handed_over(tmp_path, monkeypatch):
    ds = make_raster(ny=1536, nx=1536, nan_fraction=0.05)
    p = create_pyramid(ds, levels=3, **SMALL, **KW)
    made, real_for_plan = [], LevelCache.for_plan

    def recording(cls, plan):
        made.append(real_for_plan(plan))
        return made[-1]

    monkeypatch.setattr(LevelCache, "for_plan", classmethod(recording))
    # regions of one 64 kB shard each: small regions are otherwise grouped (not in one region of 100 kB)
    plan = p.region_plan(max_region_bytes=100_000)
    n_blocks = sum(lp.n_regions for lp in plan.levels if lp.level >= 1)
    p.write(tmp_path / "p.zarr", max_workers=2, max_region_bytes=100_000, keep_levels_in_memory=True)
    assert n_blocks > 40
    assert len(made) == 1
    cache = made[0]
    assert 0 < cache.peak_blocks <= 16, f"{cache.peak_blocks} of {n_blocks} blocks alive at once"
    assert not cache.blocks  # every block was written and dropped
    assert 0 < cache.new_arrays < n_blocks  # written blocks' arrays were reused for later blocks
    p.write(tmp_path / "q.zarr", max_workers=2, max_region_bytes=300_000, keep_levels_in_memory=False)
    assert_same_pyramid(str(tmp_path / "p.zarr"), str(tmp_path / "q.zarr"))


def test_levels_are_created_before_their_first_region(tmp_path, monkeypatch):
    ds = make_raster(ny=800, nx=800)
    p = create_pyramid(ds, levels=4, **SMALL, **KW)
    created, log = {}, _record_regions(monkeypatch)
    real = init_ahead.initialise_level

    def recording(store, ds_, spec, level, docs=None):
        real(store, ds_, spec, level, docs)
        created[level] = time.perf_counter()

    monkeypatch.setattr(init_ahead, "initialise_level", recording)
    p.write(tmp_path / "p.zarr", max_workers=2)
    assert sorted(created) == [0, 1, 2, 3]
    for region, start, _ in log:
        assert created[region.level] <= start


def test_failed_level_creation_fails_the_write_unpublished(tmp_path, monkeypatch):
    ds = make_raster(ny=600, nx=600)
    p = create_pyramid(ds, levels=4, **SMALL, **KW)
    real = init_ahead.initialise_level

    def failing(store, ds_, spec, level, docs=None):
        if level == 2:
            raise OSError("disk full while creating level 2")
        real(store, ds_, spec, level, docs)

    monkeypatch.setattr(init_ahead, "initialise_level", failing)
    with pytest.raises(OSError, match="disk full"):
        p.write(tmp_path / "p.zarr", max_workers=2)
    root = zarr.open_group(tmp_path / "p.zarr", mode="r")
    assert root.attrs[STATUS_KEY] == "incomplete" and "multiscales" not in root.attrs
    monkeypatch.undo()
    p.write(tmp_path / "p.zarr", max_workers=2)  # a rerun replaces it
    assert "multiscales" in zarr.open_group(tmp_path / "p.zarr", mode="r").attrs


def test_first_region_failure_stops_submitting(tmp_path, monkeypatch):
    ds = make_raster(ny=1024, nx=1024)
    p = create_pyramid(ds, levels=3, **SMALL, **KW)
    calls, real = [], executor.write_region

    def failing(ctx, region):
        calls.append(region)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(ctx, region)

    monkeypatch.setattr(executor, "write_region", failing)
    with pytest.raises(RuntimeError, match="boom"):
        p.write(tmp_path / "p.zarr", max_workers=2, max_region_bytes=300_000)
    total = sum(lp.n_regions for lp in p.region_plan(max_region_bytes=300_000).levels)
    assert len(calls) <= 3 + 2 * executor.INFLIGHT_PER_WORKER < total


def test_level_creation_replaces_only_that_level(tmp_path):
    """Levels are built in memory and copied in: stale keys of a rewritten level go, the root
    document and the other levels stay."""
    ds = make_raster(ny=600, nx=600, nan_fraction=0.05)
    p = create_pyramid(ds, levels=4, **KW)
    path = tmp_path / "p.zarr"
    p.write(path)
    (path / "2" / "stale").mkdir()
    (path / "2" / "stale" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (path / "_topozarr_missing" / "2" / "air" / "c" / "9").mkdir(parents=True)
    (path / "_topozarr_missing" / "2" / "air" / "c" / "9" / "9").write_bytes(b"junk")
    level1 = {f.relative_to(path): f.read_bytes() for f in (path / "1").rglob("*") if f.is_file()}
    p.write(path, mode="a", levels=[2, 3])
    assert not (path / "2" / "stale").exists()
    assert not (path / "_topozarr_missing" / "2" / "air" / "c" / "9").exists()
    assert {f.relative_to(path): f.read_bytes() for f in (path / "1").rglob("*") if f.is_file()} == level1
    root = zarr.open_group(path, mode="r")
    assert "multiscales" in root.attrs and root.attrs.get(STATUS_KEY) is None
    p.write(tmp_path / "fresh.zarr")
    assert_same_pyramid(str(path), str(tmp_path / "fresh.zarr"))
