"""Issue #24, items 1, 2 and 11: ``pyramid.encoding`` and ``recommend_encoding`` are topozarr 0.2.1's.

``topozarr_0_2_1_layouts.json`` holds what topozarr 0.2.1 (with zarrs) returned for each recipe below:
its ``create_pyramid(...).encoding`` at every level and its ``recommend_encoding`` of the source,
measured by running the same recipes against it. This project must return the same dicts: balanced
chunks, whole-chunk shards, the byte-budget widening of non-spatial dims, shards that divide a dask
source's chunks, no snapping when variables disagree, entries for variables over one spatial dim and
for long 1-D coordinates. The written arrays then use them, on both write paths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
import zarr

from topozarr_core import create_pyramid, recommend_encoding
from topozarr_core.layout.level_dataset import NO_NODATA_FILL

MEASURED = json.loads((Path(__file__).parent / "topozarr_0_2_1_layouts.json").read_text())
XY = dict(x_dim="lon", y_dim="lat")


def raster(shape: tuple[int, ...], dtype: str = "f4", dims: tuple[str, ...] | None = None,
           chunks: tuple[int, ...] | None = None) -> xr.Dataset:
    """A never-computed raster ("air"): dask zeros when ``chunks`` is given, else a read-only broadcast."""
    dims = dims or (("lat", "lon") if len(shape) == 2 else tuple(f"d{i}" for i in range(len(shape) - 2))
                    + ("lat", "lon"))
    data = (dsa.zeros(shape, dtype=dtype, chunks=chunks) if chunks is not None
            else np.broadcast_to(np.zeros(1, dtype=dtype), shape))
    ds = xr.Dataset({"air": (dims, data)})
    ny, nx = shape[dims.index("lat")], shape[dims.index("lon")]
    ds = ds.assign_coords(lat=np.linspace(80, -80, ny), lon=np.linspace(-170, 170, nx))
    return ds.proj.assign_crs(spatial_ref="EPSG:4326")


def _with(ds: xr.Dataset, **variables) -> xr.Dataset:
    for name, value in variables.items():
        ds[name] = value
    return ds


def _zeros(shape, dtype="f4"):
    return np.broadcast_to(np.zeros(1, dtype=dtype), shape)


#: name -> (dataset builder, create_pyramid options); the names are the keys of the measured file
RECIPES: dict[str, tuple[Callable[[], xr.Dataset], dict]] = {
    **{f"f4_{n}": ((lambda n=n: raster((n, n))), {}) for n in
       (2000, 1000, 500, 2048, 363, 362, 700, 724, 725, 129, 128, 100, 20000)},
    "sparse_2048": (lambda: raster((2048, 2048)), {"factors": [1, 4, 16]}),
    "cps16_1500": (lambda: raster((1500, 1500)), {"chunks_per_shard": 16}),
    "dem_i2_1002x802": (lambda: raster((1002, 802), "i2"), {}),
    "rect_f4_300x5000": (lambda: raster((300, 5000)), {}),
    **{f"{dt}_3000": ((lambda dt=dt: raster((3000, 3000), dt)), {}) for dt in
       ("u1", "i1", "i2", "u2", "i4", "u4", "f2", "f8", "i8", "u8")},
    **{f"cps{c}_3000": ((lambda: raster((3000, 3000))), {"chunks_per_shard": c}) for c in (1, 2, 8, 16, 32, None)},
    "tcb_100k_3000": (lambda: raster((3000, 3000)), {"target_chunk_bytes": 100_000}),
    "tcb_512000_3000": (lambda: raster((3000, 3000)), {"target_chunk_bytes": 512_000}),
    "air_2920x25x53": (lambda: raster((2920, 25, 53)), {"levels": 2}),
    "band3_1000": (lambda: raster((3, 1000, 1000)), {}),
    "t10_300": (lambda: raster((10, 300, 300)), {}),
    "t200_300": (lambda: raster((200, 300, 300)), {}),
    "t5b4_700": (lambda: raster((5, 4, 700, 700)), {}),
    "t2_3000": (lambda: raster((2, 3000, 3000)), {}),
    "t40_64x80_cps1": (lambda: raster((40, 64, 80)), {"chunks_per_shard": 1}),
    **{f"dask_f4_4096_c{c}": ((lambda c=c: raster((4096, 4096), chunks=(c, c))), {}) for c in
       (512, 1024, 2000, 100, 1000, 256, 300, 750, 4096)},
    "dask_f4_4096_c512x1024": (lambda: raster((4096, 4096), chunks=(512, 1024)), {}),
    "dask_i2_4000_c1000": (lambda: raster((4000, 4000), "i2", chunks=(1000, 1000)), {}),
    "dask_u1_4096_c2048": (lambda: raster((4096, 4096), "u1", chunks=(2048, 2048)), {}),
    "dask_t_20x2000_c5x500": (lambda: raster((20, 2000, 2000), chunks=(5, 500, 500)), {}),
    "dask_t_300x500_c7x500": (lambda: raster((300, 500, 500), chunks=(7, 500, 500)), {}),
    "dask_cps16_c1000": (lambda: raster((4096, 4096), chunks=(1000, 1000)), {"chunks_per_shard": 16}),
    "dask_cpsNone_c1000": (lambda: raster((4096, 4096), chunks=(1000, 1000)), {"chunks_per_shard": None}),
    "dask_f3_c750": (lambda: raster((3000, 3000), chunks=(750, 750)), {"factors": [1, 3, 9]}),
    # variables whose source chunks disagree (or one unchunked): nothing snaps
    "dask_disagree": (lambda: _with(raster((4096, 4096), chunks=(512, 512)),
                                    b=(("lat", "lon"), dsa.zeros((4096, 4096), dtype="f4", chunks=(1024, 1024)))), {}),
    "dask_mixed_unchunked": (lambda: _with(raster((4096, 4096), chunks=(512, 512)),
                                           b=(("lat", "lon"), _zeros((4096, 4096)))), {}),
    # variables over one spatial dim, long coordinates, variables over none
    "long_lon_profile": (lambda: _with(raster((4, 64, 200_000), dims=("time", "lat", "lon")),
                                       profile=(("time", "lon"), _zeros((4, 200_000))),
                                       col=(("lat",), np.zeros(64, "f8")), scalar=((), 1.0),
                                       tser=(("time",), np.zeros(4))), {}),
    "profile_lat_3000": (lambda: _with(raster((3000, 3000)), profile=(("lat",), np.zeros(3000, "f4"))), {}),
    "long_lat_70000": (lambda: raster((70000, 300)), {}),
}


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x.item() if isinstance(x, np.generic) else x


def _topozarr_keys(encoding: dict, ds: xr.Dataset) -> dict:
    """``encoding`` without the ``fill_value`` this project adds to integer variables without nodata
    (netCDF's default fill, so that zarr-layer and GDAL do not take real zeros for nodata: a deliberate
    difference, see the README); each such entry is checked to be that value."""
    out = {}
    for group, entries in encoding.items():
        out[group] = {}
        for name, entry in entries.items():
            entry = dict(entry)
            src = ds[name] if name in ds.variables else None
            declared = src is not None and ("_FillValue" in src.attrs or "_FillValue" in src.encoding)
            if src is not None and src.dtype.kind in "iu" and not declared and "fill_value" in entry:
                assert entry.pop("fill_value") == NO_NODATA_FILL[src.dtype.name], (group, name)
            out[group][name] = entry
    return out


def test_every_measured_recipe_is_here():
    assert set(RECIPES) == set(MEASURED) and len(RECIPES) == 64


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_encoding_is_topozarrs(name):
    build, options = RECIPES[name]
    ds = build()
    opts = {"levels": 3, **options} if "factors" not in options else dict(options)
    pyramid = create_pyramid(ds, **opts, **XY)
    assert _plain(_topozarr_keys(pyramid.encoding, ds)) == MEASURED[name]["encoding"]
    rec = recommend_encoding(ds, **XY, **{k: v for k, v in options.items()
                                          if k in ("chunks_per_shard", "target_chunk_bytes")})
    assert _plain(_topozarr_keys({"/0": rec}, ds)["/0"]) == MEASURED[name]["recommend"]
    assert pyramid.encoding["/0"] == rec  # topozarr's test_pyramid_level0_encoding_matches_recommend_encoding


def test_named_layouts_of_the_issue():
    """The recipes the issue quotes, spelled out."""
    layout = {name: MEASURED[name]["encoding"] for name in
              ("sparse_2048", "cps16_1500", "dem_i2_1002x802", "air_2920x25x53", "f4_2000", "f4_1000", "f4_500")}
    assert layout["sparse_2048"]["/0"]["air"] == {"chunks": [342, 342], "shards": [1368, 1368]}
    assert layout["cps16_1500"]["/0"]["air"] == {"chunks": [300, 300], "shards": [1500, 1500]}
    assert layout["dem_i2_1002x802"]["/0"]["air"]["chunks"] == [501, 401]
    assert layout["air_2920x25x53"]["/0"]["air"] == {"chunks": [1, 25, 53], "shards": [128, 25, 53]}
    assert [layout[f"f4_{n}"]["/0"]["air"]["chunks"][0] for n in (2000, 1000, 500)] == [334, 334, 250]
    for name in layout:
        build, options = RECIPES[name]
        opts = {"levels": 3, **options} if "factors" not in options else dict(options)
        ds = build()
        assert _plain(_topozarr_keys(create_pyramid(ds, **opts, **XY).encoding, ds)) == layout[name]


def _side_source() -> xr.Dataset:
    """A raster with a 70000-px long x axis (its coordinate takes two chunks), a variable over (time, lon)
    and one over lat only."""
    rng = np.random.default_rng(2)
    ds = xr.Dataset({"air": (("time", "lat", "lon"), rng.normal(size=(2, 4, 70_000)).astype("f4"))},
                    coords={"time": [0, 1], "lat": np.linspace(10, -10, 4), "lon": np.arange(70_000) * 0.01})
    ds["profile"] = (("time", "lon"), rng.normal(size=(2, 70_000)).astype("f4"))
    ds["col"] = (("lat",), np.arange(4.0))
    return ds.proj.assign_crs(spatial_ref="EPSG:4326")


def test_side_variables_are_written_with_their_entries(tmp_path):
    ds = _side_source()
    pyramid = create_pyramid(ds, levels=2, **XY)
    enc = _plain(pyramid.encoding)
    # topozarr 0.2.1's plan and written chunks for this dataset, measured
    assert enc["/0"]["lon"] == {"chunks": [35000]} and "lon" not in enc["/1"]  # 35000 f8 fit one chunk
    assert enc["/0"]["profile"] == enc["/1"]["profile"] == {"chunks": [1, 361], "shards": [2, 1444]}
    assert enc["/0"]["col"] == {"chunks": [4], "shards": [4]} and enc["/1"]["col"] == {"chunks": [2], "shards": [2]}
    pyramid.write(tmp_path / "w.zarr")
    pyramid.as_datatree().to_zarr(tmp_path / "dt.zarr", zarr_format=3, consolidated=False,
                                  encoding=pyramid.encoding)
    for target in ("w.zarr", "dt.zarr"):
        lon = zarr.open_array(tmp_path / target, path="0/lon", mode="r")
        assert (lon.chunks, lon.shards) == ((35000,), None)
        np.testing.assert_array_equal(lon[:], ds.lon.values)
        prof = zarr.open_array(tmp_path / target, path="0/profile", mode="r")
        assert (prof.chunks, prof.shards) == ((1, 361), (2, 1444))
        np.testing.assert_array_equal(prof[:], ds.profile.values)
        prof1 = zarr.open_array(tmp_path / target, path="1/profile", mode="r")
        assert (prof1.chunks, prof1.shards) == ((1, 361), (2, 1444))
        col = zarr.open_array(tmp_path / target, path="0/col", mode="r")
        assert (col.chunks, col.shards) == ((4,), (4,))
        assert zarr.open_array(tmp_path / target, path="1/lon", mode="r").chunks == (17500,)  # zarr's own choice


def test_side_entries_can_be_edited_and_are_checked(tmp_path):
    ds = _side_source()
    pyramid = create_pyramid(ds, levels=2, **XY)
    pyramid.encoding["/0"]["lon"] = {"chunks": (10000,)}
    pyramid.encoding["/1"]["profile"] = {"chunks": (1, 1000), "shards": (2, 5000)}
    del pyramid.encoding["/0"]["col"]  # no entry: one chunk, as xarray writes it
    pyramid.write(tmp_path / "p.zarr")
    assert zarr.open_array(tmp_path / "p.zarr", path="0/lon", mode="r").chunks == (10000,)
    prof = zarr.open_array(tmp_path / "p.zarr", path="1/profile", mode="r")
    assert (prof.chunks, prof.shards) == ((1, 1000), (2, 5000))
    assert zarr.open_array(tmp_path / "p.zarr", path="0/col", mode="r").shards is None
    pyramid.encoding["/1"]["profile"]["shards"] = (2, 1500)
    with pytest.raises(ValueError, match=r"\['/1'\]\['profile'\]\['shards'\] \(2, 1500\) is not a multiple of chunks"):
        pyramid.write(tmp_path / "q.zarr")
    assert not (tmp_path / "q.zarr").exists()


def test_nodata_entries_keep_the_fill_value_on_the_dask_path(tmp_path):
    """A variable whose nodata is not NaN keeps ``fill_value`` in its entries (recommend_encoding's too),
    so the seed's Dask lines mark nodata in the zarr fill_value as write() does."""
    dem = np.arange(256 * 256, dtype="int16").reshape(256, 256) % 1000
    dem[:10, :10] = -9999
    ds = xr.Dataset({"dem": (("lat", "lon"), dem, {"_FillValue": -9999})},
                    coords={"lat": np.arange(256.0), "lon": np.arange(256.0)}).proj.assign_crs(spatial_ref="EPSG:4326")
    pyramid = create_pyramid(ds, levels=2, **XY)
    assert pyramid.encoding["/0"]["dem"] == {"chunks": (256, 256), "shards": (256, 256), "fill_value": -9999}
    assert pyramid.encoding["/0"] == recommend_encoding(ds, **XY)
    pyramid.as_datatree().to_zarr(tmp_path / "dt.zarr", zarr_format=3, consolidated=False, encoding=pyramid.encoding)
    for lvl in range(2):
        meta = json.loads((tmp_path / "dt.zarr" / str(lvl) / "dem" / "zarr.json").read_text())
        assert (meta["data_type"], meta["fill_value"], meta["attributes"]["_FillValue"]) == ("int16", -9999, -9999)
