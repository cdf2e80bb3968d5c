"""Quicklook PNGs: pixels against xarray.coarsen of the source, the colormap's published anchor
colours, transparency of NaN, north up, bad requests named (the flows' image artifact:
tests/flows/runs/test_quicklook.py; in the Prefect UI: tests/browser/test_quicklook_in_the_prefect_ui.py)."""

from __future__ import annotations

import json

import icechunk
import numpy as np
import pytest

from tests.helpers.png import assert_pixels, decode_png
from tests.helpers.rasters import coarsen_reference, make_raster
from topozarr_core import ZarrLayerVarConfig, create_pyramid
from topozarr_core.viewer import colormaps
from topozarr_core.viewer.quicklook import render_quicklook

# -- the colormap table ---------------------------------------------------------------------------

def test_colormap_anchor_colours():
    """Ends and middles against matplotlib's published values (viridis(0.5) = #21918c)."""
    v = colormaps.lut("viridis")
    assert v.shape == (256, 3) and v.dtype == np.uint8
    assert tuple(v[0]) == (68, 1, 84) and tuple(v[255]) == (253, 231, 37)
    assert np.abs(v[128].astype(int) - (33, 145, 140)).max() <= 3
    assert tuple(colormaps.lut("magma")[0]) == (0, 0, 4) and tuple(colormaps.lut("magma")[255]) == (252, 253, 191)
    assert tuple(colormaps.lut("Blues")[255]) == (8, 48, 107)  # ColorBrewer Blues-9 darkest
    np.testing.assert_array_equal(colormaps.lut("blues_r"), colormaps.lut("blues")[::-1])
    assert (np.diff(colormaps.lut("Greys").astype(int), axis=0) <= 0).all()  # monotone white -> black
    assert [tuple(colormaps.lut("gray")[i]) for i in (0, 1, 128, 255)] == [(0, 0, 0), (1, 1, 1), (128,) * 3, (255,) * 3]
    # CarbonPlan's maps (dark mode) as @carbonplan/colormaps 4.0.0 makes them: from its background colour
    for name, last in (("warm", (0xdc, 0xc9, 0x63)), ("greys", (0x9c, 0x9c, 0x9c))):
        assert tuple(colormaps.lut(name)[0]) == (0x1b, 0x1e, 0x23) and tuple(colormaps.lut(name)[255]) == last
    # as written first, then case-insensitively (CarbonPlan's lowercase names first); aliases; _r
    assert [colormaps.canonical(n) for n in ("blues", "Blues", "BLUES", "rdbu_r", "grey", "Turbo")] == [
        ("blues", False), ("Blues", False), ("blues", False), ("RdBu", True), ("gray", False), ("turbo", False)]
    assert {"warm", "earth", "fire", "viridis", "RdBu", "coolwarm", "terrain", "jet", "tab10"} <= set(colormaps.available())
    with pytest.raises(ValueError, match=r"colormap 'nope' is not known; choose one of \["):
        colormaps.lut("nope")


# -- the PNG --------------------------------------------------------------------------------------

@pytest.mark.parametrize("descending_y", [True, False])
def test_png_matches_coarsened_source_north_up(tmp_path, descending_y):
    ds = make_raster(ny=120, nx=160, nt=3, nan_fraction=0.05, descending_y=descending_y)
    hints = {"air": ZarrLayerVarConfig(colormap="blues", clim=[235, 265])}
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", layer_hints=hints).write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"))
    assert (look.variable, look.level, look.colormap, look.clim) == ("air", 2, "blues", (235.0, 265.0))
    assert look.selection == {"time": 0}
    img = decode_png(look.png)
    assert img.shape == (30, 40, 4) and (look.width, look.height) == (40, 30)
    ref = coarsen_reference(ds.isel(time=0), "air", 4, "mean")
    north_up = ref if descending_y else ref[::-1]
    assert_pixels(img, north_up, colormaps.lut("blues"), (235, 265))
    # the source's NaN block is its first rows and columns: north-west when y descends, else south-west
    corner_row = 0 if descending_y else img.shape[0] - 1
    assert img[corner_row, 0, 3] == 0 and img[img.shape[0] - 1 - corner_row, 0, 3] == 255
    # clipping: the field spans more than the hinted clim, so both ends of the map are used
    assert np.nanmin(north_up) < 235 and np.nanmax(north_up) > 265
    opaque = img[img[..., 3] == 255][:, :3]
    blues = colormaps.lut("blues")
    assert (opaque == blues[0]).all(axis=1).any() and (opaque == blues[255]).all(axis=1).any()


def test_defaults_robust_clim_viridis_and_first_time_step(tmp_path):
    ds = make_raster(ny=64, nx=96, nt=2, nan_fraction=0.1)
    ds["air"][1] = 0.0  # a different second step: the quicklook must show the first one
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"))
    ref = coarsen_reference(ds.isel(time=0), "air", 2, "mean")
    lo, hi = np.percentile(ref[np.isfinite(ref)], [2, 98])
    assert look.colormap == "viridis"
    np.testing.assert_allclose(look.clim, (lo, hi), rtol=1e-5)
    assert_pixels(decode_png(look.png), ref, colormaps.lut("viridis"), look.clim)


def test_explicit_level_variable_and_integer_fill_values_are_transparent(tmp_path):
    ds = make_raster(ny=64, nx=64, dtype="uint16")
    ds["air"] = ds["air"].where(ds["lon"] > -50, 0).astype("uint16")
    ds["air"].attrs["_FillValue"] = 0  # declared nodata (an attribute, as the pyramid's readers see it)
    ds["other"] = ds["air"] * 0 + 7
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", method="nearest").write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"), variable="air", level=0, colormap="greys", clim=(200, 300))
    img = decode_png(look.png)
    assert img.shape == (64, 64, 4)
    ref = np.where(ds["air"].values == 0, np.nan, ds["air"].values.astype("f8"))
    assert_pixels(img, ref, colormaps.lut("greys"), (200, 300))
    assert (img[:, 0, 3] == 0).all() and (img[:, -1, 3] == 255).all()


def test_constant_and_empty_fields(tmp_path):
    ds = make_raster(ny=32, nx=32)
    ds["air"][:] = 5.0
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat").write(tmp_path / "c.zarr")
    img = decode_png(render_quicklook(str(tmp_path / "c.zarr")).png)
    assert (img[..., :3] == colormaps.lut("viridis")[128]).all() and (img[..., 3] == 255).all()
    ds["air"][:] = np.nan
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat").write(tmp_path / "e.zarr")
    look = render_quicklook(str(tmp_path / "e.zarr"))
    assert look.clim is None and (decode_png(look.png) == 0).all()


def test_large_levels_are_subsampled(tmp_path):
    ds = make_raster(ny=100, nx=150)
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"), max_side=50)
    assert look.step == 3 and (look.width, look.height) == (50, 34)
    ref = ds["air"].values[::3, ::3]
    assert_pixels(decode_png(look.png), ref, colormaps.lut("viridis"), look.clim)


@pytest.mark.parametrize("hint, described, table", [
    ("nope", "viridis (hint 'nope' is not a known colormap)", "viridis"),  # unknown: viridis, and it says so
    ("warm", "warm", "warm"),  # CarbonPlan's, as zarr-layer pages name them
])
def test_hint_colormaps_known_or_unknown(tmp_path, hint, described, table):
    ds = make_raster(ny=32, nx=32)
    hints = {"air": ZarrLayerVarConfig(colormap=hint, clim=[240, 260])}
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat", layer_hints=hints).write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"))
    assert look.colormap == described
    assert_pixels(decode_png(look.png), ds["air"].values, colormaps.lut(table), (240, 260))


def test_integer_zeros_without_nodata_are_drawn(tmp_path):
    """An integer variable without ``_FillValue`` has no nodata: its zeros are values (sea level),
    also in a pyramid written when such arrays still had zarr's default fill value 0."""
    ds = make_raster(ny=64, nx=64, dtype="int16")
    ds["air"] = ds["air"].where(ds["lon"] > -50, 0).astype("int16")  # the west: real zeros
    assert "_FillValue" not in ds["air"].encoding and (ds["air"].values == 0).sum() > 500
    path = tmp_path / "p.zarr"
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat").write(path)
    ref = ds["air"].values.astype("f8")
    for fill in (-32767, 0):  # as written now; as written before (every chunk is written, so only the doc differs)
        doc = json.loads((path / "0" / "air" / "zarr.json").read_text())
        (path / "0" / "air" / "zarr.json").write_text(json.dumps({**doc, "fill_value": fill}))
        img = decode_png(render_quicklook(str(path), clim=(0, 300)).png)
        assert (img[..., 3] == 255).all(), f"fill_value {fill}: zeros drawn transparent"
        assert_pixels(img, ref, colormaps.lut("viridis"), (0, 300))


def test_bad_requests_name_the_parameter(tmp_path):
    ds = make_raster(ny=32, nx=32)
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr")
    with pytest.raises(ValueError, match=r"variable='temp' is not a gridded variable of the level \(\['air'\]\)"):
        render_quicklook(str(tmp_path / "p.zarr"), variable="temp")
    with pytest.raises(ValueError, match=r"level=5 is not a level of this pyramid \(0\.\.1\)"):
        render_quicklook(str(tmp_path / "p.zarr"), level=5)
    for bad in ((300, 200), (1, 1), (0, float("nan")), "low-high", (1, 2, 3)):
        with pytest.raises(ValueError, match=r"quicklook: clim=.* must be \[min, max\] with finite min < max"):
            render_quicklook(str(tmp_path / "p.zarr"), clim=bad)
    with pytest.raises(ValueError, match="colormap 'jett' is not known"):
        render_quicklook(str(tmp_path / "p.zarr"), colormap="jett")
    ds.to_zarr(tmp_path / "flat.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(ValueError, match="no published pyramid"):
        render_quicklook(str(tmp_path / "flat.zarr"))


def test_icechunk_session_store(tmp_path):
    ds = make_raster(ny=64, nx=64)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(session)
    session.commit("pyramid")
    look = render_quicklook(repo.readonly_session(branch="main").store)
    ref = coarsen_reference(ds, "air", 2, "mean")
    assert_pixels(decode_png(look.png), ref, colormaps.lut("viridis"), look.clim)


def test_s3_target_by_url(tmp_path, s3_env, s3_prefix):
    ds = make_raster(ny=64, nx=64)
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(url)
    look = render_quicklook(url)
    assert_pixels(decode_png(look.png), coarsen_reference(ds, "air", 2, "mean"), colormaps.lut("viridis"), look.clim)
