"""Derived level documents equal what xarray writes for the same level, key by key."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import xarray as xr
from zarr.buffer import default_buffer_prototype

from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid
from topozarr_core.layout import level_documents as level_docs
from topozarr_core.layout.level_documents import LevelDocuments, build_level


def _xarray_level(ds: xr.Dataset, spec, level: int) -> dict[str, bytes]:
    keys = build_level(ds, spec, level) | level_docs.create_missing(spec, level)
    return {k: v.to_bytes() for k, v in keys.items()}


def _staged(docs: LevelDocuments, level: int) -> dict[str, bytes]:
    """Every key of the staged store and its bytes."""
    return _all_keys(docs.staged(level))


def _all_keys(store) -> dict[str, bytes]:
    """Every key of a store and its bytes, through the store's public (async) API."""

    async def read_all() -> dict[str, bytes]:
        proto = default_buffer_prototype()
        return {k: (await store.get(k, prototype=proto)).to_bytes() async for k in store.list()}

    return asyncio.run(read_all())


def _assert_same(got: dict[str, bytes], want: dict[str, bytes], level: int) -> None:
    scoped = lambda d: {k: v for k, v in d.items() if k.startswith((f"{level}/", "_topozarr_missing/"))}  # noqa: E731
    got, want = scoped(got), scoped(want)
    assert sorted(got) == sorted(want)
    for key in want:
        if key.endswith("zarr.json"):
            assert json.loads(got[key]) == json.loads(want[key]), key
        else:
            assert got[key] == want[key], key


def _count_xarray_builds(monkeypatch) -> list[int]:
    built: list[int] = []
    real = level_docs.build_level

    def counting(ds, spec, level):
        built.append(level)
        return real(ds, spec, level)

    monkeypatch.setattr(level_docs, "build_level", counting)
    return built


def _time_raster() -> xr.Dataset:
    ds = make_raster(96, 128, nt=3, nan_fraction=0.05)
    ds["time"].encoding.update({"units": "days since 2000-01-01", "calendar": "standard"})
    ds["weight"] = ("time", np.array([1.0, 2.0, 3.0]), {"units": "1"})
    return ds


def _aux_coords_raster() -> xr.Dataset:
    ds = make_raster(128, 160, nan_fraction=0.05)
    lat2d, lon2d = xr.broadcast(ds["lat"], ds["lon"])
    return ds.assign_coords(lat2d=lat2d.astype("float64"), lon2d=(lon2d * 2).astype("float32"), height=2.0)


CASES = {
    "2d mean with NaN": (lambda: make_raster(160, 224, nan_fraction=0.1), dict(levels=5)),
    "3d time, non-spatial var": (_time_raster, dict(levels=4)),
    "int16 sum widens": (lambda: make_raster(128, 128, dtype="int16"), dict(levels=4, method="sum")),
    "uint8 nearest": (lambda: make_raster(128, 160, dtype="uint8"), dict(levels=4, method="nearest")),
    "factors 1,3,9,27": (lambda: make_raster(270, 270, nan_fraction=0.02), dict(factors=[1, 3, 9, 27])),
    "no sharding": (lambda: make_raster(128, 128), dict(levels=4, chunks_per_shard=None)),
    "2-D auxiliary and scalar coords": (_aux_coords_raster, dict(levels=4)),
    "ascending y, float64": (lambda: make_raster(128, 96, dtype="float64", descending_y=False), dict(levels=4)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_derived_levels_equal_xarray_levels(case, monkeypatch):
    make, kw = CASES[case]
    ds = make()
    spec = create_pyramid(ds, x_dim="lon", y_dim="lat", target_chunk_bytes=16 * 1024, **kw).spec
    want = {lvl: _xarray_level(ds, spec, lvl) for lvl in range(len(spec.factors))}
    built = _count_xarray_builds(monkeypatch)
    docs = LevelDocuments(ds, spec)
    for lvl in range(len(spec.factors)):
        _assert_same(_staged(docs, lvl), want[lvl], lvl)
    # xarray built only the levels whose variable dtypes no built level shares
    dtypes = {tuple(v.level_dtype(lvl) for v in spec.variables) for lvl in range(len(spec.factors))}
    assert len(built) == len(dtypes)


STAGING_CASES = {**CASES, "many shards": (lambda: make_raster(512, 640, nan_fraction=0.05),
                                           dict(levels=4, chunks_per_shard=2))}


@pytest.mark.parametrize("case", list(STAGING_CASES))
def test_staging_in_one_block_writes_what_the_write_unit_template_writes(case):
    """Staging builds a level from a one-block placeholder (its dask graph is one task, not one per
    shard); xarray must write the same documents and coordinate chunks as for the level's template
    chunked by the write unit (``Pyramid.level_templates``)."""
    import zarr

    from topozarr_core.layout.level_dataset import level_dataset, template_data

    make, kw = STAGING_CASES[case]
    ds = make()
    spec = create_pyramid(ds, x_dim="lon", y_dim="lat", target_chunk_bytes=16 * 1024, **kw).spec
    blocks = []
    for lvl in range(len(spec.factors)):
        tmpl, encoding = level_dataset(ds, spec, lvl, template_data)
        blocks += [tmpl[v.name].data.npartitions for v in spec.variables]
        store = zarr.storage.MemoryStore()
        tmpl.to_zarr(store, group=str(lvl), mode="w", compute=False, zarr_format=3, consolidated=False,
                     encoding=encoding)
        want = _all_keys(store)
        got = {k: v.to_bytes() for k, v in build_level(ds, spec, lvl).items()}
        _assert_same(got, want, lvl)
    if case == "many shards":
        assert max(blocks) > 1  # the template is several blocks where the staging placeholder is one


def test_carried_variable_along_one_spatial_dim_goes_to_xarray(monkeypatch):
    ds = make_raster(128, 160)
    ds["lon_weight"] = ("lon", np.linspace(0.0, 1.0, 160))
    spec = create_pyramid(ds, levels=4, x_dim="lon", y_dim="lat").spec
    want = {lvl: _xarray_level(ds, spec, lvl) for lvl in range(4)}
    built = _count_xarray_builds(monkeypatch)
    docs = LevelDocuments(ds, spec)
    for lvl in range(4):
        _assert_same(_staged(docs, lvl), want[lvl], lvl)
    assert built == [0, 1, 2, 3]


def test_written_pyramid_reads_back_with_derived_levels(tmp_path):
    ds = make_raster(200, 256, nan_fraction=0.05)
    p = create_pyramid(ds, levels=4, x_dim="lon", y_dim="lat")
    p.write(tmp_path / "p.zarr")
    for lvl in range(1, 4):
        got = xr.open_zarr(tmp_path / "p.zarr", group=str(lvl), consolidated=False)
        ref = ds.coarsen(lat=2**lvl, lon=2**lvl, boundary="trim").mean()
        np.testing.assert_allclose(got["lon"].values, ref["lon"].values, atol=1e-9)
        np.testing.assert_allclose(got["lat"].values, ref["lat"].values, atol=1e-9)
        np.testing.assert_allclose(got["air"].values, ref["air"].values, rtol=1e-6)
        assert got["air"].attrs["units"] == "K"
