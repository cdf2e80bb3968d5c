"""create_pyramid planning rules: factors, shapes, coordinates, encodings and bad input."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

from tests.helpers.rasters import make_raster
from topozarr_core import ZarrLayerVarConfig, create_pyramid, recommend_encoding


def _layout(entry: dict) -> dict:
    """The chunks and shards of an encoding entry (it also carries the dtype and nodata)."""
    return {k: entry[k] for k in ("chunks", "shards") if k in entry}

def _lazy(ny, nx, dtype="f4", nt=None, chunks=-1):
    shape = (ny, nx) if nt is None else (nt, ny, nx)
    dims = ("y", "x") if nt is None else ("time", "y", "x")
    ds = xr.Dataset(
        {"v": (dims, dsa.zeros(shape, dtype=dtype, chunks=chunks))},
        coords={"y": np.arange(ny) * -10.0, "x": np.arange(nx) * 10.0},
    )
    return ds.proj.assign_crs(spatial_ref="EPSG:3857")


def test_levels_equal_powers_of_two_factors(raster2d):
    a = create_pyramid(raster2d, levels=4, x_dim="lon", y_dim="lat")
    b = create_pyramid(raster2d, factors=[1, 2, 4, 8], x_dim="lon", y_dim="lat")
    assert a.factors == b.factors == [1, 2, 4, 8]
    assert a.level_names == ["0", "1", "2", "3"]
    assert a.attrs == b.attrs


def test_level_shapes_trim_like_coarsen(raster2d):
    p = create_pyramid(raster2d, factors=[1, 4, 16], x_dim="lon", y_dim="lat")
    for f, (ny, nx) in zip(p.factors, [p.level_shape(i) for i in range(3)]):
        ref = raster2d.coarsen(lat=f, lon=f, boundary="trim").mean() if f > 1 else raster2d
        assert (ny, nx) == (ref.sizes["lat"], ref.sizes["lon"])
    assert p.level_shape(2) == (300 // 16, 420 // 16)


def test_coarse_coordinates_are_window_means(raster2d):
    p = create_pyramid(raster2d, levels=3, x_dim="lon", y_dim="lat")
    tree = p.as_datatree()
    ref = raster2d.coarsen(lat=4, lon=4, boundary="trim").mean()
    np.testing.assert_allclose(tree["2"].ds.lat.values, ref.lat.values, atol=1e-9)
    np.testing.assert_allclose(tree["2"].ds.lon.values, ref.lon.values, atol=1e-9)


def test_non_spatial_dims_untouched_and_carried_variables(raster3d):
    ds = raster3d.assign(
        station_count=("time", np.arange(4)),
        lat_weight=("lat", np.cos(np.deg2rad(raster3d.lat.values))),
        title=((), 7),
    )
    p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat")
    tree = p.as_datatree()
    lvl = tree["2"].ds
    assert lvl.sizes["time"] == 4
    np.testing.assert_array_equal(lvl.time.values, ds.time.values)
    np.testing.assert_array_equal(lvl.station_count.values, np.arange(4))
    ref = ds.lat_weight.coarsen(lat=4, boundary="trim").mean()
    np.testing.assert_allclose(lvl.lat_weight.values, ref.values)
    assert int(lvl.title) == 7


def test_crs_from_xproj_argument_and_cf_attrs(raster2d):
    assert create_pyramid(raster2d, levels=2, x_dim="lon", y_dim="lat").crs.to_epsg() == 4326
    bare = make_raster(crs=None)
    assert create_pyramid(bare, levels=2, x_dim="lon", y_dim="lat", crs="EPSG:32633").crs.to_epsg() == 32633
    import pyproj

    cf = bare.assign_coords(spatial_ref=((), 0, {"crs_wkt": pyproj.CRS("EPSG:3035").to_wkt()}))
    assert create_pyramid(cf, levels=2, x_dim="lon", y_dim="lat").crs.to_epsg() == 3035


# The layouts below are topozarr 0.2.1's, measured with its create_pyramid on the same datasets.

def test_default_encoding_for_large_float32_grid():
    # one dask chunk of 20000: the shard (4 chunks of 250) divides it, as topozarr snaps
    p = create_pyramid(_lazy(20000, 20000), levels=1)
    assert _layout(p.encoding["/0"]["v"]) == {"chunks": (250, 250), "shards": (1000, 1000)}
    p = create_pyramid(_lazy(20000, 20000).compute(), levels=1)  # unchunked: 56 balanced chunks of 358
    assert _layout(p.encoding["/0"]["v"]) == {"chunks": (358, 358), "shards": (1432, 1432)}


def test_encoding_per_level_with_time_widening():
    p = create_pyramid(_lazy(2048, 2048, nt=32), levels=4)
    assert [_layout(p.encoding[f"/{i}"]["v"]) for i in range(4)] == [
        {"chunks": (1, 256, 256), "shards": (2, 1024, 1024)}, {"chunks": (1, 256, 256), "shards": (2, 1024, 1024)},
        {"chunks": (1, 256, 256), "shards": (2, 512, 512)}, {"chunks": (1, 256, 256), "shards": (32, 256, 256)}]
    # a source chunked by one time step: every time shard divides it
    p = create_pyramid(_lazy(2048, 2048, nt=32, chunks=(1, 2048, 2048)), levels=4)
    assert [p.encoding[f"/{i}"]["v"]["shards"][0] for i in range(4)] == [1, 1, 1, 1]


@pytest.mark.parametrize("cps,shard,unchunked", [(None, None, None), (1, (256, 256), (357, 357)),
                                                  (8, (2048, 2048), (2856, 2856)), (16, (4096, 4096), (5712, 5712))])
def test_chunks_per_shard_values(cps, shard, unchunked):
    enc = create_pyramid(_lazy(8192, 8192), levels=1, chunks_per_shard=cps).encoding["/0"]["v"]
    assert enc["chunks"] == (256, 256)
    assert enc.get("shards") == shard
    enc = create_pyramid(_lazy(8192, 8192).compute(), levels=1, chunks_per_shard=cps).encoding["/0"]["v"]
    assert enc["chunks"] == (357, 357)  # 8192 in 23 balanced chunks
    assert enc.get("shards") == unchunked


def test_uint8_and_float64_chunk_edges():
    assert create_pyramid(_lazy(4096, 4096, "u1"), levels=1).encoding["/0"]["v"]["chunks"] == (512, 512)
    assert create_pyramid(_lazy(4096, 4096, "f8"), levels=1).encoding["/0"]["v"]["chunks"] == (256, 256)


def test_snaps_to_source_chunks():
    p = create_pyramid(_lazy(4096, 4096, chunks=(1024, 1024)), levels=2)
    assert [_layout(e["v"]) for e in p.encoding.values()] == [{"chunks": (256, 256), "shards": (1024, 1024)},
                                                              {"chunks": (256, 256), "shards": (512, 512)}]
    # level-0 regions cover whole source chunks (1024 does not divide the 2048 shard evenly? it does)
    plan = p.region_plan()
    boxes = {r.box for r in plan.levels[0].regions}
    assert all((a % 1024 == 0) for box in boxes for a, _ in box)


def test_level0_regions_widen_to_whole_source_chunks():
    # source chunks 2000 x 4000: shards that divide them, 2 x 250 along y and 2 x 400 along x
    ds = _lazy(4000, 4000, chunks=(2000, 4000))
    p = create_pyramid(ds, levels=1, chunks_per_shard=2)
    assert _layout(p.encoding["/0"]["v"]) == {"chunks": (250, 400), "shards": (500, 800)}
    # y widens to lcm(500, 2000) = 2000 (6.4 MB); widening x too (32 MB) would exceed the budget
    plan = p.region_plan(max_region_bytes=20_000_000)
    regions = [r for r in plan.levels[0].regions]
    assert {r.box[0][1] - r.box[0][0] for r in regions} == {2000}
    assert {r.box[1][1] - r.box[1][0] for r in regions} == {800}
    # a generous budget reads each source chunk exactly once: the shards divide them, one region per chunk
    regions = [r for r in p.region_plan(max_region_bytes=10**9).levels[0].regions]
    assert sorted(r.box for r in regions) == [((0, 2000), (0, 4000)), ((2000, 4000), (0, 4000))]


def test_layer_hints_in_attrs(raster2d):
    p = create_pyramid(raster2d, levels=2, x_dim="lon", y_dim="lat",
                       layer_hints={"air": ZarrLayerVarConfig(colormap="blues", clim=[230, 310])})
    assert p.attrs["zarr-layer"] == {"air": {"colormap": "blues", "clim": [230.0, 310.0]}}


def test_recommend_encoding_flat(raster2d):
    enc = recommend_encoding(raster2d, x_dim="lon", y_dim="lat")
    assert enc == {"air": {"chunks": (300, 210), "shards": (300, 420)}}  # topozarr's: 420 px in 2 chunks


# -- bad input: every case raises at planning time ------------------------------------------------

def _bad_cases(ds):
    import pyproj  # noqa: F401

    nonuni = ds.assign_coords(lon=np.r_[ds.lon.values[:-1], ds.lon.values[-1] + 5])
    nonmono = ds.assign_coords(lat=np.r_[ds.lat.values[1:2], ds.lat.values[:1], ds.lat.values[2:]])
    return [
        (dict(ds=ds, levels=2, x_dim="longitude", y_dim="lat"), ValueError, "not a dimension"),
        (dict(ds=ds, levels=2, x_dim="lon", y_dim="lon"), ValueError, "must differ"),
        (dict(ds=nonuni, levels=2, x_dim="lon", y_dim="lat"), ValueError, "not uniformly spaced"),
        (dict(ds=nonmono, levels=2, x_dim="lon", y_dim="lat"), ValueError, "monotonic"),
        (dict(ds=make_raster(crs=None), levels=2, x_dim="lon", y_dim="lat"), ValueError, "no CRS"),
        (dict(ds=ds, levels=2, x_dim="lon", y_dim="lat", crs="EPSG:999999"), ValueError, "not a valid CRS"),
        (dict(ds=ds, factors=[2, 4], x_dim="lon", y_dim="lat"), ValueError, "start at 1"),
        (dict(ds=ds, factors=[1, 4, 2], x_dim="lon", y_dim="lat"), ValueError, "strictly increasing"),
        (dict(ds=ds, factors=[1, 3, 4], x_dim="lon", y_dim="lat"), ValueError, "divide"),
        (dict(ds=ds, factors=[1, 2.0], x_dim="lon", y_dim="lat"), ValueError, "ints"),  # as in topozarr
        (dict(ds=ds, factors=[], x_dim="lon", y_dim="lat"), ValueError, "empty"),
        (dict(ds=ds, levels=2, factors=[1, 2], x_dim="lon", y_dim="lat"), ValueError, "exactly one"),
        (dict(ds=ds, x_dim="lon", y_dim="lat"), ValueError, "exactly one"),
        (dict(ds=ds, levels=0, x_dim="lon", y_dim="lat"), ValueError, ">= 1"),
        (dict(ds=ds, levels=12, x_dim="lon", y_dim="lat"), ValueError, "too many levels"),
        (dict(ds=ds, levels=2, x_dim="lon", y_dim="lat", chunks_per_shard=3), ValueError, "chunks_per_shard"),
        (dict(ds=ds, levels=2, x_dim="lon", y_dim="lat", chunks_per_shard=64), ValueError, "chunks_per_shard"),
        (dict(ds=ds, levels=2, x_dim="lon", y_dim="lat", method="median"), ValueError, "unknown method"),
        (dict(ds=ds.astype("complex64"), levels=2, x_dim="lon", y_dim="lat"), TypeError, "unsupported dtype"),
        (dict(ds=ds.astype(bool), levels=2, x_dim="lon", y_dim="lat"), TypeError, "unsupported dtype"),
        (dict(ds=xr.Dataset(coords=ds.coords), levels=2, x_dim="lon", y_dim="lat"), ValueError, "no data variables"),
        (dict(ds=ds.drop_vars("air").assign(t=("lat", ds.lat.values)), levels=2, x_dim="lon", y_dim="lat"),
         ValueError, "no data variable has both"),
        (dict(ds=ds, levels=2, x_dim="lon", y_dim="lat", layer_hints={"nope": ZarrLayerVarConfig()}),
         ValueError, "layer_hints"),
        (dict(ds="air.nc", levels=2, x_dim="lon", y_dim="lat"), TypeError, "xarray Dataset"),
        (dict(ds=ds.isel(lat=slice(0, 1)), levels=1, x_dim="lon", y_dim="lat"), ValueError, "at least 2"),
        (dict(ds=ds, levels=10**6, x_dim="lon", y_dim="lat"), ValueError, "too many"),
        (dict(ds=ds, levels=True, x_dim="lon", y_dim="lat"), TypeError, "levels must be an int"),
        (dict(ds=ds.drop_vars("spatial_ref"), levels=2, x_dim="lon", y_dim="lat", crs="EPSG:5703"), ValueError,
         "not a horizontal CRS"),
        (dict(ds=make_raster(ny=64, nx=64, nt=2).isel(time=slice(0, 0)), levels=2, x_dim="lon", y_dim="lat"),
         ValueError, "zero-length 'time' dimension"),
        (dict(ds=ds.assign(air=ds.air.assign_attrs(_FillValue="abc")), levels=2, x_dim="lon", y_dim="lat"),
         ValueError, "variable 'air': attribute _FillValue 'abc' is not a number"),
    ]


@pytest.mark.timeout(60)  # levels=10**6 once hung here: the bound is checked before any factor is computed
@pytest.mark.parametrize("case", range(30))
def test_bad_input_raises_clear_error(raster2d, case):
    kwargs, exc, match = _bad_cases(raster2d)[case]
    ds = kwargs.pop("ds")
    with pytest.raises(exc, match=match) as info:
        create_pyramid(ds, **kwargs)
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)


def test_bad_fill_value_for_int():
    ds = make_raster(dtype="uint8")
    ds.air.attrs["_FillValue"] = 300
    with pytest.raises(ValueError, match="does not fit"):
        create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat")


def test_majority_on_integers_needs_a_fill_value():
    ds = make_raster(dtype="uint8")
    with pytest.raises(ValueError, match="_FillValue"):
        create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", method="majority")
    ds.air.attrs["_FillValue"] = 0
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", method="majority")


def test_zarr_layer_config_validation():
    with pytest.raises(ValueError, match="clim"):
        ZarrLayerVarConfig(clim=[3, 1])
    with pytest.raises(TypeError):
        ZarrLayerVarConfig(colormap=5)


def test_small_level0_regions_grow_along_y_and_x_only():
    """Regions of one small shard grow (doubling) to about MIN_REGION_BYTES, along the spatial dims wherever
    they sit in the variable's dims: a trailing band dim keeps its shard size."""
    from topozarr_core.plan.regions import MIN_REGION_BYTES

    for dims in (("band", "y", "x"), ("y", "x", "band")):
        shape = {"band": 4, "y": 8192, "x": 8192}
        ds = xr.Dataset(
            {"v": (dims, dsa.zeros(tuple(shape[d] for d in dims), dtype="f4",
                                   chunks=tuple(1 if d == "band" else 512 for d in dims)))},
            coords={"y": np.arange(8192) * -10.0, "x": np.arange(8192) * 10.0},
        ).proj.assign_crs(spatial_ref="EPSG:3857")
        p = create_pyramid(ds, levels=1)
        shard = dict(zip(dims, p.encoding["/0"]["v"]["shards"]))
        assert shard["band"] == 1 and shard["y"] * shard["x"] * 4 < MIN_REGION_BYTES, shard
        regions = p.region_plan().levels[0].regions
        sizes = {dict(zip(dims, r.shape())).get("band") for r in regions}
        assert sizes == {1}, (dims, sizes)  # never grown along band
        region = dict(zip(dims, regions[0].shape()))
        assert region["y"] > shard["y"] and region["x"] > shard["x"], (dims, region, shard)
        assert MIN_REGION_BYTES <= region["y"] * region["x"] * 4 <= 2 * MIN_REGION_BYTES, region


def test_small_coarser_level_regions_grow_too():
    """A coarser level's regions group its small shards the same way (a (time, y, x) cube of 512-px
    shards: one region per time step and level, not one per shard), and stay whole shards; a
    ``max_region_bytes`` below two shards keeps them one shard each."""
    from topozarr_core.plan.regions import write_unit

    n = 2048
    ds = xr.Dataset(
        {"v": (("time", "y", "x"), dsa.zeros((8, n, n), dtype="f4", chunks=(1, 512, 512)))},
        coords={"time": np.arange(8), "y": np.arange(n) * -10.0, "x": np.arange(n) * 10.0},
    ).proj.assign_crs(spatial_ref="EPSG:3857")
    p = create_pyramid(ds, levels=4)
    plan = p.region_plan()
    for lp in plan.levels[1:]:
        shard = write_unit(plan.var("v").encodings[lp.level])
        shape = plan.var("v").shapes[lp.level]
        if lp.level < 3:
            assert shard[1] < shape[1], (lp.level, shard, shape)  # several shards per time step ...
        assert lp.n_regions == 8, (lp.level, lp.n_regions)  # ... written as one region
        for r in lp.regions:
            assert all(a % s == 0 for (a, _), s in zip(r.box, shard)), r  # starts on a shard
    one_shard = p.region_plan(max_region_bytes=4 * 256 * 256)
    assert one_shard.levels[1].n_regions > 8
