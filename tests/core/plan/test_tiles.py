"""The tile plan (topozarr_core.plan.tiles): every shard is written by exactly one tile, any tiling gives the
same pyramid, the source is read once, the target is read back only where a later stage starts, and
planning a 100 TB source costs tiles, not regions."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import coarsen_reference, make_raster
from topozarr_core import create_pyramid
from topozarr_core.layout.paths import MISSING_GROUP
from topozarr_core.plan.regions import write_unit
from topozarr_core.testing import CountingStore, stored_bytes

KW = dict(x_dim="lon", y_dim="lat")


def _shards(plan, tile, level, var):
    """The shard indices a tile writes at one level of one variable."""
    v = plan.var(var)
    unit = v.encodings[level].shards or v.encodings[level].chunks
    regions = plan.region_plan([tile])
    out = set()
    for lp in regions.levels:
        if lp.level != level:
            continue
        for r in lp.regions:
            if r.var != var:
                continue
            ranges = [range(a // u, -(-b // u)) for (a, b), u in zip(r.box, unit)]
            out |= {tuple(rng[i] for rng, i in zip(ranges, idx)) for idx in np.ndindex(*map(len, ranges))}
    return out


LAYOUTS = {
    "2d": lambda: (make_raster(ny=900, nx=1100, nan_fraction=0.05), dict(levels=4, chunks_per_shard=1)),
    "3d-time-shards": lambda: (make_raster(ny=300, nx=420, nt=40, nan_fraction=0.05), dict(levels=3)),
    "two-dtypes": lambda: (_two_dtypes(), dict(levels=3, chunks_per_shard=1)),
    "factors-1-3-9": lambda: (make_raster(ny=1600, nx=1800, nan_fraction=0.05),
                              dict(factors=[1, 3, 9], chunks_per_shard=1)),
    "unsharded-int-sum": lambda: (make_raster(ny=1500, nx=1700, dtype="int16"),
                                  dict(levels=3, chunks_per_shard=None, method="sum")),
}


def _two_dtypes() -> xr.Dataset:
    ds = make_raster(ny=700, nx=800, nan_fraction=0.05)
    ds["mask"] = (ds.air > 250).astype("uint8")
    ds["mask"].attrs["_FillValue"] = 255
    return ds


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("tile_bytes", [600_000, 3_000_000])
def test_every_shard_written_once_and_the_pyramid_is_the_same(layout, tile_bytes, tmp_path):
    ds, kw = LAYOUTS[layout]()
    pyramid = create_pyramid(ds, **KW, **kw)
    plan = pyramid.tile_plan(max_tile_bytes=tile_bytes)
    assert len(plan.tiles) > 1
    for v in plan.variables:
        for level in plan.levels:
            owners: dict[tuple, str] = {}
            for tile in plan.tiles:
                if v.name not in tile.variables or level not in tile.levels:
                    continue
                for shard in _shards(plan, tile, level, v.name):
                    assert shard not in owners, f"{v.name} level {level} shard {shard}: {owners[shard]} and {tile.key}"
                    owners[shard] = tile.key
            unit = v.encodings[level].shards or v.encodings[level].chunks
            every = set(np.ndindex(*[-(-n // u) for n, u in zip(v.shapes[level], unit)]))
            assert set(owners) == every, (v.name, level)
    whole = tmp_path / "whole.zarr"
    pyramid.write(whole)
    tiled = tmp_path / "tiled.zarr"
    pyramid.write(tiled, max_tile_bytes=tile_bytes)
    assert_same_pyramid(str(tiled), str(whole))


def test_means_stay_exact_across_stages(tmp_path):
    """A later stage reads its level back with the hidden missing counts: every level equals
    xarray.coarsen of the source, next to missing data too."""
    ds = make_raster(ny=1024, nx=1024, nan_fraction=0.1)
    pyramid = create_pyramid(ds, levels=5, chunks_per_shard=1, **KW)
    plan = pyramid.tile_plan(max_tile_bytes=600_000)
    assert len(plan.stages) >= 3 and plan.handoff_levels
    pyramid.write(tmp_path / "p.zarr", max_tile_bytes=600_000)
    for level, f in enumerate(pyramid.factors):
        got = zarr.open_array(str(tmp_path / "p.zarr"), path=f"{level}/air", mode="r")[...]
        np.testing.assert_allclose(got, coarsen_reference(ds, "air", f, "mean"), rtol=1e-5, equal_nan=True)
    assert not (tmp_path / "p.zarr" / MISSING_GROUP).exists()


def test_dependencies_are_the_tiles_under_a_window():
    ds = make_raster(ny=720, nx=720, nt=2)
    pyramid = create_pyramid(ds, levels=3, chunks_per_shard=1, **KW)
    plan = pyramid.tile_plan(max_tile_bytes=1_100_000)
    assert [(r["stage"], r["tiles"], r["levels"]) for r in plan.summary()] == [(0, 4, [0]), (1, 2, [1]), (2, 1, [2])]
    depends = plan.depends()
    by_key = {t.key: t for t in plan.tiles}
    for tile in plan.tiles:
        if tile.reads is None:
            assert depends[tile.key] == ()
            continue
        under = {t.key for t in plan.tiles if tile.reads in t.levels and all(
            a < d and c < b for (a, b), (c, d) in zip(tile.window, t.window))}
        assert set(depends[tile.key]) == under and under
        assert all(by_key[k].stage == tile.stage - 1 for k in under)


def _zarr_source(tmp_path, ny, nx, chunks, nt=None):
    ds = make_raster(ny=ny, nx=nx, nt=nt, nan_fraction=0.05)
    enc = {"air": {"chunks": (1,) * (nt is not None) + (chunks, chunks)}}
    path = tmp_path / "src.zarr"
    ds.drop_vars("spatial_ref").to_zarr(path, zarr_format=3, consolidated=False, encoding=enc)
    return path, ds


@pytest.mark.parametrize("tile_bytes", [None, 4 * 2**20])
def test_source_read_once_and_target_read_back_only_where_a_stage_starts(tmp_path, tile_bytes):
    path, _ = _zarr_source(tmp_path, 2048, 2048, 256)
    source = CountingStore(LocalStore(str(path), read_only=True))
    ds = xr.open_zarr(source, chunks=None, consolidated=False).proj.assign_crs(spatial_ref="EPSG:4326")
    pyramid = create_pyramid(ds, levels=5, **KW)
    plan = pyramid.tile_plan(max_tile_bytes=tile_bytes)
    target = CountingStore(LocalStore(str(tmp_path / "out.zarr")))
    source.counts.reset()
    pyramid.write(target, max_tile_bytes=tile_bytes, keep_levels_in_memory=True)
    size = stored_bytes(LocalStore(str(path), read_only=True), "air")
    assert size <= source.counts.total <= 1.02 * size, (source.counts.total, size)
    read_back = {k: n for k, n in target.counts.bytes.items() if n}
    handoff = {str(level) for level in plan.handoff_levels}
    if tile_bytes is None:
        assert read_back == {} and len(plan.tiles) == 1
    else:
        assert len(plan.stages) >= 2 and handoff
        assert set(read_back) <= handoff | {MISSING_GROUP}, read_back
        # what was read back is those levels (a 4**-k share of level 0), each shard at most twice: by the
        # two tiles meeting inside it where the next level's shards do not line up with its own
        out = LocalStore(str(tmp_path / "out.zarr"))
        assert sum(read_back.get(h, 0) for h in handoff) <= 2 * sum(stored_bytes(out, f"{h}/") for h in handoff)


def test_max_tiles_is_a_hard_cap():
    ds = make_raster(ny=2000, nx=2000, nt=8)
    pyramid = create_pyramid(ds, levels=4, chunks_per_shard=1, **KW)
    assert len(pyramid.tile_plan(max_tile_bytes=1_000_000).tiles) > 40
    for cap in (40, 7, 1):
        plan = pyramid.tile_plan(max_tile_bytes=1_000_000, max_tiles=cap)
        stages = len(plan.stages)
        assert len(plan.tiles) <= max(cap, stages), (cap, len(plan.tiles))
    with pytest.raises(ValueError, match="max_tiles"):
        pyramid.tile_plan(max_tiles=0)
    with pytest.raises(ValueError, match="max_tile_bytes"):
        pyramid.tile_plan(max_tile_bytes=-1)


def _virtual(shape, dims, chunks) -> xr.Dataset:
    """A source of any size that is never read: lazy dask zeros with coordinates."""
    data = dsa.zeros(shape, dtype="float32", chunks=chunks)
    coords = {d: np.arange(n, dtype="float64") * 0.001 for d, n in zip(dims, shape) if d in ("y", "x")}
    return xr.Dataset({"v": (dims, data)}, coords=coords)


def test_planning_a_100_terabyte_source_costs_tiles_not_regions():
    """2.6M x 1.3M float32 (13.5 TB, 800,000 level-0 shards) plans in tiles capped at max_tiles, a
    tile expands to its own regions only, and the plan's fingerprint needs no regions either."""
    ds = _virtual((1_300_000, 2_600_000), ("y", "x"), (4096, 4096))
    pyramid = create_pyramid(ds, levels="auto", x_dim="x", y_dim="y", crs="EPSG:3857")
    plan = pyramid.tile_plan(max_tiles=5000)
    assert 1000 <= len(plan.tiles) <= 5000
    assert plan.fingerprint() == pyramid.tile_plan(max_tiles=5000).fingerprint()
    first = plan.tiles[0]
    regions = plan.region_plan([first])
    assert 0 < sum(lp.n_regions for lp in regions.levels) < 10_000
    assert set(plan.depends()) == {t.key for t in plan.tiles}


def _bench_like(edge: int, levels: int):
    """The benchmark's square float32 raster (512² source chunks), planned virtually."""
    return create_pyramid(_virtual((edge, edge), ("y", "x"), (512, 512)), levels=levels, x_dim="x", y_dim="y",
                          crs="EPSG:3857")


def test_what_fits_one_tile_is_one_tile_of_every_level_left():
    """A 64 MB source is one task, so is a 1 GB one with the default tiles, and with 256 MiB tiles the
    levels above the first stage of 1 GB are one task reading level 2 back: each stage more is a
    barrier and a read-back, and a tile task costs the runner a fixed time (measured: 64 tiles in 4
    stages took a 64 MB flow 10 s against 0.5 s for the core)."""
    small = _bench_like(4096, 5).tile_plan(min_tiles=4)
    assert [(t.levels, t.reads) for t in small.tiles] == [((0, 1, 2, 3, 4), None)]
    whole = _bench_like(16384, 7).tile_plan(min_tiles=4)
    assert [(t.levels, t.reads) for t in whole.tiles] == [((0, 1, 2, 3, 4, 5, 6), None)]
    plan = _bench_like(16384, 7).tile_plan(max_tile_bytes=256 * 2**20, min_tiles=4)
    last = [t for t in plan.tiles if t.stage == plan.stages[-1]]
    assert len(plan.stages) == 2 and len(last) == 1 and last[0].levels == (3, 4, 5, 6)
    assert last[0].window == ((0, 16384), (0, 16384)) and plan.source_bytes(last[0]) <= 256 * 2**20


def test_tiles_grow_to_the_budget_in_whole_multiples_of_their_shards():
    """Within ``max_tile_bytes`` a stage has the fewest tiles that keep ``min_tiles`` (not one tile per
    shard footprint), and each tile still covers whole shards of every level it writes."""
    pyramid = _bench_like(32768, 8)
    budget = 256 * 2**20
    plan = pyramid.tile_plan(max_tile_bytes=budget, min_tiles=4)
    first = [t for t in plan.tiles if t.stage == 0]
    total = sum(plan.source_bytes(t) for t in first)
    assert max(plan.source_bytes(t) for t in first) <= budget
    assert len(first) <= 2 * -(-total // budget), len(first)  # 18 tiles of 4 GB, not 36
    for t in first:
        for (level, name), box in plan.level_windows(t).items():
            unit = write_unit(plan.var(name).encodings[level])
            shape = plan.var(name).shapes[level]
            assert all(a % u == 0 and (b % u == 0 or b == n) for (a, b), u, n in zip(box, unit, shape)), (t, level)
    # min_tiles still holds where the stage had that many
    many = pyramid.tile_plan(max_tile_bytes=budget, min_tiles=30)
    assert sum(t.stage == 0 for t in many.tiles) >= 30
