"""The seed's Dask path: ``pyramid.as_datatree().to_zarr(..., encoding=pyramid.encoding)`` on a real
``dask.distributed`` LocalCluster (worker processes), on a dask-chunked and on a lazily opened source,
compared with ``Pyramid.write`` and with ``xarray.coarsen`` of the source; and the lazy levels' graph
(blocks per tile, keys), which plain dask shows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from tests.helpers.rasters import coarsen_reference, make_raster
from tests.helpers.schemas import validate_conventions
from topozarr_core import create_pyramid


@pytest.fixture(scope="module")
def cluster_client():
    """Two worker processes of one thread: tasks and their results really cross process boundaries.
    Only these tests need ``dask.distributed`` (the full venv); the others run on plain dask, which the
    core depends on."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def _source(tmp_path, ds: xr.Dataset, chunks: dict, name: str = "src.zarr"):
    path = tmp_path / name
    ds.chunk(chunks).to_zarr(path, zarr_format=3, consolidated=False)
    return path


def _fits(dask_chunks: tuple[tuple[int, ...], ...], unit: tuple[int, ...]) -> bool:
    """Every dask chunk but the last along each axis is a multiple of the write unit (shard): no
    shard is written by two dask tasks (xarray's own check, and what makes parallel writes safe)."""
    return all(c % u == 0 for axis, u in zip(dask_chunks, unit) for c in axis[:-1])


def _assert_chunks_fit_encoding(pyramid, dt: xr.DataTree) -> None:
    for group, per_var in pyramid.encoding.items():
        for name, enc in per_var.items():
            unit = enc.get("shards") or enc["chunks"]
            chunks = dt[group].ds[name].chunks
            assert chunks is not None, f"{group}/{name} is not dask-backed"
            assert _fits(chunks, unit), f"{group}/{name}: dask chunks {chunks} do not fit shards {unit}"


def _write_both(tmp_path, pyramid, client) -> tuple:
    dask_target, core_target = tmp_path / "dask.zarr", tmp_path / "core.zarr"
    dt = pyramid.as_datatree()
    _assert_chunks_fit_encoding(pyramid, dt)
    with client.as_current():
        dt.to_zarr(dask_target, zarr_format=3, consolidated=False, encoding=pyramid.encoding)
    pyramid.write(core_target)
    return dask_target, core_target


def _assert_same_levels(pyramid, dask_target, core_target, var: str) -> None:
    for level in range(pyramid.levels):
        a = zarr.open_array(dask_target, path=f"{level}/{var}", mode="r")
        b = zarr.open_array(core_target, path=f"{level}/{var}", mode="r")
        enc = pyramid.encoding[f"/{level}"][var]
        assert a.chunks == tuple(enc["chunks"]) and a.shards == tuple(enc.get("shards") or enc["chunks"])
        assert a.shape == b.shape and a.dtype == b.dtype
        # each level built from the level before with write()'s kernels: the same values, bit for bit
        np.testing.assert_array_equal(a[...], b[...])


def test_dask_chunked_source_writes_with_the_seed_lines(tmp_path, cluster_client):
    ds = make_raster(1024, 1536, seed=3)
    src = xr.open_zarr(_source(tmp_path, ds, {"lat": 128, "lon": 128}), consolidated=False)
    assert src["air"].chunks[0][0] == 128  # its own dask chunks, smaller than every level-0 shard
    pyramid = create_pyramid(src, levels=4, x_dim="lon", y_dim="lat", crs="EPSG:4326")
    assert pyramid.encoding["/0"]["air"]["shards"][0] > 128
    dask_target, core_target = _write_both(tmp_path, pyramid, cluster_client)
    _assert_same_levels(pyramid, dask_target, core_target, "air")
    for level, factor in enumerate(pyramid.factors):
        got = xr.open_zarr(dask_target, group=str(level), consolidated=False)["air"].values
        np.testing.assert_allclose(got, coarsen_reference(ds, "air", factor, "mean"), rtol=1e-6)
    root = json.loads((dask_target / "zarr.json").read_text())
    validate_conventions(root)


def test_lazily_opened_source_with_missing_data_and_a_time_dim(tmp_path, cluster_client):
    ds = make_raster(512, 768, nt=3, nan_fraction=0.05, seed=4)
    src = xr.open_zarr(_source(tmp_path, ds, {"time": 1, "lat": 128, "lon": 128}), consolidated=False, chunks=None)
    assert src["air"].chunks is None
    pyramid = create_pyramid(src, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326")
    dask_target, core_target = _write_both(tmp_path, pyramid, cluster_client)
    _assert_same_levels(pyramid, dask_target, core_target, "air")
    for level, factor in enumerate(pyramid.factors):
        got = xr.open_zarr(dask_target, group=str(level), consolidated=False)["air"].values
        np.testing.assert_allclose(got, coarsen_reference(ds, "air", factor, "mean"), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("method", ["max", "nearest"])
def test_other_methods_on_the_cluster(tmp_path, cluster_client, method):
    ds = make_raster(640, 512, seed=5)
    src = xr.open_zarr(_source(tmp_path, ds, {"lat": 160, "lon": 128}), consolidated=False)
    pyramid = create_pyramid(src, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326", method=method)
    dask_target, core_target = _write_both(tmp_path, pyramid, cluster_client)
    for level in range(pyramid.levels):
        a = zarr.open_array(dask_target, path=f"{level}/air", mode="r")[...]
        b = zarr.open_array(core_target, path=f"{level}/air", mode="r")[...]
        np.testing.assert_array_equal(a, b)  # max and nearest compose exactly


def test_the_seed_lines_keep_integer_nodata_and_dtype(tmp_path):
    """`to_zarr(..., encoding=pyramid.encoding)` replaces each variable's encoding, so an entry of a variable
    with nodata carries its ``fill_value`` (and ``as_datatree`` the dtype and ``_FillValue``): an int16 DEM's
    zarr fill_value is its nodata value (-9999) at every level, as in ``Pyramid.write``, not zarr's default 0
    (which viewers would draw as data)."""
    import zarr

    ny = nx = 256
    dem = (np.arange(ny * nx, dtype="int16").reshape(ny, nx) % 1000).astype("int16")
    dem[:10, :10] = -9999
    ds = xr.Dataset({"dem": (("y", "x"), dem, {"_FillValue": -9999})},  # an undecoded DEM: nodata in the attrs
                    coords={"y": np.arange(ny) * -30.0, "x": np.arange(nx) * 30.0})
    pyramid = create_pyramid(ds.chunk({"y": 128, "x": 128}), levels=3, x_dim="x", y_dim="y", crs="EPSG:32616")
    pyramid.as_datatree().to_zarr(tmp_path / "dask.zarr", zarr_format=3, consolidated=False,
                                  encoding=pyramid.encoding)
    pyramid.write(tmp_path / "core.zarr")
    for level in range(3):
        a, b = (zarr.open_array(tmp_path / name / str(level) / "dem") for name in ("dask.zarr", "core.zarr"))
        assert (a.dtype, a.fill_value) == (b.dtype, b.fill_value) == (np.dtype("int16"), -9999)
        np.testing.assert_array_equal(a[:], b[:])  # the same level-to-level rounding as write()
    pyramid.encoding["/1"]["dem"]["_FillValue"] = 0
    with pytest.raises(ValueError, match=r"pyramid.encoding\['/1'\]\['dem'\]\['_FillValue'\] cannot be edited"):
        pyramid.as_datatree()


def test_the_seed_lines_read_the_source_once(tmp_path):
    """Each level is built from the level before in one dask computation: the source's chunks are read
    once in all (not once per level, as when every level was a coarsen of the source)."""
    from zarr.storage import LocalStore

    from topozarr_core.testing import CountingStore, stored_bytes

    ds = make_raster(1024, 1536, nan_fraction=0.05, seed=6)
    path = _source(tmp_path, ds, {"lat": 256, "lon": 256})
    source = CountingStore(LocalStore(str(path), read_only=True))
    src = xr.open_zarr(source, consolidated=False)
    pyramid = create_pyramid(src, levels=5, x_dim="lon", y_dim="lat", crs="EPSG:4326")
    source.counts.reset()
    import dask

    with dask.config.set(scheduler="threads"):  # in this process, where the counts are (not the cluster's)
        pyramid.as_datatree().to_zarr(tmp_path / "dask.zarr", zarr_format=3, consolidated=False,
                                      encoding=pyramid.encoding)
    size = stored_bytes(LocalStore(str(path), read_only=True), "air")
    assert size <= source.counts.bytes["air"] <= 1.02 * size, (source.counts.bytes["air"], size)
    pyramid.write(tmp_path / "core.zarr")
    _assert_same_levels(pyramid, tmp_path / "dask.zarr", tmp_path / "core.zarr", "air")


def test_two_pyramids_in_one_graph_keep_their_own_levels():
    """Two sources of one shape give lazy levels with different keys: computed in one graph, each
    level holds its own source's values (fixed key names made the second pyramid's level 1 the first's)."""
    import dask

    a = make_raster(ny=256, nx=256, seed=1).chunk({"lat": 128, "lon": 128})
    b = make_raster(ny=256, nx=256, seed=2).chunk({"lat": 128, "lon": 128})
    kw = dict(levels=2, x_dim="lon", y_dim="lat", crs="EPSG:4326", chunks_per_shard=1)
    ta, tb = create_pyramid(a, **kw).as_datatree(), create_pyramid(b, **kw).as_datatree()
    la, lb = ta["1"].ds.air.data, tb["1"].ds.air.data
    assert la.name != lb.name
    got_a, got_b = dask.compute(la, lb, scheduler="sync")
    np.testing.assert_allclose(got_a, coarsen_reference(a.compute(), "air", 2, "mean"), rtol=1e-6)
    np.testing.assert_allclose(got_b, coarsen_reference(b.compute(), "air", 2, "mean"), rtol=1e-6)


def _tile_grid(plan, name: str, stage: int) -> tuple[int, ...]:
    tiles = [t for t in plan.tiles if t.stage == stage and name in t.variables]
    return tuple(len({t.window[d] for t in tiles}) for d in range(len(tiles[0].window)))


@pytest.mark.parametrize("lazy", [False, True], ids=["dask-chunked", "lazily-opened"])
def test_tiles_as_dask_blocks_on_the_cluster(tmp_path, cluster_client, lazy):
    """With small tiles (several stages of several tiles, odd edges, a time dim, missing data and a
    second variable), each level's dask blocks are its stage's tiles, and the seed's lines on worker
    processes write what ``Pyramid.write`` writes, bit for bit."""
    ds = make_raster(1000, 1530, nt=2, nan_fraction=0.05, seed=7)
    ds["wind"] = (ds["air"] * 0.5).astype("float64")
    import dask

    with dask.config.set(scheduler="threads"):  # the source is written here, not shipped to the cluster
        path = _source(tmp_path, ds, {"time": 1, "lat": 100, "lon": 90})
    src = xr.open_zarr(path, consolidated=False, chunks=None if lazy else {})
    pyramid = create_pyramid(src, levels=5, x_dim="lon", y_dim="lat", crs="EPSG:4326", chunks_per_shard=1)
    kw = dict(max_tile_bytes=400_000, min_tiles=2)
    plan = pyramid.tile_plan(**kw)
    assert len(plan.stages) >= 2 and len([t for t in plan.tiles if t.stage == 0]) > 4, plan.summary()
    dt = pyramid.as_datatree(**kw)
    _assert_chunks_fit_encoding(pyramid, dt)
    for name in ("air", "wind"):
        for tile in (t for t in plan.tiles if name in t.variables):
            for lvl in tile.levels:  # a level's blocks: the tiles of the stage that writes it
                assert dt[str(lvl)].ds[name].data.numblocks == _tile_grid(plan, name, tile.stage), (name, lvl)
    dask_target, core_target = tmp_path / "dask.zarr", tmp_path / "core.zarr"
    with cluster_client.as_current():
        dt.to_zarr(dask_target, zarr_format=3, consolidated=False, encoding=pyramid.encoding)
    pyramid.write(core_target)
    for name in ("air", "wind"):
        _assert_same_levels(pyramid, dask_target, core_target, name)


def test_a_task_per_tile_not_per_shard():
    """A 1024 x 1536 source in 128-pixel chunks fits one tile: every level is one dask block, written
    by one task (it was one block per shard: 6 at level 0, 1 task per 1 MiB at scale)."""
    src = make_raster(1024, 1536, seed=8).chunk({"lat": 128, "lon": 128})
    pyramid = create_pyramid(src, levels=4, x_dim="lon", y_dim="lat", crs="EPSG:4326")
    shards = pyramid.encoding["/0"]["air"]["shards"]
    assert -(-1024 // shards[0]) * -(-1536 // shards[1]) > 1
    dt = pyramid.as_datatree()
    for level in range(pyramid.levels):
        assert dt[str(level)].ds["air"].data.numblocks == (1, 1), level
    with pytest.raises(ValueError, match="min_tiles must be a positive int"):
        pyramid.as_datatree(min_tiles=0)
    with pytest.raises(ValueError, match="max_tile_bytes must be a positive int"):
        pyramid.as_datatree(max_tile_bytes=-1)


# -- which encoder the seed's lines use: zarrs on local targets, as write's io="auto" ------------------


def _count_zarrs_writes() -> None:
    """Run in a process: count the writes of the pipeline the seed's lines use on local targets."""
    from topozarr_core.write.zarrs_pipeline import OsErrorZarrsPipeline

    if not hasattr(OsErrorZarrsPipeline, "counted"):
        original = OsErrorZarrsPipeline.write

        async def write(self, *args, **kwargs):
            OsErrorZarrsPipeline.counted += 1
            return await original(self, *args, **kwargs)

        OsErrorZarrsPipeline.write = write
    OsErrorZarrsPipeline.counted = 0


def _zarrs_writes() -> int:
    from topozarr_core.write.zarrs_pipeline import OsErrorZarrsPipeline

    return OsErrorZarrsPipeline.counted


def test_the_seed_lines_encode_a_local_target_with_zarrs_on_the_workers(tmp_path, cluster_client):
    """The arrays ``to_zarr`` opens in the client carry zarrs to the worker processes, which write the
    levels through it; the time coordinate (datetime64, which zarrs does not encode) falls back to
    zarr-python; the values are ``write``'s and zarr's config is back to its default after."""
    ds = make_raster(512, 768, nt=2, seed=6)
    src = xr.open_zarr(_source(tmp_path, ds, {"time": 1, "lat": 128, "lon": 128}), consolidated=False, chunks=None)
    pyramid = create_pyramid(src, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326")
    cluster_client.run(_count_zarrs_writes)
    dask_target, core_target = _write_both(tmp_path, pyramid, cluster_client)
    assert sum(cluster_client.run(_zarrs_writes).values()) >= pyramid.levels  # every level's shards
    assert zarr.config.get("codec_pipeline.path") == "zarr.core.codec_pipeline.BatchedCodecPipeline"
    _assert_same_levels(pyramid, dask_target, core_target, "air")
    np.testing.assert_array_equal(xr.open_zarr(dask_target, group="0", consolidated=False)["time"].values,
                                  ds["time"].values)


def test_the_seed_lines_keep_zarr_python_off_local_targets_and_the_users_choice(tmp_path, monkeypatch):
    """Memory and Icechunk stores (which zarrs does not serve) and a pipeline the user chose in zarr's
    config are left alone; a local target gets zarrs; a failing ``to_zarr`` restores zarr's config."""
    import dask

    icechunk = pytest.importorskip("icechunk")
    import zarrs  # noqa: F401  (registers zarrs' own pipeline, the user's choice below)

    from topozarr_core.write.zarrs_pipeline import OsErrorZarrsPipeline

    pyramid = create_pyramid(make_raster(256, 256, seed=7), levels=2, x_dim="lon", y_dim="lat", crs="EPSG:4326")
    lines = {"zarr_format": 3, "consolidated": False, "encoding": pyramid.encoding}
    calls = []
    original = OsErrorZarrsPipeline.write

    async def write(self, *args, **kwargs):
        calls.append(1)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(OsErrorZarrsPipeline, "write", write)
    with dask.config.set(scheduler="synchronous"):  # in this process, where the writes are counted
        session = icechunk.Repository.create(icechunk.in_memory_storage()).writable_session("main")
        pyramid.as_datatree().to_zarr(session.store, **lines)
        pyramid.as_datatree().to_zarr(zarr.storage.MemoryStore(), **lines)
        with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
            pyramid.as_datatree().to_zarr(tmp_path / "users.zarr", **lines)
        assert not calls
        pyramid.as_datatree().to_zarr(tmp_path / "local.zarr", **lines)
        assert calls
        with pytest.raises(FileExistsError):  # xarray refuses to replace an existing group
            pyramid.as_datatree().to_zarr(tmp_path / "local.zarr", mode="w-", **lines)
    assert zarr.config.get("codec_pipeline.path") == "zarr.core.codec_pipeline.BatchedCodecPipeline"
