"""Batch tasks sharing one level cache in a process (what the flow's thread-pool runner does), run
level by level as the flow runs them: ``write_shared_batch`` gives exactly ``Pyramid.write``'s bytes,
reads coarse levels from memory when every producer ran here, and falls back to the store (missing
counts included) when some did not."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from tests.conftest import make_raster
from topozarr_core import create_pyramid
from topozarr_core.dependencies import batch_dependencies
from topozarr_core.executor import IncompleteBlock, shared_cache_bytes, write_shared_batch
from topozarr_core.level_cache import LevelCache
from topozarr_core.regions import WriteContext, write_region_batch


def _pyramid(nan_fraction=0.0):
    return create_pyramid(make_raster(1024, 1536, nt=2, nan_fraction=nan_fraction, seed=7), levels=4,
                          x_dim="lon", y_dim="lat", chunks_per_shard=2)


def _plan(pyramid):
    return pyramid.region_plan(max_region_bytes=1_000_000, target_batches_per_level=6)


def _batch(plan, level, index):
    return next(lp for lp in plan.levels if lp.level == level).batches[index]


class CountingOpener:
    """Opens arrays like the region writer does, counting the opens for reading per level."""

    def __init__(self):
        self.read_levels: list[int] = []

    def __call__(self, store, path, mode):
        if mode == "r":
            self.read_levels.append(int(path.split("/")[0] if not path.startswith("_") else path.split("/")[1]))
        return zarr.open_array(store=store, path=path, mode=mode, zarr_format=3)


def _assert_same(pyramid, a, b):
    for level in range(pyramid.levels):
        x = zarr.open_array(a, path=f"{level}/air", mode="r")[...]
        y = zarr.open_array(b, path=f"{level}/air", mode="r")[...]
        np.testing.assert_array_equal(x, y, err_msg=f"level {level}")


def batch_order(plan):
    """Every batch, level by level (the flow's order), with the batches of the previous level."""
    out = []
    for lp in plan.levels:
        before = [(p.level, b.index) for p in plan.levels if p.level == lp.level - 1 for b in p.batches]
        out += [((lp.level, b.index), tuple(before)) for b in lp.batches]
    return out


def test_worst_case_cache_size_is_the_coarse_levels():
    pyramid = _pyramid(0.05)
    plan = _plan(pyramid)
    spec = plan.var("air")
    values = sum(int(np.prod(spec.shapes[lvl])) * 4 for lvl in (1, 2, 3))
    assert values < shared_cache_bytes(plan) <= values * 2  # float32 values plus narrower missing counts


@pytest.mark.parametrize("nan_fraction", [0.0, 0.05])
def test_shared_cache_batches_equal_pyramid_write_and_read_nothing_back(tmp_path, nan_fraction):
    pyramid = _pyramid(nan_fraction)
    pyramid.write(tmp_path / "core.zarr")
    plan = _plan(pyramid)
    store = pyramid.initialise(str(tmp_path / "tasks.zarr"))
    cache = LevelCache.for_plan(plan, keep_whole=False)
    assert cache.precomputed == {1, 2, 3}
    opener = CountingOpener()
    for (level, index), _ in batch_order(plan):
        ctx = WriteContext(plan=plan, source=pyramid.ds, store=store, cache=cache, open_array=opener)
        write_shared_batch(ctx, _batch(plan, level, index))
    pyramid.publish(store)
    _assert_same(pyramid, tmp_path / "core.zarr", tmp_path / "tasks.zarr")
    assert opener.read_levels == []  # every coarse region came from memory
    assert not cache.blocks  # every block handed over once its region was written


def test_producers_that_ran_elsewhere_make_their_regions_read_the_store(tmp_path):
    pyramid = _pyramid(0.05)
    pyramid.write(tmp_path / "core.zarr")
    plan = _plan(pyramid)
    store = pyramid.initialise(str(tmp_path / "tasks.zarr"))
    cache = LevelCache.for_plan(plan, keep_whole=False)
    opener = CountingOpener()
    order = batch_order(plan)
    elsewhere = {order[1][0]}  # one level-0 batch written by "another worker" (no shared cache)
    assert order[1][0][0] == 0
    for (level, index), _ in order:
        batch = _batch(plan, level, index)
        if (level, index) in elsewhere:
            write_region_batch(WriteContext(plan=plan, source=pyramid.ds, store=store), batch)
        else:
            ctx = WriteContext(plan=plan, source=pyramid.ds, store=store, cache=cache, open_array=opener)
            write_shared_batch(ctx, batch)
    pyramid.publish(store)
    _assert_same(pyramid, tmp_path / "core.zarr", tmp_path / "tasks.zarr")
    assert 0 in opener.read_levels  # the level-1 regions over the foreign batch re-read level 0
    assert not cache.blocks  # incomplete blocks were dropped, not kept


def test_a_rerun_producer_does_not_complete_a_block_twice(tmp_path):
    """Windows are counted once: running a producer batch again (a retry in the same process) keeps
    the block complete and correct, never 'over-complete' with another producer missing."""
    pyramid = _pyramid()
    pyramid.write(tmp_path / "core.zarr")
    plan = _plan(pyramid)
    store = pyramid.initialise(str(tmp_path / "tasks.zarr"))
    cache = LevelCache.for_plan(plan, keep_whole=False)
    order = batch_order(plan)
    level0 = [b for b, _ in order if b[0] == 0]
    first_coarse = next(b for b, _ in order if b[0] == 1)
    region = _batch(plan, *first_coarse).regions[0]
    reads = [b for b in level0 if any(r.box[1][0] // 2 < region.box[1][1] and r.box[1][1] // 2 > region.box[1][0]
                                      and r.box[2][0] // 2 < region.box[2][1] and r.box[2][1] // 2 > region.box[2][0]
                                      and r.box[0][0] < region.box[0][1] and r.box[0][1] > region.box[0][0]
                                      for r in _batch(plan, *b).regions)]
    assert len(reads) >= 2, reads
    ctx = WriteContext(plan=plan, source=pyramid.ds, store=store, cache=cache)
    write_shared_batch(ctx, _batch(plan, *reads[0]))
    write_shared_batch(ctx, _batch(plan, *reads[0]))  # the same producer again
    assert not cache.complete(region.level, region.var, region.box)
    for b in level0:
        write_shared_batch(ctx, _batch(plan, *b))
    assert cache.complete(region.level, region.var, region.box)
    for (level, index), _ in order:
        if level >= 1:
            write_shared_batch(ctx, _batch(plan, level, index))
    pyramid.publish(store)
    _assert_same(pyramid, tmp_path / "core.zarr", tmp_path / "tasks.zarr")


def test_cache_only_batches_follow_their_producers_and_never_read_the_store(tmp_path):
    """Started when their producers were written (coarsest first, the level below not yet written):
    equal to Pyramid.write; one started too early fails instead of reading the store."""
    pyramid = _pyramid(0.05)
    pyramid.write(tmp_path / "core.zarr")
    plan = _plan(pyramid)
    store = pyramid.initialise(str(tmp_path / "tasks.zarr"))
    cache = LevelCache.for_plan(plan, keep_whole=False)
    deps = batch_dependencies(plan, cache.sources())
    # the coarse levels wait for their producers, not for the level below them
    assert {p[0] for key, parents in deps.items() if key[0] in (1, 2) for p in parents} == {0}
    opener = CountingOpener()
    ctx = WriteContext(plan=plan, source=pyramid.ds, store=store, cache=cache, open_array=opener)
    with pytest.raises(IncompleteBlock, match=r"L2-B00000: the level-2 block of 'air' at .* is incomplete"):
        write_shared_batch(ctx, _batch(plan, 2, 0), cache_only=True)
    done: set = set()
    while len(done) < len(deps):  # coarsest ready batch first, as the flow's scheduler does
        key = max((k for k in deps if k not in done and set(deps[k]) <= done), key=lambda k: (k[0], -k[1]))
        write_shared_batch(ctx, _batch(plan, *key), cache_only=True)
        done.add(key)
    pyramid.publish(store)
    _assert_same(pyramid, tmp_path / "core.zarr", tmp_path / "tasks.zarr")
    assert opener.read_levels == []


def test_flow_on_threads_reduces_coarse_levels_in_memory(prefect_harness, tmp_path, monkeypatch):
    """The flow's default thread-pool runner: every batch goes through the shared cache, no coarse
    region falls back to the store, the output equals Pyramid.write and the cache is freed at the end."""
    import flows.batches as batches
    from flows.build import build_pyramid
    from flows.job import load_job
    from flows.params import BuildParams

    ds = make_raster(600, 700, nt=2, nan_fraction=0.05)
    src = tmp_path / "src.zarr"
    ds.to_zarr(src, zarr_format=3, consolidated=False)
    shared_batches, fallbacks = [], []
    real = batches.write_shared_batch
    monkeypatch.setattr(batches, "write_shared_batch",
                        lambda ctx, b, cache_only=False: shared_batches.append((b.key, cache_only)) or real(ctx, b, cache_only))
    real_discard = LevelCache.discard
    monkeypatch.setattr(LevelCache, "discard", lambda self, *a: fallbacks.append(a) or real_discard(self, *a))
    params = BuildParams(source=str(src), target=str(tmp_path / "flow.zarr"), levels=3, x_dim="lon", y_dim="lat",
                         crs="EPSG:4326", regions_per_batch=1, chunks_per_shard=1)
    result = build_pyramid(params)
    assert len(shared_batches) == sum(lv["batches"] for lv in result["levels"]) > 3
    # a first attempt: every batch started once its producers were written, not the level below
    assert all(cache_only for _, cache_only in shared_batches)
    assert fallbacks == []
    assert load_job(params)._run_cache is None  # freed when the levels were written
    import xarray as xr

    direct = create_pyramid(xr.open_zarr(src, consolidated=False), levels=3, x_dim="lon", y_dim="lat",
                            crs="EPSG:4326", chunks_per_shard=1)
    direct.write(tmp_path / "direct.zarr")
    from tests.compare import assert_same_pyramid

    assert_same_pyramid(str(tmp_path / "flow.zarr"), str(tmp_path / "direct.zarr"))
