"""Issue #15, data and metadata: what a topozarr user gets is what topozarr gives (dtypes, datasets
without spatial coordinates, global attributes), and where this project is more correct it stays
so (exact level-0 coordinates, CF-packed integers stored packed, integer nodata as the zarr fill
value, no scratch data in a published pyramid).

References are independent of the code under test: ``xarray.coarsen`` of the source (or of the
previous written level for the level-to-level methods), numpy window modes, the raw integers of a
NetCDF file read with ``decode_cf=False``, and the convention JSON schemas.
"""

from __future__ import annotations

import json

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.levels import assert_exact_means, read_level, root_nodes
from tests.helpers.rasters import make_raster
from tests.helpers.schemas import validate_conventions
from topozarr_core import create_pyramid, recommend_encoding, update_pyramid
from topozarr_core.kernels.reduce import METHODS, block_reduce
from topozarr_core.layout.paths import MISSING_GROUP
from topozarr_core.validate.pyramid import validate_pyramid

KW = dict(x_dim="lon", y_dim="lat")


def _root(path) -> dict:
    return json.loads((path / "zarr.json").read_text())


# -- dtypes topozarr accepts: int8, uint32, uint64, float16 ----------------------------------------


def _window_mode(values: np.ndarray, f: int, fill, majority: bool) -> np.ndarray:
    """Numpy reference of ``mode``/``majority`` over f x f windows (ties -> smallest value)."""
    ny, nx = values.shape[-2] // f, values.shape[-1] // f
    out = np.empty(values.shape[:-2] + (ny, nx), dtype=values.dtype)
    for idx in np.ndindex(*out.shape):
        *lead, y, x = idx
        win = values[tuple(lead) + (slice(y * f, y * f + f), slice(x * f, x * f + f))].ravel()
        valid = win[~np.isnan(win)] if win.dtype.kind == "f" else win
        if fill is not None:
            valid = valid[valid != fill]
        if valid.size == 0:
            out[idx] = fill if fill is not None else np.nan
            continue
        uniq, counts = np.unique(valid, return_counts=True)  # sorted: argmax picks the smallest on ties
        best = int(np.argmax(counts))
        out[idx] = fill if majority and 2 * counts[best] <= valid.size else uniq[best]
    return out


def _blocks(a: np.ndarray, f: int) -> np.ndarray:
    """(ny // f, nx // f, f * f) windows of a 2-D array (trimmed)."""
    ny, nx = a.shape[0] // f, a.shape[1] // f
    return a[: ny * f, : nx * f].reshape(ny, f, nx, f).transpose(0, 2, 1, 3).reshape(ny, nx, f * f)


def _weighted_step(prev: np.ndarray, level0: np.ndarray, fill, f_prev: int) -> np.ndarray:
    """Reference of an integer mean level built from the (rounded) level before: each pixel of the
    level before weighs as many valid level-0 pixels as it stands for; rounded half to even."""
    weight = _blocks(level0 != fill, f_prev).sum(-1).astype("f8")
    values = np.where(weight > 0, prev.astype("f8"), 0.0)
    num, den = _blocks(values * weight, 2).sum(-1), _blocks(weight, 2).sum(-1)
    with np.errstate(invalid="ignore"):
        mean = num / den
    return np.where(den > 0, np.rint(mean), fill).astype(prev.dtype)


def _dtype_source(dtype: str) -> xr.Dataset:
    rng = np.random.default_rng(7)
    ny, nx = 40, 48
    if dtype == "f2":
        values = rng.normal(50, 20, (ny, nx)).astype("f2")
        values[rng.random((ny, nx)) < 0.05] = np.nan
        values[:8, :8] = np.nan  # whole windows missing at every level
        attrs = {}
    else:
        info = np.iinfo(dtype)
        lo, hi = (max(info.min, -100), min(info.max, 100)) if dtype == "i1" else (0, 2**31 if dtype == "u8" else 5000)
        values = rng.integers(lo, hi, (ny, nx)).astype(dtype)
        values[:, :6] = rng.integers(0, 3, (ny, 6)).astype(dtype)  # few distinct values: real modes
        fill = -128 if dtype == "i1" else 2**62 if dtype == "u8" else info.max  # exact in float64 references
        values[rng.random((ny, nx)) < 0.05] = fill
        values[:8, :8] = fill
        attrs = {"_FillValue": fill}
    ds = xr.Dataset({"air": (("lat", "lon"), values, attrs)},
                    coords={"lat": np.linspace(50, 10, ny), "lon": np.linspace(0, 47, nx)})
    return ds.proj.assign_crs(spatial_ref="EPSG:4326")


@pytest.mark.parametrize("dtype", ["i1", "u4", "u8", "f2"])
@pytest.mark.parametrize("method", METHODS)
def test_new_dtypes_every_method_every_level(tmp_path, dtype, method):
    ds = _dtype_source(dtype)
    fill = ds.air.attrs.get("_FillValue")
    p = create_pyramid(ds, levels=3, method=method, **KW)
    p.write(tmp_path / "p.zarr")
    masked = ds.air if fill is None else ds.air.where(ds.air != fill)
    level0 = read_level(tmp_path / "p.zarr", 0)
    assert level0.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(level0, ds.air.values)
    prev = level0
    for lvl, f in enumerate(p.factors[1:], start=1):
        got = read_level(tmp_path / "p.zarr", lvl)
        is_int = np.dtype(dtype).kind in "iu"
        if method in ("mode", "majority"):  # level to level by design (like gdaladdo)
            ref = _window_mode(prev, 2, fill, method == "majority")
            np.testing.assert_array_equal(got, ref)
        elif method == "nearest":
            np.testing.assert_array_equal(got, ds.air.values[: got.shape[0] * f : f, : got.shape[1] * f : f])
        else:
            red = getattr(masked.coarsen(lat=f, lon=f, boundary="trim"), method)()
            if method == "sum":
                assert got.dtype == (np.dtype("f2") if dtype == "f2" else np.int64 if dtype == "i1" else np.uint64)
                ref = red.values
            elif is_int:
                ref = np.where(np.isnan(red.values), fill, np.rint(red.values) if method == "mean" else red.values)
            else:
                ref = red.values
            if dtype == "f2":
                np.testing.assert_allclose(got.astype("f8"), ref.astype("f8"), rtol=3e-3, atol=1e-2)
                assert np.array_equal(np.isnan(got), np.isnan(ref.astype("f8")))
            elif method == "mean" and lvl >= 2:
                # integer means round every level: exact against the weighted, rounded mean of the level
                # before, within one unit of the rounded mean of level 0
                np.testing.assert_array_equal(got, _weighted_step(prev, ds.air.values, fill, f // 2))
                assert np.abs(got.astype("f8") - ref).max() <= 1
            else:
                np.testing.assert_array_equal(got, ref.astype(got.dtype))
        prev = got
    assert validate_pyramid(p, tmp_path / "p.zarr").ok


def test_uint64_beyond_float_precision_stays_exact(tmp_path):
    """max / min / nearest of uint64 values above 2**53 are integers, never rounded through floats."""
    values = (np.uint64(2**63) + np.arange(16 * 16, dtype=np.uint64)).reshape(16, 16)
    ds = xr.Dataset({"air": (("lat", "lon"), values)},
                    coords={"lat": np.arange(16.0), "lon": np.arange(16.0)}).proj.assign_crs(spatial_ref="EPSG:4326")
    for method in ("max", "min", "nearest"):
        create_pyramid(ds, levels=3, method=method, **KW).write(tmp_path / f"{method}.zarr")
        got = read_level(tmp_path / f"{method}.zarr", 2)
        blocks = values.reshape(4, 4, 4, 4).transpose(0, 2, 1, 3).reshape(4, 4, 16)
        want = blocks.max(-1) if method == "max" else blocks.min(-1) if method == "min" else values[::4, ::4]
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, want)


# -- spatial dims without coordinate variables -----------------------------------------------------


def test_dims_without_coordinates_get_index_centres(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.normal(0, 1, (2, 32, 40)).astype("f4")
    ds = xr.Dataset({"band_data": (("band", "y", "x"), values)}).proj.assign_crs(spatial_ref="EPSG:32633")
    assert "x" not in ds.coords and "y" not in ds.coords
    p = create_pyramid(ds, levels=3)
    p.write(tmp_path / "p.zarr")
    root = _root(tmp_path / "p.zarr")
    validate_conventions(root)
    attrs = root["attributes"]
    assert attrs["spatial:transform"] == [1.0, 0.0, -0.5, 0.0, 1.0, -0.5]
    assert [e["spatial:transform"] for e in attrs["multiscales"]["layout"]] == [
        [1.0, 0.0, -0.5, 0.0, 1.0, -0.5], [2.0, 0.0, -0.5, 0.0, 2.0, -0.5], [4.0, 0.0, -0.5, 0.0, 4.0, -0.5]]
    assert attrs["spatial:bbox"] == [-0.5, -0.5, 39.5, 31.5]
    for lvl, f in enumerate(p.factors):
        level = xr.open_zarr(tmp_path / "p.zarr", group=str(lvl), consolidated=False)
        # centres as xarray.coarsen(...).mean() gives them for the implicit 0..n-1 index
        np.testing.assert_array_equal(level.x.values, np.arange(40 // f) * f + (f - 1) / 2)
        np.testing.assert_array_equal(level.y.values, np.arange(32 // f) * f + (f - 1) / 2)
        ref = ds.band_data.coarsen(y=f, x=f, boundary="trim").mean().values if f > 1 else values
        np.testing.assert_allclose(level.band_data.values, ref, rtol=1e-6, atol=1e-6)
        validate_conventions({"zarr_format": 3, "node_type": "group",
                              "attributes": json.loads((tmp_path / "p.zarr" / str(lvl) / "zarr.json").read_text())
                              ["attributes"]}, names=("spatial", "geo-proj"))
    assert validate_pyramid(p, tmp_path / "p.zarr").ok


def test_update_of_a_dataset_without_spatial_coordinates(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, (4, 64, 80)).astype("f4")
    values[:, :5, :5] = np.nan
    ds = xr.Dataset({"z": (("time", "y", "x"), values)}, coords={"time": np.arange(4)})
    ds = ds.proj.assign_crs(spatial_ref="EPSG:32633")
    create_pyramid(ds.isel(time=slice(0, 2)), levels=3).write(tmp_path / "u.zarr")
    assert update_pyramid(ds, tmp_path / "u.zarr", "time").changed
    create_pyramid(ds, levels=3).write(tmp_path / "full.zarr")
    assert_same_pyramid(str(tmp_path / "u.zarr"), str(tmp_path / "full.zarr"))
    assert not update_pyramid(ds, tmp_path / "u.zarr", "time").changed


# -- global attributes -----------------------------------------------------------------------------

GLOBALS = {"title": "Air temperature", "history": "made by a test", "version": 3, "levels_km": [1.5, 3.0],
           "Conventions": "CF-1.8"}
#: numpy attributes, as NetCDF files have them, and how every group stores them
NUMPY_GLOBALS = {"actual_range": np.array([200.5, 320.25], dtype="f4"), "scale": np.float64(0.5)}
NUMPY_STORED = {"actual_range": [200.5, 320.25], "scale": 0.5}
CLASHING = {"proj:code": "EPSG:3857", "proj:wkt2": "not a CRS", "spatial:shape": [1, 1], "multiscales": "junk",
            "zarr_conventions": "junk", "zarr-layer": "junk", "topozarr:options": "junk"}


def test_global_attributes_on_every_level_and_the_root(tmp_path):
    ds = make_raster(ny=64, nx=80, nan_fraction=0.05)
    ds.attrs = {**GLOBALS, **NUMPY_GLOBALS, **CLASHING}
    p = create_pyramid(ds, levels=3, **KW)
    p.write(tmp_path / "p.zarr")
    root = _root(tmp_path / "p.zarr")["attributes"]
    validate_conventions(_root(tmp_path / "p.zarr"))
    assert {k: root[k] for k in GLOBALS} == GLOBALS
    assert {k: root[k] for k in NUMPY_STORED} == NUMPY_STORED
    assert root["proj:code"] == "EPSG:4326" and "proj:wkt2" not in root  # exactly one, the pyramid's
    assert root["spatial:shape"] == [64, 80] and isinstance(root["multiscales"], dict)
    assert isinstance(root["topozarr:options"], dict) and "zarr-layer" not in root
    for lvl, f in enumerate(p.factors):
        group = json.loads((tmp_path / "p.zarr" / str(lvl) / "zarr.json").read_text())["attributes"]
        assert {k: group[k] for k in GLOBALS} == GLOBALS
        assert {k: group[k] for k in NUMPY_STORED} == NUMPY_STORED
        assert group["proj:code"] == "EPSG:4326" and "proj:wkt2" not in group
        assert group["spatial:shape"] == [64 // f, 80 // f]
        assert not set(group) & {"multiscales", "zarr-layer", "topozarr:options"}
        assert isinstance(group["zarr_conventions"], list)
        assert xr.open_zarr(tmp_path / "p.zarr", group=str(lvl), consolidated=False).attrs["title"] == GLOBALS["title"]
    tree = xr.open_datatree(tmp_path / "p.zarr", engine="zarr", consolidated=False)
    assert tree.attrs["title"] == GLOBALS["title"] and tree["1"].attrs["history"] == GLOBALS["history"]
    assert validate_pyramid(p, tmp_path / "p.zarr").ok
    # what a dataset cannot store is still refused before anything is written
    ds.attrs["blob"] = b"\x00\x01"
    with pytest.raises(ValueError, match="attribute 'blob' of the dataset"):
        create_pyramid(ds, levels=3, **KW).write(tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()


def test_update_carries_changed_global_attributes(tmp_path):
    ds = make_raster(ny=64, nx=80, nt=4, nan_fraction=0.05)
    ds.attrs = {**GLOBALS, **NUMPY_GLOBALS}
    create_pyramid(ds.isel(time=slice(0, 2)), levels=3, **KW).write(tmp_path / "u.zarr")
    grown = ds.assign_attrs(history="appended two steps")
    assert update_pyramid(grown, tmp_path / "u.zarr", "time").changed
    create_pyramid(grown, levels=3, **KW).write(tmp_path / "full.zarr")
    assert_same_pyramid(str(tmp_path / "u.zarr"), str(tmp_path / "full.zarr"))
    assert json.loads((tmp_path / "u.zarr" / "2" / "zarr.json").read_text())["attributes"]["history"] == \
        "appended two steps"
    assert not update_pyramid(grown, tmp_path / "u.zarr", "time").changed  # the same source twice: nothing


# -- level-0 coordinates copied bit for bit --------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f8", "f4"])
def test_level0_coordinates_are_the_sources_bits(tmp_path, dtype):
    ds = make_raster(ny=60, nx=70)
    # a grid as files store it: uniform within tolerance, not what start + i * step regenerates
    lat = (np.linspace(60, -60, 60) + np.tile([0.0, 3e-12], 30)).astype(dtype)
    lon = (np.arange(70) * 0.1 + 0.05).astype(dtype)
    ds = ds.assign_coords(lat=lat, lon=lon)
    p = create_pyramid(ds, levels=3, **KW)
    p.write(tmp_path / "p.zarr")
    for axis, src in (("lat", lat), ("lon", lon)):
        got = zarr.open_array(str(tmp_path / "p.zarr"), path=f"0/{axis}", mode="r")[...]
        assert got.dtype == src.dtype and got.tobytes() == src.tobytes()
    # coarser levels: window means of the level before, bit for bit as topozarr 0.2.1 writes them (measured:
    # its level 1 equals coarsen(2).mean() of the source exactly, its level 2 coarsen(2).mean() of level 1)
    prev = {"lat": lat, "lon": lon}
    for lvl in (1, 2):
        for axis in ("lat", "lon"):
            got = zarr.open_array(str(tmp_path / "p.zarr"), path=f"{lvl}/{axis}", mode="r")[...]
            want = xr.DataArray(prev[axis], dims=axis).coarsen({axis: 2}, boundary="trim").mean().values
            assert got.dtype == np.dtype(dtype) and got.tobytes() == want.tobytes(), (lvl, axis)
            prev[axis] = want


def test_integer_coordinates_keep_their_dtype_at_level_0(tmp_path):
    """As topozarr 0.2.1 writes them (measured): int32/int64 at level 0, float64 window means above."""
    ds = xr.Dataset({"a": (("y", "x"), np.zeros((8, 12), "f4"))},
                    coords={"y": np.arange(8, dtype="i4") * 30, "x": (np.arange(12) * 30 + 15).astype("i8")})
    create_pyramid(ds.proj.assign_crs(spatial_ref="EPSG:32633"), levels=3).write(tmp_path / "p.zarr")
    got = {(lvl, ax): zarr.open_array(str(tmp_path / "p.zarr"), path=f"{lvl}/{ax}", mode="r")[...]
           for lvl in range(3) for ax in "yx"}
    assert {k: str(v.dtype) for k, v in got.items()} == {(0, "y"): "int32", (0, "x"): "int64", (1, "y"): "float64",
                                                         (1, "x"): "float64", (2, "y"): "float64", (2, "x"): "float64"}
    assert got[0, "y"].tolist() == [0, 30, 60, 90, 120, 150, 180, 210]
    assert got[1, "y"].tolist() == [15.0, 75.0, 135.0, 195.0] and got[2, "y"].tolist() == [45.0, 165.0]
    assert got[1, "x"].tolist() == [30.0, 90.0, 150.0, 210.0, 270.0, 330.0]
    assert got[2, "x"].tolist() == [60.0, 180.0, 300.0]


# -- integer nodata is the zarr fill_value ---------------------------------------------------------


@pytest.mark.parametrize("method", ["mean", "max", "sum"])
def test_integer_nodata_is_the_zarr_fill_value(tmp_path, method):
    dem = make_raster(ny=256, nx=256, dtype="int16")
    values = dem.air.values.copy()
    values[:128, :128] = -9999  # a whole shard of nodata at level 0 (never written: it is the fill)
    dem["air"] = (("lat", "lon"), values, {"units": "m", "_FillValue": -9999})
    p = create_pyramid(dem, levels=3, method=method, chunks_per_shard=1, target_chunk_bytes=128 * 128 * 2, **KW)
    p.write(tmp_path / "dem.zarr")
    for lvl in range(3):
        arr = zarr.open_array(str(tmp_path / "dem.zarr"), path=f"{lvl}/air", mode="r")
        meta = json.loads((tmp_path / "dem.zarr" / str(lvl) / "air" / "zarr.json").read_text())
        assert meta["fill_value"] == -9999 and meta["attributes"]["_FillValue"] == -9999
        assert arr.fill_value == -9999
    assert not (tmp_path / "dem.zarr" / "0" / "air" / "c" / "0" / "0").exists()  # the nodata chunk
    assert (read_level(tmp_path / "dem.zarr", 0)[:128, :128] == -9999).all()
    level1 = xr.open_zarr(tmp_path / "dem.zarr", group="1", consolidated=False).air
    if method == "sum":  # an all-missing window sums to 0, as xarray's sum of NaN
        np.testing.assert_array_equal(level1.values[:64, :64], 0)
    else:
        assert level1[:64, :64].isnull().all() and level1[64:, 64:].notnull().all()
    assert validate_pyramid(p, tmp_path / "dem.zarr").ok


# -- CF-packed integers stay packed ----------------------------------------------------------------

ENCODING = {"dtype": "int16", "scale_factor": np.float32(0.01), "add_offset": np.float32(250.0),
            "_FillValue": np.int16(-32767)}


def _packed_source(tmp_path, nt=None, name="packed.nc"):
    ds = make_raster(ny=128, nx=160, nt=nt, nan_fraction=0.05)
    ds = ds.drop_vars("spatial_ref")
    ds.air.encoding = dict(ENCODING)
    path = tmp_path / name
    ds.to_netcdf(path, engine="h5netcdf")
    return (xr.open_dataset(path, engine="h5netcdf"),
            xr.open_dataset(path, engine="h5netcdf", decode_cf=False, decode_coords=False))


def _packed_mean(raw: np.ndarray, f: int) -> np.ndarray:
    """Independent reference: rounded mean of the valid packed integers of each window."""
    da = xr.DataArray(raw.astype("f8"), dims=("lat", "lon"))
    mean = da.where(da != -32767).coarsen(lat=f, lon=f, boundary="trim").mean().values
    return np.where(np.isnan(mean), -32767, np.rint(mean)).astype("i2")


def test_packed_integers_stay_packed(tmp_path):
    src, raw = _packed_source(tmp_path)
    assert src.air.dtype.kind == "f" and raw.air.dtype == np.int16
    p = create_pyramid(src, levels=3, crs="EPSG:4326", **KW)
    p.write(tmp_path / "p.zarr")
    out = tmp_path / "p.zarr"
    for lvl in range(3):
        meta = json.loads((out / str(lvl) / "air" / "zarr.json").read_text())
        assert meta["data_type"] == "int16" and meta["fill_value"] == -32767
        a = meta["attributes"]
        assert (a["_FillValue"], a["scale_factor"], a["add_offset"]) == (-32767, float(np.float32(0.01)), 250.0)
    level0 = read_level(out, 0)
    assert level0.tobytes() == raw.air.values.tobytes()  # the source's packed integers, bit for bit
    decoded = xr.open_zarr(out, group="0", consolidated=False).air
    # decoded as the source is (float64: JSON attributes carry no float32), within float32 rounding
    np.testing.assert_allclose(decoded.values, src.air.values.astype("f8"), rtol=2e-7, atol=0)
    assert np.array_equal(np.isnan(decoded.values), np.isnan(src.air.values))
    np.testing.assert_array_equal(read_level(out, 1), _packed_mean(raw.air.values, 2))
    prev = read_level(out, 1)
    for lvl, f in ((1, 2), (2, 4)):
        got = xr.open_zarr(out, group=str(lvl), consolidated=False).air.values
        exact = src.air.coarsen(lat=f, lon=f, boundary="trim").mean().values
        assert np.array_equal(np.isnan(got), np.isnan(exact))
        # the quantisation: half a quantum at level 1, one quantum from level 2 on (+ float32 noise of
        # the source's own decoding)
        assert np.nanmax(np.abs(got - exact)) <= 0.01 * (0.5 if lvl == 1 else 1.0) + 1e-4
    # level 2 is the weighted, rounded mean of the rounded level 1
    np.testing.assert_array_equal(read_level(out, 2), _weighted_step(prev, raw.air.values, -32767, 2))
    assert validate_pyramid(p, out).ok
    # the float pyramid of the same source, for the bytes
    create_pyramid(src, levels=3, crs="EPSG:4326", pack=False, **KW).write(tmp_path / "floats.zarr")
    assert read_level(tmp_path / "floats.zarr", 0).dtype == src.air.dtype
    np.testing.assert_array_equal(read_level(tmp_path / "floats.zarr", 0), src.air.values)
    packed_bytes = zarr.open_array(str(out), path="0/air", mode="r").nbytes
    float_bytes = zarr.open_array(str(tmp_path / "floats.zarr"), path="0/air", mode="r").nbytes
    assert packed_bytes * src.air.dtype.itemsize == float_bytes * 2


@pytest.mark.parametrize("method", ["max", "nearest", "mode"])
def test_packed_selection_methods_are_exact(tmp_path, method):
    src, raw = _packed_source(tmp_path)
    create_pyramid(src, levels=2, crs="EPSG:4326", method=method, **KW).write(tmp_path / "p.zarr")
    got = read_level(tmp_path / "p.zarr", 1)
    if method == "max":
        da = xr.DataArray(raw.air.values.astype("f8"), dims=("lat", "lon"))
        want = da.where(da != -32767).coarsen(lat=2, lon=2, boundary="trim").max().values
        want = np.where(np.isnan(want), -32767, want).astype("i2")
    elif method == "nearest":
        want = raw.air.values[::2, ::2]
    else:
        want = _window_mode(raw.air.values, 2, -32767, False)
    np.testing.assert_array_equal(got, want)


def test_packed_sum_and_bad_pack_option(tmp_path):
    src, _ = _packed_source(tmp_path)
    p = create_pyramid(src, levels=2, crs="EPSG:4326", method="sum", **KW)
    assert p.spec.variables[0].packing is None  # a sum is stored as decoded floats
    with pytest.raises(TypeError, match="pack must be True or False"):
        create_pyramid(src, levels=2, crs="EPSG:4326", pack="no", **KW)


def test_packed_update_equals_full_build(tmp_path):
    whole, _ = _packed_source(tmp_path, nt=5, name="whole.nc")
    part = whole.isel(time=slice(0, 3))
    create_pyramid(part, levels=3, crs="EPSG:4326", **KW).write(tmp_path / "u.zarr")
    report = update_pyramid(whole, tmp_path / "u.zarr", "time")
    assert (report.old_length, report.new_length) == (3, 5)
    create_pyramid(whole, levels=3, crs="EPSG:4326", **KW).write(tmp_path / "full.zarr")
    assert_same_pyramid(str(tmp_path / "u.zarr"), str(tmp_path / "full.zarr"))
    # a pack=False pyramid is updated as floats (the option is recorded)
    create_pyramid(part, levels=3, crs="EPSG:4326", pack=False, **KW).write(tmp_path / "f.zarr")
    assert _root(tmp_path / "f.zarr")["attributes"]["topozarr:options"]["pack"] is False
    update_pyramid(whole, tmp_path / "f.zarr", "time")
    create_pyramid(whole, levels=3, crs="EPSG:4326", pack=False, **KW).write(tmp_path / "ffull.zarr")
    assert_same_pyramid(str(tmp_path / "f.zarr"), str(tmp_path / "ffull.zarr"))


def _spy_recomputed_counts(monkeypatch) -> list[int]:
    """Record the levels whose counts are recomputed from level 0 (not read from scratch)."""
    from topozarr_core.write import missing_counts

    calls: list[int] = []
    real = missing_counts.counts_from_level0

    def spy(open_array, plan, spec, level, slices):
        calls.append(level)
        return real(open_array, plan, spec, level, slices)

    monkeypatch.setattr(missing_counts, "counts_from_level0", spy)
    return calls


@pytest.mark.parametrize("keep", [True, False])
def test_published_pyramid_holds_no_scratch(tmp_path, keep, monkeypatch):
    ds = make_raster(ny=300, nx=420, nan_fraction=0.05)
    p = create_pyramid(ds, levels=4, chunks_per_shard=1, **KW)
    p.write(tmp_path / "p.zarr", keep_levels_in_memory=keep, max_region_bytes=200_000)
    assert root_nodes(tmp_path / "p.zarr") == ["0", "1", "2", "3"]
    assert not (tmp_path / "p.zarr" / MISSING_GROUP).exists()
    tree = xr.open_datatree(tmp_path / "p.zarr", engine="zarr", consolidated=False)
    assert sorted(tree.children) == ["0", "1", "2", "3"]
    assert_exact_means(tmp_path / "p.zarr", ds, p.factors)
    # rewriting the coarse levels alone recomputes the counts of level 1 from level 0: still exact
    recomputed = _spy_recomputed_counts(monkeypatch)
    p.write(tmp_path / "p.zarr", mode="a", levels=[2, 3], keep_levels_in_memory=False)
    assert set(recomputed) == {1}  # level 2's counts come from this write's own scratch
    assert root_nodes(tmp_path / "p.zarr") == ["0", "1", "2", "3"]
    assert_exact_means(tmp_path / "p.zarr", ds, p.factors)


def test_update_relaying_out_stays_exact_without_stored_counts(tmp_path, monkeypatch):
    """11 -> 12 steps relays every level out over every entry (not only the new one; the time shards,
    11 at every level, grow to 12): level 2 then reduces level 1's old entries too. The build's counts were deleted when it was published;
    level 1 is rewritten whole by this update, so its counts are this update's own scratch."""
    ds = make_raster(ny=300, nx=420, nt=12, nan_fraction=0.05)
    create_pyramid(ds.isel(time=slice(0, 11)), levels=3, **KW).write(tmp_path / "u.zarr")
    recomputed = _spy_recomputed_counts(monkeypatch)
    report = update_pyramid(ds, tmp_path / "u.zarr", "time", max_workers=1)
    assert recomputed == []  # every count read back was written by this update
    assert set(report.relayout) == {(0, "air"), (1, "air"), (2, "air")}
    assert root_nodes(tmp_path / "u.zarr") == ["0", "1", "2", "time"]  # no scratch; time: the root copy of 0/time
    for lvl, f in enumerate((1, 2, 4)):
        got = read_level(tmp_path / "u.zarr", lvl)
        ref = ds.air.values if f == 1 else ds.air.coarsen(lat=f, lon=f, boundary="trim").mean().values
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-4)
        assert np.array_equal(np.isnan(got), np.isnan(ref))


def test_icechunk_snapshot_holds_no_scratch(tmp_path):
    ds = make_raster(ny=200, nx=240, nan_fraction=0.05)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    p = create_pyramid(ds, levels=3, **KW)
    p.write(session.store, keep_levels_in_memory=False)
    session.commit("pyramid")
    store = repo.readonly_session("main").store
    assert sorted(zarr.open_group(store, mode="r").keys()) == ["0", "1", "2"]
    for lvl, f in enumerate(p.factors):
        got = zarr.open_array(store, path=f"{lvl}/air", mode="r")[...]
        ref = ds.air.values if f == 1 else ds.air.coarsen(lat=f, lon=f, boundary="trim").mean().values
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-4)


def test_kernel_counts_from_level0_equal_chained_counts():
    """The recomputed counts (missing level-0 pixels per window) are what the level chain carries."""
    from topozarr_core.plan.regions import build_region_plan
    from topozarr_core.spec.pyramid_spec import build_spec
    from topozarr_core.write.missing_counts import counts_from_level0

    ds = make_raster(ny=64, nx=64, nan_fraction=0.2)
    spec = build_spec(ds, levels=4, factors=None, x_dim="lon", y_dim="lat", method="mean", crs=None,
                      layer_hints=None, chunks_per_shard=1, target_chunk_bytes=512_000)
    plan = build_region_plan(x_dim="lon", y_dim="lat", factors=list(spec.factors), variables=list(spec.variables),
                             source_chunks={}, max_region_bytes=10**9)
    values = ds.air.values
    _, m1 = block_reduce(values, 2, "mean", None)
    _, m2 = block_reduce(block_reduce(values, 2, "mean", None)[0], 2, "mean", None, missing=m1, weight=4)
    got = counts_from_level0(lambda path, mode: values, plan, spec.variables[0], 2, (slice(0, 16), slice(0, 16)))
    np.testing.assert_array_equal(got, m2)


# -- integer nodata declared in .encoding (how xarray holds it after decoding) -----------------------


def test_integer_fill_value_in_encoding_marks_nodata(tmp_path):
    """An integer variable whose ``_FillValue`` is only in ``.encoding`` has nodata, as topozarr reads it:
    the values below are topozarr 0.2.1's for the same dataset (before, nodata was averaged in: -2495)."""
    v = np.full((8, 8), 6, dtype="int16")
    v[0, 0] = v[0, 1] = v[1, 0] = -9999  # one valid pixel in the first window
    v[2:4, 2:4] = -9999  # a whole window of nodata
    ds = xr.Dataset({"dem": (("y", "x"), v)}, coords={"y": np.arange(8.0), "x": np.arange(8.0)})
    ds.dem.encoding["_FillValue"] = -9999
    ds = ds.proj.assign_crs(spatial_ref="EPSG:32633")
    p = create_pyramid(ds, levels=3)
    assert p.fill_values == {"dem": -9999}
    p.write(tmp_path / "p.zarr")
    assert read_level(tmp_path / "p.zarr", 1, "dem").tolist() == [[6, 6, 6, 6], [6, -9999, 6, 6], [6, 6, 6, 6],
                                                             [6, 6, 6, 6]]
    assert read_level(tmp_path / "p.zarr", 2, "dem").tolist() == [[6, 6], [6, 6]]
    for lvl in range(3):
        meta = json.loads((tmp_path / "p.zarr" / str(lvl) / "dem" / "zarr.json").read_text())
        assert meta["fill_value"] == -9999  # as topozarr's write()
        assert meta["attributes"]["_FillValue"] == -9999  # and recorded, so xarray decodes nodata as NaN
    level1 = xr.open_zarr(tmp_path / "p.zarr", group="1", consolidated=False).dem
    assert int(level1.isnull().sum()) == 1
    # a fill that does not fit the dtype is refused as one for the attribute is
    ds.dem.encoding["_FillValue"] = 40000
    with pytest.raises(ValueError, match="variable 'dem': encoding _FillValue 40000 does not fit dtype int16"):
        create_pyramid(ds, levels=3)


# -- variables over one spatial dim: reduced with the method, in their dtype ---------------------------


def _one_axis_source(nodata: bool) -> xr.Dataset:
    rng = np.random.default_rng(1 if nodata else 0)
    if nodata:
        prof = rng.integers(0, 50, (2, 16)).astype("i2")
        prof[0, :3] = -9999
        prof[1, 4:8] = -9999
        ds = xr.Dataset({"air": (("time", "lat", "lon"), rng.normal(size=(2, 8, 16)).astype("f4")),
                         "prof": (("time", "lon"), prof, {"_FillValue": -9999})},
                        coords={"lat": np.arange(8.0), "lon": np.arange(16.0), "time": [0, 1]})
    else:
        ds = xr.Dataset({"air": (("time", "lat", "lon"), rng.normal(size=(2, 8, 12)).astype("f4")),
                         "prof": (("time", "lon"), np.arange(24, dtype="i2").reshape(2, 12) * 3 % 7),
                         "colw": (("lat",), np.arange(8, dtype="f4") ** 2)},
                        coords={"lat": np.arange(8.0), "lon": np.arange(12.0), "time": [0, 1]})
    return ds.proj.assign_crs(spatial_ref="EPSG:4326")


#: topozarr 0.2.1's levels 1 and 2 of the variables over one spatial dim (measured on the same dataset)
ONE_AXIS = {
    "mean": {"1/prof": [[2, 4, 3, 2, 4, 4], [2, 2, 4, 3, 2, 4]], "1/colw": [0.5, 6.5, 20.5, 42.5],
             "2/prof": [[3, 2, 4], [2, 4, 3]], "2/colw": [3.5, 31.5]},
    "max": {"1/prof": [[3, 6, 5, 4, 6, 5], [4, 3, 6, 5, 4, 6]], "1/colw": [1.0, 9.0, 25.0, 49.0],
            "2/prof": [[6, 5, 6], [4, 6, 6]], "2/colw": [9.0, 49.0]},
    "nearest": {"1/prof": [[0, 6, 5, 4, 3, 2], [1, 0, 6, 5, 4, 3]], "1/colw": [0.0, 4.0, 16.0, 36.0],
                "2/prof": [[0, 5, 3], [1, 6, 4]], "2/colw": [0.0, 16.0]},
}


@pytest.mark.parametrize("method", sorted(ONE_AXIS))
def test_variables_over_one_spatial_dim_use_the_method(tmp_path, method):
    create_pyramid(_one_axis_source(False), levels=3, method=method, **KW).write(tmp_path / "p.zarr")
    for key, want in ONE_AXIS[method].items():
        lvl, var = key.split("/")
        got = read_level(tmp_path / "p.zarr", int(lvl), var)
        assert got.dtype == (np.int16 if var == "prof" else np.float32) and got.tolist() == want, key


def test_variables_over_one_spatial_dim_keep_nodata(tmp_path):
    """With nodata: max equals topozarr 0.2.1's at every level (measured); means equal it at levels 1 and 2
    and stay exact at level 3 (topozarr averages level 2's means: 36 where the valid pixels average 29);
    an integer sum widens to int64 (topozarr keeps int16: same values here)."""
    ds = _one_axis_source(True)
    create_pyramid(ds, levels=4, method="max", **KW).write(tmp_path / "max.zarr")
    assert [read_level(tmp_path / "max.zarr", lvl, "prof").tolist() for lvl in (1, 2, 3)] == [
        [[-9999, 47, 7, 47, 15, 43, 41, 20], [32, 4, -9999, -9999, 40, 39, 15, 22]],
        [[47, 47, 43, 41], [32, -9999, 40, 22]], [[47, 43], [32, 40]]]
    create_pyramid(ds, levels=4, **KW).write(tmp_path / "mean.zarr")
    assert [read_level(tmp_path / "mean.zarr", lvl, "prof").tolist() for lvl in (1, 2, 3)] == [
        [[-9999, 47, 4, 44, 14, 32, 27, 16], [30, 2, -9999, -9999, 28, 30, 10, 14]],
        [[47, 24, 23, 22], [16, -9999, 29, 12]], [[29, 22], [16, 20]]]
    valid = ds.prof.where(ds.prof != -9999).values[0, :8]
    assert np.rint(np.nanmean(valid)) == 29
    # nodata is the zarr fill_value on both paths: the entries carry it, as_datatree the attribute
    pyramid = create_pyramid(ds, levels=4, **KW)
    assert pyramid.encoding["/1"]["prof"] == {"chunks": (1, 8), "shards": (2, 8), "fill_value": -9999}
    assert pyramid.encoding["/0"] == recommend_encoding(ds, **KW)
    pyramid.as_datatree().to_zarr(tmp_path / "dt.zarr", zarr_format=3, consolidated=False, encoding=pyramid.encoding)
    for target in ("mean.zarr", "dt.zarr"):
        for lvl in range(4):
            meta = json.loads((tmp_path / target / str(lvl) / "prof" / "zarr.json").read_text())
            assert (meta["data_type"], meta["fill_value"], meta["attributes"]["_FillValue"]) == ("int16", -9999, -9999)
        np.testing.assert_array_equal(read_level(tmp_path / target, 3, "prof"), [[29, 22], [16, 20]])
    create_pyramid(ds, levels=2, method="sum", **KW).write(tmp_path / "sum.zarr")
    summed = read_level(tmp_path / "sum.zarr", 1, "prof")
    assert summed.dtype == np.int64 and summed.tolist() == [[0, 47, 8, 88, 27, 64, 54, 32],
                                                           [59, 5, 0, 0, 56, 61, 21, 28]]
    ints = ds.assign(prof=ds.prof.drop_attrs())
    with pytest.raises(ValueError, match="method='majority' on integer variable 'prof' needs a _FillValue"):
        create_pyramid(ints, levels=2, method="majority", **KW)


@pytest.mark.parametrize("kind", ["netcdf", "zarr", "memory"])
def test_packed_sources_are_written_as_topozarr_writes_them(tmp_path, kind):
    """A CF-packed int16 variable from a NetCDF file (h5netcdf), a Zarr store or loaded in memory: the levels'
    dtype, fill value, packing attributes, level-0 integers and the integer sums of levels 1 and 2 are
    topozarr 0.2.1's (measured on the same data: -128491 and -32130)."""
    rng = np.random.default_rng(0)
    rng.normal(size=(60, 70))  # the measurement drew another raster first
    src = xr.Dataset({"air": (("lat", "lon"), (250 + rng.normal(size=(64, 80))).astype("f4"))},
                     coords={"lat": np.linspace(60, -60, 64), "lon": np.linspace(-100, 100, 80)})
    src.air.values[:4, :4] = np.nan
    src.air.encoding = {"dtype": "int16", "scale_factor": np.float32(0.01), "add_offset": np.float32(250.0),
                        "_FillValue": np.int16(-32767)}
    src.to_netcdf(tmp_path / "p.nc", engine="h5netcdf")
    if kind == "zarr":
        src.to_zarr(tmp_path / "src.zarr", zarr_format=3, consolidated=False)
        opened = xr.open_zarr(tmp_path / "src.zarr", consolidated=False)
    else:
        opened = xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf")
        opened = opened.load() if kind == "memory" else opened
    create_pyramid(opened.proj.assign_crs(spatial_ref="EPSG:4326"), levels=3, **KW).write(tmp_path / "p.zarr")
    for lvl in range(3):
        meta = json.loads((tmp_path / "p.zarr" / str(lvl) / "air" / "zarr.json").read_text())
        a = meta["attributes"]
        assert [meta["data_type"], meta["fill_value"], a["scale_factor"], a["add_offset"], a["_FillValue"]] == [
            "int16", -32767, 0.009999999776482582, 250.0, -32767]
    raw = xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf", decode_cf=False).air.values
    assert read_level(tmp_path / "p.zarr", 0).tobytes() == raw.tobytes()
    assert [int(read_level(tmp_path / "p.zarr", lvl).astype("i8").sum()) for lvl in (1, 2)] == [-128491, -32130]
