"""Pyramid.write: every level equals xarray.coarsen of the source, on real local stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from tests.helpers.rasters import coarsen_reference, make_raster
from tests.helpers.schemas import validate_conventions
from topozarr_core import create_pyramid


def open_level(path, level) -> xr.Dataset:
    return xr.open_zarr(path, group=str(level), zarr_format=3, consolidated=False)


def assert_levels_match(ds, path, pyramid, var="air", method="mean", rtol=1e-6):
    for lvl, f in enumerate(pyramid.factors):
        got = open_level(path, lvl)[var].values
        ref = coarsen_reference(ds, var, f, method)
        assert got.shape == ref.shape
        if method in ("mean", "sum"):
            np.testing.assert_allclose(got, ref, rtol=rtol, equal_nan=True)
        else:
            np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("method", ["mean", "max", "min", "sum", "nearest"])
def test_levels_equal_coarsen_2d_with_nans(tmp_path, method):
    ds = make_raster(ny=611, nx=733, nan_fraction=0.1)
    p = create_pyramid(ds, levels=4, x_dim="lon", y_dim="lat", method=method)
    p.write(tmp_path / "p.zarr")
    assert_levels_match(ds, tmp_path / "p.zarr", p, method=method)


@pytest.mark.parametrize("keep", [True, False])
def test_levels_equal_coarsen_3d_time(tmp_path, keep):
    ds = make_raster(ny=400, nx=500, nt=5, nan_fraction=0.2)
    p = create_pyramid(ds, levels=4, x_dim="lon", y_dim="lat")
    report = p.write(tmp_path / "p.zarr", keep_levels_in_memory=keep, max_workers=2, stats=True)
    assert report.kept_in_memory is keep
    assert_levels_match(ds, tmp_path / "p.zarr", p)
    lvl = open_level(tmp_path / "p.zarr", 3)
    np.testing.assert_array_equal(lvl.time.values, ds.time.values)


def test_explicit_factors_and_small_shards(tmp_path):
    ds = make_raster(ny=700, nx=900, nan_fraction=0.05)
    p = create_pyramid(ds, factors=[1, 3, 9, 27], x_dim="lon", y_dim="lat", chunks_per_shard=1)
    p.write(tmp_path / "p.zarr", max_workers=3)
    assert_levels_match(ds, tmp_path / "p.zarr", p)


def test_all_nan_windows_give_nan_and_sum_gives_zero(tmp_path):
    ds = make_raster(ny=256, nx=256)
    ds["air"][:64, :64] = np.nan
    for method, expected in [("mean", np.nan), ("max", np.nan), ("sum", 0.0)]:
        p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", method=method)
        p.write(tmp_path / f"{method}.zarr")
        corner = open_level(tmp_path / f"{method}.zarr", 2).air.values[:16, :16]
        if np.isnan(expected):
            assert np.isnan(corner).all()
        else:
            assert (corner == 0).all()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "int64"])
def test_integer_with_fill_value_stays_integer(tmp_path, dtype):
    ds = make_raster(ny=200, nx=240, dtype=dtype)
    fill = 0
    ds["air"].values[:40, :48] = fill
    ds["air"].values[100:103, 50:55] = fill
    ds["air"].attrs["_FillValue"] = fill
    p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", method="max")
    p.write(tmp_path / "p.zarr")
    raw = zarr.open_group(tmp_path / "p.zarr", mode="r")
    for lvl, f in enumerate(p.factors):
        arr = raw[f"{lvl}/air"]
        assert arr.dtype == np.dtype(dtype)
        assert arr.fill_value == fill
        ref = ds.air.where(ds.air != fill).coarsen(lat=f, lon=f, boundary="trim").max() if f > 1 else ds.air
        np.testing.assert_array_equal(arr[:], np.nan_to_num(ref.values, nan=fill).astype(dtype))


def test_integer_mean_rounds_and_sum_widens(tmp_path):
    ds = make_raster(ny=128, nx=128, dtype="uint8")
    p = create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", method="mean")
    p.write(tmp_path / "mean.zarr")
    got = zarr.open_array(tmp_path / "mean.zarr", path="1/air")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got[:], np.rint(ds.air.coarsen(lat=2, lon=2).mean().values).astype("u1"))
    p = create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", method="sum")
    p.write(tmp_path / "sum.zarr")
    got = zarr.open_array(tmp_path / "sum.zarr", path="1/air")
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got[:], ds.air.coarsen(lat=2, lon=2).sum().values)


def test_mode_for_categorical_raster(tmp_path):
    rng = np.random.default_rng(3)
    ds = make_raster(ny=64, nx=64)
    classes = rng.integers(1, 5, size=(64, 64)).astype("uint8")
    ds["landcover"] = (("lat", "lon"), classes)
    p = create_pyramid(ds[["landcover"]], levels=2, x_dim="lon", y_dim="lat", method="mode")
    p.write(tmp_path / "p.zarr")
    got = open_level(tmp_path / "p.zarr", 1).landcover.values
    windows = classes.reshape(32, 2, 32, 2).transpose(0, 2, 1, 3).reshape(32, 32, 4)
    ref = np.empty((32, 32), "u1")
    for i in range(32):
        for j in range(32):
            vals, counts = np.unique(windows[i, j], return_counts=True)
            ref[i, j] = vals[np.argmax(counts)]  # ties -> smallest value
    np.testing.assert_array_equal(got, ref)


def test_lazily_opened_zarr_source(tmp_path):
    ds = make_raster(ny=900, nx=1000, nt=3, nan_fraction=0.05)
    src_path = tmp_path / "src.zarr"
    ds.drop_vars("spatial_ref").to_zarr(src_path, zarr_format=3, consolidated=False,
                                         encoding={"air": {"chunks": (1, 300, 250)}})
    lazy = xr.open_zarr(src_path, chunks=None, consolidated=False).proj.assign_crs(spatial_ref="EPSG:4326")
    assert not lazy.air.chunks  # lazily indexed backend array, not dask
    p = create_pyramid(lazy, levels=3, x_dim="lon", y_dim="lat")
    p.write(tmp_path / "p.zarr", max_region_bytes=8_000_000)
    assert_levels_match(ds, tmp_path / "p.zarr", p)
    dask_src = xr.open_zarr(src_path, consolidated=False).proj.assign_crs(spatial_ref="EPSG:4326")
    p2 = create_pyramid(dask_src, levels=3, x_dim="lon", y_dim="lat")
    p2.write(tmp_path / "p2.zarr")
    assert_levels_match(ds, tmp_path / "p2.zarr", p2)


def test_root_metadata_validates_against_convention_schemas(tmp_path, raster3d):
    from topozarr_core import ZarrLayerVarConfig

    p = create_pyramid(raster3d, levels=3, x_dim="lon", y_dim="lat",
                       layer_hints={"air": ZarrLayerVarConfig(colormap="blues", clim=[230, 310])})
    p.write(tmp_path / "p.zarr")
    root = json.loads((tmp_path / "p.zarr" / "zarr.json").read_text())
    validate_conventions(root)
    attrs = root["attributes"]
    layout = attrs["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == ["0", "1", "2"]
    assert [e.get("derived_from") for e in layout] == [None, "0", "1"]
    assert layout[2]["transform"]["scale"] == [2.0, 2.0]
    assert layout[2]["spatial:shape"] == [75, 105]
    a, _, c, _, e, f = layout[2]["spatial:transform"]
    lvl = open_level(tmp_path / "p.zarr", 2)
    assert np.isclose(c + a / 2, lvl.lon.values[0]) and np.isclose(f + e / 2, lvl.lat.values[0])
    assert attrs["proj:code"] == "EPSG:4326" and "proj:wkt2" not in attrs
    assert attrs["zarr-layer"] == {"air": {"colormap": "blues", "clim": [230.0, 310.0]}}
    assert "topozarr:status" not in attrs
    for lvl in range(3):
        doc = json.loads((tmp_path / "p.zarr" / str(lvl) / "zarr.json").read_text())
        validate_conventions(doc, names=("spatial", "geo-proj"))


def test_schema_validation_can_fail(tmp_path, raster2d):
    import jsonschema

    p = create_pyramid(raster2d, levels=2, x_dim="lon", y_dim="lat")
    doc = {"zarr_format": 3, "node_type": "group", "attributes": p.attrs}
    doc["attributes"]["proj:wkt2"] = "extra"  # oneOf: code and wkt2 together are invalid
    with pytest.raises(jsonschema.ValidationError):
        validate_conventions(doc)


def test_projected_crs_without_epsg_uses_wkt2(tmp_path):
    ds = make_raster(ny=64, nx=64, crs=None)
    custom = "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m +no_defs"
    p = create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", crs=custom)
    p.write(tmp_path / "p.zarr")
    root = json.loads((tmp_path / "p.zarr" / "zarr.json").read_text())
    validate_conventions(root)
    assert "proj:wkt2" in root["attributes"] and "proj:code" not in root["attributes"]


def test_readers_see_crs_and_grid_mapping(tmp_path, raster2d):
    p = create_pyramid(raster2d, levels=2, x_dim="lon", y_dim="lat")
    p.write(tmp_path / "p.zarr")
    lvl = open_level(tmp_path / "p.zarr", 1)
    assert lvl.air.attrs["grid_mapping"] == "spatial_ref"
    import pyproj

    assert pyproj.CRS(lvl.spatial_ref.attrs["crs_wkt"]).to_epsg() == 4326
    assert lvl.air.attrs["units"] == "K"


def test_as_datatree_matches_write(tmp_path, raster3d):
    p = create_pyramid(raster3d, levels=3, x_dim="lon", y_dim="lat")
    tree = p.as_datatree()
    assert tree["1"].ds.air.chunks is not None  # lazy
    tree.to_zarr(tmp_path / "dt.zarr", zarr_format=3, consolidated=False, encoding=p.encoding)
    p.write(tmp_path / "w.zarr")
    for lvl in range(3):
        a = zarr.open_array(tmp_path / "dt.zarr", path=f"{lvl}/air")
        b = zarr.open_array(tmp_path / "w.zarr", path=f"{lvl}/air")
        assert a.chunks == b.chunks and a.shards == b.shards
        np.testing.assert_allclose(a[:], b[:], rtol=1e-6, equal_nan=True)
    validate_conventions(json.loads((tmp_path / "dt.zarr" / "zarr.json").read_text()))


def test_progress_bar(tmp_path, raster2d, capsys):
    p = create_pyramid(raster2d, levels=3, x_dim="lon", y_dim="lat")
    p.write(tmp_path / "p.zarr", progress=True)
    err = capsys.readouterr().err
    assert "region" in err and "100%" in err


# -- modes ----------------------------------------------------------------------------------------

def test_mode_w_minus_refuses_existing_target(tmp_path, raster2d):
    p = create_pyramid(raster2d, levels=2, x_dim="lon", y_dim="lat")
    p.write(tmp_path / "p.zarr", mode="w-")
    before = (tmp_path / "p.zarr" / "zarr.json").read_text()
    with pytest.raises(FileExistsError, match="w-"):
        p.write(tmp_path / "p.zarr", mode="w-")
    assert (tmp_path / "p.zarr" / "zarr.json").read_text() == before


def test_mode_a_rewrites_only_requested_levels(tmp_path):
    ds = make_raster(ny=256, nx=256)
    p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat")
    p.write(tmp_path / "p.zarr")
    level0 = (tmp_path / "p.zarr" / "0" / "air" / "c").stat().st_mtime_ns
    ds2 = ds.copy(deep=True)
    p2 = create_pyramid(ds2, levels=3, x_dim="lon", y_dim="lat", method="max")
    p2.write(tmp_path / "p.zarr", mode="a", levels=[1, 2])
    assert (tmp_path / "p.zarr" / "0" / "air" / "c").stat().st_mtime_ns == level0
    np.testing.assert_array_equal(open_level(tmp_path / "p.zarr", 2).air.values, coarsen_reference(ds, "air", 4, "max"))


def test_mode_a_guards_against_truncating_levels(tmp_path):
    ds = make_raster(ny=256, nx=256)
    create_pyramid(ds, levels=4, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr")
    with pytest.raises(ValueError, match="orphan"):
        create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr", mode="a")
    other = make_raster(ny=200, nx=256)
    with pytest.raises(ValueError, match="another shape"):
        create_pyramid(other, levels=4, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr", mode="a", levels=[2, 3])
    with pytest.raises(ValueError, match="contiguous"):
        create_pyramid(ds, levels=4, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr", mode="a", levels=[1, 3])
    with pytest.raises(ValueError, match="mode='a'"):
        create_pyramid(ds, levels=4, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr", mode="w", levels=[1])
    # the existing pyramid is untouched and still complete
    validate_conventions(json.loads((tmp_path / "p.zarr" / "zarr.json").read_text()))


def test_bad_write_arguments_raise_before_writing(tmp_path, raster2d):
    p = create_pyramid(raster2d, levels=2, x_dim="lon", y_dim="lat")
    for kwargs, exc in [({"mode": "x"}, ValueError), ({"max_workers": 0}, ValueError),
                        ({"max_region_bytes": 0}, ValueError), ({"io": "go"}, ValueError),
                        ({"levels": [5]}, ValueError)]:
        with pytest.raises(exc):
            p.write(tmp_path / "p.zarr", **kwargs)
        assert not (tmp_path / "p.zarr").exists()
    with pytest.raises(TypeError, match="cannot write"):
        p.write(12345)
