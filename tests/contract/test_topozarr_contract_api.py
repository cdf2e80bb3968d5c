"""Issue #15, public-API half: a topozarr 0.2.1 user switches by changing one import.

Each test pins one item of topozarr's documented API with concrete values, on real local and
Icechunk stores, against independent references (``xarray.coarsen`` for values, the convention
JSON schemas for the root metadata).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import dask.array as dsa
import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr

from tests.helpers.inputs import tree_state
from tests.helpers.rasters import coarsen_reference, make_raster
from tests.helpers.schemas import validate_conventions
from topozarr_core import (
    CoarseningMethod,
    ZarrLayerVarConfig,
    create_pyramid,
    recommend_encoding,
    validate_pyramid,
)
from topozarr_core.kernels.reduce import METHODS
from topozarr_core.spec.pyramid_spec import auto_levels

XY = dict(x_dim="lon", y_dim="lat")


def root_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


# -- pyramid.encoding / pyramid.attrs: real, editable plans -----------------------------------------

def edited(ds: xr.Dataset) -> object:
    """A 3-level pyramid of a 300x420 float32 raster with levels 0 and 1 re-chunked by hand."""
    pyramid = create_pyramid(ds, levels=3, **XY)
    pyramid.encoding["/0"]["air"] = {"chunks": (64, 64), "shards": (128, 192)}
    pyramid.encoding["/1"]["air"]["chunks"] = (50, 50)
    pyramid.encoding["/1"]["air"]["shards"] = (100, 150)
    pyramid.attrs["title"] = "edited by the user"
    return pyramid


def test_encoding_and_attrs_are_stored_once_and_keep_edits(raster2d):
    pyramid = create_pyramid(raster2d, levels=3, **XY)
    assert pyramid.encoding is pyramid.encoding and pyramid.attrs is pyramid.attrs
    # topozarr's entries: chunks and shards, nothing else (a float variable's nodata is NaN)
    assert pyramid.encoding["/1"]["air"] == {"chunks": (150, 210), "shards": (150, 210)}
    pyramid.encoding["/1"]["air"]["chunks"] = (50, 50)
    pyramid.encoding["/1"]["air"]["shards"] = (100, 150)
    pyramid.attrs["title"] = "kept"
    assert {k: pyramid.encoding["/1"]["air"][k] for k in ("chunks", "shards")} == {"chunks": (50, 50),
                                                                                  "shards": (100, 150)}
    assert pyramid.attrs["title"] == "kept"
    assert pyramid.spec.variables[0].encodings[1].chunks == (50, 50)
    # the plan of every executor (thread pool, Prefect batches, Dask) is built from the edited spec
    plan = pyramid.region_plan()
    assert plan.var("air").encodings[1].chunks == (50, 50)


@pytest.mark.parametrize("keep", [True, False])
def test_write_honours_edited_encoding_and_attrs(tmp_path, raster2d, keep):
    pyramid = edited(raster2d)
    plan = pyramid.region_plan(max_region_bytes=100_000)  # one shard per region (60 kB; not grouped)
    assert {r.shape() for r in plan.levels[1].regions} == {(100, 150), (50, 150), (100, 60),
                                                                               (50, 60)}
    target = tmp_path / "p.zarr"
    pyramid.write(str(target), keep_levels_in_memory=keep)
    for level, chunks, shards in [(0, (64, 64), (128, 192)), (1, (50, 50), (100, 150)), (2, (75, 105), (75, 105))]:
        arr = zarr.open_array(str(target / str(level) / "air"), mode="r")
        assert (arr.chunks, arr.shards) == (chunks, shards)
        np.testing.assert_allclose(arr[:], coarsen_reference(raster2d, "air", 2**level, "mean"), rtol=1e-6)
    attrs = root_attrs(target)
    assert attrs["title"] == "edited by the user"
    validate_conventions({"zarr_format": 3, "node_type": "group", "attributes": attrs})
    report = validate_pyramid(pyramid, str(target))
    assert not report.mismatches and not report.schema_errors


def test_as_datatree_honours_edited_encoding_and_attrs(tmp_path, raster2d):
    pyramid = edited(raster2d)
    tree = pyramid.as_datatree()
    assert tree.attrs["title"] == "edited by the user"
    target = tmp_path / "dt.zarr"
    tree.to_zarr(str(target), zarr_format=3, consolidated=False, encoding=pyramid.encoding)
    arr = zarr.open_array(str(target / "1" / "air"), mode="r")
    assert (arr.chunks, arr.shards) == ((50, 50), (100, 150))
    np.testing.assert_allclose(arr[:], coarsen_reference(raster2d, "air", 2, "mean"), rtol=1e-6)
    assert zarr.open_array(str(target / "0" / "air"), mode="r").shards == (128, 192)


def test_initialise_and_publish_honour_edits_on_icechunk(tmp_path, raster2d):
    pyramid = edited(raster2d)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    pyramid.write(session.store)
    session.commit("edited pyramid")
    ro = repo.readonly_session("main").store
    arr = zarr.open_array(ro, path="1/air", mode="r")
    assert (arr.chunks, arr.shards) == ((50, 50), (100, 150))
    np.testing.assert_allclose(arr[:], coarsen_reference(raster2d, "air", 2, "mean"), rtol=1e-6)
    assert zarr.open_group(ro, mode="r").attrs["title"] == "edited by the user"

    # the flows' two steps: initialise (arrays with the edited layout), publish (the edited root)
    store = tmp_path / "steps.zarr"
    pyramid.initialise(str(store))
    assert zarr.open_array(str(store / "1" / "air"), mode="r").chunks == (50, 50)
    assert "multiscales" not in root_attrs(store)
    pyramid.publish(str(store))
    assert root_attrs(store)["title"] == "edited by the user" and "multiscales" in root_attrs(store)


def test_chunks_larger_than_the_level_are_kept_as_zarr_allows(tmp_path, raster2d):
    pyramid = create_pyramid(raster2d, levels=3, **XY)
    pyramid.encoding["/2"]["air"] = {"chunks": (100, 200), "shards": None}  # level 2 is 75x105
    pyramid.write(str(tmp_path / "p.zarr"))
    arr = zarr.open_array(str(tmp_path / "p.zarr" / "2" / "air"), mode="r")
    assert (arr.shape, arr.chunks, arr.shards) == ((75, 105), (100, 200), None)
    np.testing.assert_allclose(arr[:], coarsen_reference(raster2d, "air", 4, "mean"), rtol=1e-6)


def _bad_edits():
    return [
        (lambda e: e["/1"]["air"].update(shards=(75, 105)), ValueError,
         r"pyramid.encoding\['/1'\]\['air'\]\['shards'\] \(75, 105\) is not a multiple of chunks \(50, 50\) along 'lat'"),
        (lambda e: e["/1"]["air"].update(chunks=(0, 50)), ValueError,
         r"\['/1'\]\['air'\]\['chunks'\] \(0, 50\): the size along 'lat' must be positive"),
        (lambda e: e["/0"]["air"].update(chunks=(-4, 50), shards=None), ValueError, r"\['/0'\]\['air'\]\['chunks'\]"),
        (lambda e: e.update({"/3": {}}), ValueError, r"unknown level '/3'"),
        (lambda e: e.pop("/2"), ValueError, r"no entry for level '/2'"),
        (lambda e: e["/1"].update(sst={"chunks": (1, 1)}), ValueError, r"\['/1'\] names an unknown variable 'sst'"),
        (lambda e: e["/1"].pop("air"), ValueError, r"\['/1'\] has no entry for variable 'air'"),
        (lambda e: e["/1"]["air"].update(compressors=None), ValueError,
         r"\['/1'\]\['air'\] has an unknown key 'compressors'; editable keys: chunks, shards"),
        (lambda e: e["/1"]["air"].update(chunks=(50,)), ValueError, r"\['chunks'\] \(50,\) has 1 entries"),
        (lambda e: e["/1"]["air"].update(chunks=(50, 2.5)), TypeError, r"size along 'lon' must be an int"),
        (lambda e: e["/1"]["air"].pop("chunks"), ValueError, r"\['/1'\]\['air'\] has no 'chunks'"),
        (lambda e: e["/1"].update(air=[50, 50]), TypeError, r"\['/1'\]\['air'\] must be a dict"),
    ]


@pytest.mark.parametrize("case", range(12))
def test_a_bad_edit_is_a_one_line_error_before_anything_is_written(tmp_path, raster2d, case):
    edit, exc, match = _bad_edits()[case]
    target = tmp_path / "p.zarr"
    create_pyramid(raster2d, levels=3, **XY).write(str(target))  # an existing pyramid of ours
    before = tree_state(target)
    pyramid = create_pyramid(raster2d, levels=3, **XY)
    pyramid.encoding["/1"]["air"] = {"chunks": (50, 50), "shards": (100, 150)}
    edit(pyramid.encoding)
    for attempt in (lambda: pyramid.write(str(target)), lambda: pyramid.write(str(tmp_path / "new.zarr")),
                    lambda: pyramid.initialise(str(tmp_path / "new.zarr")), lambda: pyramid.region_plan(),
                    lambda: pyramid.as_datatree()):
        with pytest.raises(exc, match=match) as err:
            attempt()
        one_line(err)
    assert tree_state(target) == before
    assert not (tmp_path / "new.zarr").exists()


def test_an_unstorable_attrs_edit_is_refused_before_anything_is_written(tmp_path, raster2d):
    pyramid = create_pyramid(raster2d, levels=2, **XY)
    pyramid.attrs["bad"] = {1, 2}
    with pytest.raises(ValueError, match=r"pyramid.attrs\['bad'\] cannot be stored") as err:
        pyramid.write(str(tmp_path / "p.zarr"))
    one_line(err)
    assert not (tmp_path / "p.zarr").exists()


# -- levels="auto", min_dim ----------------------------------------------------------------------------

def lazy_raster(ny: int, nx: int) -> xr.Dataset:
    """A float32 raster of any size, never computed (dask zeros)."""
    data = dsa.zeros((ny, nx), dtype="f4", chunks=(min(ny, 4096), min(nx, 4096)))
    ds = xr.Dataset({"air": (("lat", "lon"), data)},
                    coords={"lat": np.linspace(80, -80, ny), "lon": np.linspace(-170, 170, nx)})
    return ds.proj.assign_crs(spatial_ref="EPSG:4326")


@pytest.mark.parametrize("ny, nx, min_dim, levels", [
    (20000, 20000, None, 7), (511, 700, None, 1), (512, 512, None, 2), (4096, 4096, 100, 6),
    (700, 20000, None, 2), (255, 300, None, 1),
])
def test_levels_auto(ny, nx, min_dim, levels):
    kwargs = {} if min_dim is None else {"min_dim": min_dim}
    pyramid = create_pyramid(lazy_raster(ny, nx), levels="auto", **kwargs, **XY)
    assert pyramid.levels == levels
    assert pyramid.factors == [2**i for i in range(levels)]
    assert auto_levels(ny, nx, min_dim or 256) == levels
    # the rule: one more level while the smaller side // 2**levels stays >= min_dim
    side = min(ny, nx)
    assert side // 2 ** (levels - 1) >= (min_dim or 256) or levels == 1
    assert side // 2**levels < (min_dim or 256)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(levels="auto", factors=[1, 2]), ValueError, "exactly one"),
    (dict(levels="many"), ValueError, "levels must be an int or 'auto'"),
    (dict(levels="auto", min_dim=0), ValueError, "min_dim must be a positive int"),
    (dict(levels="auto", min_dim=2.5), ValueError, "min_dim must be a positive int"),
])
def test_levels_auto_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match) as err:
        create_pyramid(lazy_raster(600, 600), **kwargs, **XY)
    one_line(err)


# -- the Pyramid's topozarr attributes --------------------------------------------------------------

def test_source_dims_method_fill_values_and_coarsening_method():
    ds = make_raster(ny=64, nx=96, dtype="uint16")
    ds["air"].attrs["_FillValue"] = 0
    ds["t2"] = ds["air"].astype("float32")
    del ds["t2"].attrs["_FillValue"]
    pyramid = create_pyramid(ds, levels=2, method="max", **XY)
    assert pyramid.source is pyramid.ds and pyramid.source["air"].dtype == np.uint16
    assert (pyramid.x_dim, pyramid.y_dim, pyramid.method) == ("lon", "lat", "max")
    assert pyramid.fill_values["air"] == 0
    assert np.isnan(pyramid.fill_values["t2"]) and set(pyramid.fill_values) == {"air", "t2"}
    assert get_args(CoarseningMethod) == tuple(METHODS)


def test_method_is_editable_and_checked_before_anything_is_written(tmp_path, raster2d):
    """topozarr's ``method`` is a plain field: edited after planning, it is re-checked at write time."""
    pyramid = create_pyramid(raster2d, levels=3, **XY)
    pyramid.method = "max"
    assert pyramid.method == "max"
    assert pyramid.attrs["multiscales"]["resampling_method"] == "max"  # the root follows the edit
    assert [e.get("resampling_method") for e in pyramid.attrs["multiscales"]["layout"]] == [None, "max", "max"]
    pyramid.write(str(tmp_path / "max.zarr"))
    for level in (1, 2):
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "max.zarr" / str(level) / "air"), mode="r")[:],
                                      coarsen_reference(raster2d, "air", 2**level, "max"))
    assert root_attrs(tmp_path / "max.zarr")["multiscales"]["resampling_method"] == "max"
    assert root_attrs(tmp_path / "max.zarr")["topozarr:options"]["method"] == "max"
    # an unknown method: refused when the plan is used, before the target changes
    pyramid.method = "median"
    for attempt in (lambda: pyramid.write(str(tmp_path / "bad.zarr")), lambda: pyramid.as_datatree(),
                    lambda: pyramid.region_plan()):
        with pytest.raises(ValueError, match=r"unknown method 'median'; choose one of") as err:
            attempt()
        one_line(err)
    assert not (tmp_path / "bad.zarr").exists()
    # what a method implies is checked too: majority on integers needs a nodata value
    ints = create_pyramid(make_raster(ny=64, nx=64, dtype="int16"), levels=2, **XY)
    ints.method = "majority"
    with pytest.raises(ValueError, match="method='majority' on integer variable 'air' needs a _FillValue"):
        ints.write(str(tmp_path / "ints.zarr"))
    assert not (tmp_path / "ints.zarr").exists()
    ints.method = "sum"  # an integer sum widens, as when planned with it
    ints.write(str(tmp_path / "sum.zarr"))
    assert zarr.open_array(str(tmp_path / "sum.zarr" / "1" / "air"), mode="r").dtype == np.int64


def test_level_templates_are_lazy_and_match_what_is_written(tmp_path, raster3d):
    pyramid = create_pyramid(raster3d, levels=3, **XY)
    templates = pyramid.level_templates
    assert sorted(templates) == [0, 1, 2]
    target = tmp_path / "p.zarr"
    pyramid.write(str(target))
    for level, template in templates.items():
        assert isinstance(template["air"].data, dsa.Array)  # a placeholder, never computed here
        written = xr.open_zarr(str(target), group=str(level), consolidated=False)
        assert dict(template.sizes) == dict(written.sizes)
        assert template["air"].shape == (4, 300 // 2**level, 420 // 2**level)
        assert template["air"].dtype == written["air"].dtype == np.float32
        for name in ("lat", "lon", "time"):
            np.testing.assert_array_equal(template[name].values, written[name].values)
        np.testing.assert_allclose(written["lat"].values, raster3d.lat.coarsen(lat=2**level, boundary="trim").mean(),
                                   rtol=1e-12, atol=1e-9)
        assert template["air"].attrs["units"] == written["air"].attrs["units"] == "K"
        assert template.attrs == dict(written.attrs)


# -- write(stats=True) ---------------------------------------------------------------------------------

def test_write_stats_per_level(tmp_path, raster2d):
    pyramid = create_pyramid(raster2d, levels=3, **XY)
    plan = pyramid.region_plan()
    report = pyramid.write(str(tmp_path / "p.zarr"), stats=True)
    # topozarr's returned dict: keys, membership, length, JSON, equality with a plain dict
    assert isinstance(report, dict) and set(report) == {"0", "1", "2"} and "0" in report and len(report) == 3
    assert json.loads(json.dumps(report)) == json.loads(json.dumps(report.stats)) and report == report.stats
    assert all(set(row) == {"workers", "region_shapes", "wall_s", "regions", "skipped", "bytes", "read_s",
                            "reduce_s", "write_s"} and row["skipped"] == 0 for row in report.values())
    for lp in plan.levels:
        row = report[str(lp.level)]
        assert row["regions"] == lp.n_regions
        for key in ("read_s", "reduce_s", "write_s", "wall_s"):
            assert isinstance(row[key], float) and row[key] >= 0
        assert row["workers"] == report.workers
        assert row["region_shapes"]["air"] == lp.regions[0].shape()
    assert report["0"]["bytes"] == 300 * 420 * 4 and report["1"]["bytes"] == 150 * 210 * 4
    assert sum(row["bytes"] for _, row in report.items()) == report.bytes_written
    assert report["0"]["write_s"] > 0 and report["1"]["write_s"] > 0
    assert create_pyramid(raster2d, levels=3, **XY).write(str(tmp_path / "q.zarr")) is None  # as topozarr


# -- write(levels=[0]) into a fresh target --------------------------------------------------------------

@pytest.mark.parametrize("fresh", ["missing", "empty dir"])
def test_write_level_0_into_a_fresh_target_then_the_rest(tmp_path, raster2d, fresh):
    target = tmp_path / "p.zarr"
    if fresh == "empty dir":
        target.mkdir()
    pyramid = create_pyramid(raster2d, levels=3, **XY)
    report = pyramid.write(str(target), levels=[0], stats=True)
    assert report.levels == [0] and report.published is False
    attrs = root_attrs(target)
    # the layout exists, level 0 holds the source, and the root is not published over missing levels
    assert "multiscales" not in attrs and attrs["topozarr:status"] == "incomplete"
    assert attrs["topozarr:levels_written"] == [0]
    assert [e["asset"] for e in attrs["topozarr:multiscales"]["layout"]] == ["0", "1", "2"]
    np.testing.assert_array_equal(zarr.open_array(str(target / "0" / "air"), mode="r")[:], raster2d.air.values)
    level2 = zarr.open_array(str(target / "2" / "air"), mode="r")
    assert level2.shape == (75, 105) and np.isnan(level2[:]).all()

    before = tree_state(target)
    with pytest.raises(ValueError, match="level 1 of the target was never written") as err:
        pyramid.write(str(target), mode="a", levels=[2])
    one_line(err)
    assert tree_state(target) == before

    assert pyramid.write(str(target), mode="a", levels=[1], stats=True).published is False
    assert root_attrs(target)["topozarr:levels_written"] == [0, 1]
    assert pyramid.write(str(target), mode="a", levels=[2], stats=True).published is True
    attrs = root_attrs(target)
    assert "topozarr:status" not in attrs and "topozarr:levels_written" not in attrs
    validate_conventions({"zarr_format": 3, "node_type": "group", "attributes": attrs})
    assert not validate_pyramid(pyramid, str(target)).mismatches
    for level in range(3):
        np.testing.assert_allclose(zarr.open_array(str(target / str(level) / "air"), mode="r")[:],
                                   coarsen_reference(raster2d, "air", 2**level, "mean"), rtol=1e-6)


def test_write_some_levels_with_mode_w_over_existing_data_is_refused(tmp_path, raster2d):
    target = tmp_path / "p.zarr"
    pyramid = create_pyramid(raster2d, levels=3, **XY)
    pyramid.write(str(target))
    before = tree_state(target)
    with pytest.raises(ValueError, match="pass mode='a'") as err:
        pyramid.write(str(target), levels=[0])
    one_line(err)
    assert tree_state(target) == before


# -- ZarrLayerVarConfig, factors, recommend_encoding ----------------------------------------------------

def test_zarr_layer_var_config_takes_clim_then_colormap(tmp_path, raster2d):
    hint = ZarrLayerVarConfig([230, 310], "blues")
    assert (hint.clim, hint.colormap) == ([230.0, 310.0], "blues")
    assert hint == ZarrLayerVarConfig(colormap="blues", clim=[230, 310])
    pyramid = create_pyramid(raster2d, levels=2, layer_hints={"air": hint}, **XY)
    pyramid.write(str(tmp_path / "p.zarr"))
    assert root_attrs(tmp_path / "p.zarr")["zarr-layer"]["air"] == {"clim": [230.0, 310.0],
                                                                                  "colormap": "blues"}


@pytest.mark.parametrize("factors", [[1, 2.0], [1, True], [1, "2"]])
def test_non_int_factors_are_a_value_error(raster2d, factors):
    with pytest.raises(ValueError, match="factors must be ints") as err:
        create_pyramid(raster2d, factors=factors, **XY)
    one_line(err)


def test_recommend_encoding_on_a_one_pixel_dimension(tmp_path):
    ds = xr.Dataset({"air": (("lat", "lon"), np.arange(5000, dtype="f4")[None, :])},
                    coords={"lat": [10.0], "lon": np.arange(5000.0)})
    enc = recommend_encoding(ds, x_dim="lon", y_dim="lat")
    assert enc == {"air": {"chunks": (1, 358), "shards": (1, 1432)}}
    ds.to_zarr(str(tmp_path / "flat.zarr"), zarr_format=3, consolidated=False, encoding=enc)
    arr = zarr.open_array(str(tmp_path / "flat.zarr" / "air"), mode="r")
    assert (arr.chunks, arr.shards) == ((1, 358), (1, 1432))
    np.testing.assert_array_equal(arr[:], ds.air.values)


def test_recommend_encoding_on_non_uniform_coordinates():
    ds = make_raster(crs=None)
    irregular = ds.assign_coords(lon=np.cumsum(np.linspace(0.1, 2.0, ds.sizes["lon"])))
    with pytest.raises(ValueError, match="not uniformly spaced"):
        create_pyramid(irregular, levels=2, crs="EPSG:4326", **XY)  # a pyramid needs a regular grid
    enc = recommend_encoding(irregular, x_dim="lon", y_dim="lat")
    assert enc == {"air": {"chunks": (300, 210), "shards": (300, 420)}}  # topozarr 0.2.1's for 300 x 420 float32
    assert enc == recommend_encoding(ds, x_dim="lon", y_dim="lat")
    with pytest.raises(ValueError, match="x_dim='x' is not a dimension"):
        recommend_encoding(irregular)


# -- defaults, and what is refused or accepted where topozarr differs ----------------------------------

def test_defaults_are_topozarrs():
    """topozarr 0.2.1's defaults (its signatures, measured): every one topozarr has is the same here."""
    import inspect

    from topozarr_core import Pyramid

    def defaults(fn) -> dict:
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}

    topozarr = {
        create_pyramid: {"levels": None, "factors": None, "min_dim": 256, "x_dim": "x", "y_dim": "y",
                         "method": "mean", "target_chunk_bytes": 524288, "chunks_per_shard": 4, "layer_hints": None},
        recommend_encoding: {"x_dim": "x", "y_dim": "y", "target_chunk_bytes": 524288, "chunks_per_shard": 4},
        Pyramid.write: {"mode": "w", "max_workers": None, "levels": None, "max_region_bytes": 268435456,
                        "progress": False, "stats": False, "keep_levels_in_memory": None},
    }
    for fn, theirs in topozarr.items():
        ours = defaults(fn)
        assert {k: ours[k] for k in theirs} == theirs, fn.__qualname__
    # the arguments only this project has
    assert set(defaults(create_pyramid)) - set(topozarr[create_pyramid]) == {"crs", "pack"}
    assert set(defaults(Pyramid.write)) - set(topozarr[Pyramid.write]) == {"io", "overwrite_foreign", "max_tile_bytes"}


def test_refused_here_and_accepted_by_topozarr(raster2d):
    """What topozarr 0.2.1 accepts (measured: levels=True plans 1 level, x_dim == y_dim and complex data plan
    a pyramid, an unknown layer_hints variable lands in the root) is refused here, at planning time."""
    cases = [
        (dict(levels=True, **XY), TypeError, "levels must be an int, got bool"),
        (dict(levels=2, x_dim="lon", y_dim="lon"), ValueError, "x_dim and y_dim must differ"),
        (dict(levels=2, layer_hints={"nope": ZarrLayerVarConfig()}, **XY), ValueError, "layer_hints names 'nope'"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match) as err:
            create_pyramid(raster2d, **kwargs)
        one_line(err)
    with pytest.raises(TypeError, match="unsupported dtype complex64") as err:
        create_pyramid(raster2d.astype("complex64"), levels=2, **XY)  # topozarr fails in write, level 0 written
    one_line(err)
    hint = ZarrLayerVarConfig(clim=[1, 2])  # topozarr's is a mutable dataclass that takes any clim
    with pytest.raises(AttributeError):
        hint.clim = [0, 5]
    with pytest.raises(ValueError, match=r"clim must be \[min, max\] with min < max"):
        ZarrLayerVarConfig(clim=[5, 1])


def test_root_metadata_follows_the_convention_schemas(tmp_path):
    """Where the root differs from topozarr 0.2.1's (measured: resampling "mean", a transform per dataset
    dim and none at level 0, both proj:code and proj:wkt2, v0.1 convention entries), it is what the
    bundled schemas and the multiscales convention's geospatial example say."""
    ds = xr.Dataset({"air": (("time", "lat", "lon"), np.zeros((2, 8, 8), "f4"))},
                    coords={"time": [0, 1], "lat": np.arange(8.0), "lon": np.arange(8.0)})
    pyramid = create_pyramid(ds.proj.assign_crs(spatial_ref="EPSG:4326"), levels=2, **XY)
    pyramid.write(str(tmp_path / "p.zarr"))
    attrs = root_attrs(tmp_path / "p.zarr")
    layout = attrs["multiscales"]["layout"]
    assert attrs["multiscales"]["resampling_method"] == layout[1]["resampling_method"] == "average"
    assert [e["transform"] for e in layout] == [{"scale": [1.0, 1.0], "translation": [0.0, 0.0]},
                                                {"scale": [2.0, 2.0], "translation": [0.0, 0.0]}]
    raw = "https://raw.githubusercontent.com"
    assert [(c["name"], c["schema_url"]) for c in attrs["zarr_conventions"]] == [
        ("multiscales", f"{raw}/zarr-conventions/multiscales/refs/tags/v1/schema.json"),
        ("spatial", f"{raw}/zarr-conventions/spatial/refs/tags/v0.1/schema.json"),
        ("proj:", f"{raw}/zarr-experimental/geo-proj/refs/tags/v1/schema.json")]
    assert attrs["proj:code"] == "EPSG:4326" and "proj:wkt2" not in attrs
    validate_conventions({"zarr_format": 3, "node_type": "group", "attributes": attrs})
    pyramid.method = "majority"
    assert pyramid.attrs["multiscales"]["resampling_method"] == "mode"


def test_accepted_here_and_refused_by_topozarr(tmp_path):
    """topozarr 0.2.1 refuses 5-D variables, has no crs= and takes mode by keyword only; its write fails on
    int8, uint32, uint64 and float16 after writing level 0 (measured). All work here."""
    values = np.arange(2 * 2 * 2 * 8 * 8, dtype="f4").reshape(2, 2, 2, 8, 8)
    ds = xr.Dataset({"air": (("a", "b", "c", "lat", "lon"), values)},
                    coords={"lat": np.arange(8.0), "lon": np.arange(8.0)})
    pyramid = create_pyramid(ds, levels=2, crs="EPSG:4326", **XY)
    pyramid.write(str(tmp_path / "5d.zarr"), "w")
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "5d.zarr" / "1" / "air"), mode="r")[:],
                               ds.air.coarsen(lat=2, lon=2).mean().values)
    for dtype in ("i1", "u4", "u8", "f2"):
        flat = xr.Dataset({"air": (("lat", "lon"), np.ones((8, 8), dtype))},
                          coords={"lat": np.arange(8.0), "lon": np.arange(8.0)})
        create_pyramid(flat, levels=2, crs="EPSG:4326", **XY).write(str(tmp_path / f"{dtype}.zarr"))
        level1 = zarr.open_array(str(tmp_path / f"{dtype}.zarr" / "1" / "air"), mode="r")
        assert level1.dtype == np.dtype(dtype) and (level1[:] == 1).all()
    assert recommend_encoding(xr.Dataset({"m": (("lat", "lon"), np.zeros((8, 8), bool))}), **XY) == {
        "m": {"chunks": (8, 8), "shards": (8, 8)}}  # a bool mask gets an encoding, as in topozarr
