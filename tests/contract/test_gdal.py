"""GDAL (through the rasterio wheel's bundled GDAL) reads an unsharded level on its own: values
against xarray.coarsen of the source, the geotransform against the source's coordinates, the CRS
from the level's CF grid mapping. Sharded output needs a GDAL with the ``sharding_indexed`` codec:
the bundled GDAL 3.12 refuses it with the error the README quotes; a GDAL >= 3.13 must read it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from tests.helpers.gdal import gdal_name
from tests.helpers.rasters import coarsen_reference, make_raster
from topozarr_core import create_pyramid

rasterio = pytest.importorskip("rasterio")
from rasterio.errors import RasterioIOError  # noqa: E402

GDAL = tuple(int(p) for p in rasterio.__gdal_version__.split(".")[:2])
GDAL_READS_SHARDS = GDAL >= (3, 13)


def expected_transform(ds: xr.Dataset, factor: int, x: str = "lon", y: str = "lat") -> tuple[float, ...]:
    """(a, b, c, d, e, f) from the source's cell centres: the outer edge of the first cell, and
    ``factor`` source cells per level cell."""
    xs, ys = ds[x].values, ds[y].values
    dx, dy = (xs[-1] - xs[0]) / (len(xs) - 1), (ys[-1] - ys[0]) / (len(ys) - 1)
    return (dx * factor, 0.0, xs[0] - dx / 2, 0.0, dy * factor, ys[0] - dy / 2)


@pytest.mark.parametrize("descending_y", [True, False])
@pytest.mark.parametrize("level", [0, 2])
def test_unsharded_level_reads_in_gdal(tmp_path, level, descending_y):
    ds = make_raster(ny=300, nx=420, nan_fraction=0.05, descending_y=descending_y)
    root = tmp_path / "p.zarr"
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", chunks_per_shard=None).write(root)
    doc = json.loads((root / str(level) / "air" / "zarr.json").read_text())
    assert [c["name"] for c in doc["codecs"]][0] != "sharding_indexed"  # really unsharded
    factor = 2 ** level
    ref = coarsen_reference(ds, "air", factor, "mean")
    with rasterio.open(gdal_name(root, level)) as src:
        got = src.read(1)
        assert src.crs == rasterio.crs.CRS.from_epsg(4326)
        assert (src.width, src.height) == (ref.shape[1], ref.shape[0])
        transform = tuple(src.transform)[:6]
        assert np.isnan(src.nodata)
    # storage order, as GDAL reports it: a grid stored south to north gets a positive row step
    np.testing.assert_allclose(transform, expected_transform(ds, factor), rtol=1e-9, atol=1e-9)
    assert (transform[4] < 0) == descending_y
    np.testing.assert_allclose(got, ref, rtol=1e-6, equal_nan=True)
    # and the level's own spatial:transform says the same
    attrs = json.loads((root / str(level) / "zarr.json").read_text())["attributes"]
    np.testing.assert_allclose(attrs["spatial:transform"], transform, rtol=1e-9, atol=1e-9)


def test_projected_crs_and_3d_data_read_in_gdal(tmp_path):
    """A projected CRS without an EPSG code in the metadata path GDAL uses (CF crs_wkt), and a
    3-D variable: GDAL shows one 2-D slice per time step as a band."""
    ny, nx, nt = 128, 160, 3
    x = 500_000 + 250.0 * np.arange(nx)
    y = 5_000_000 - 250.0 * np.arange(ny)
    rng = np.random.default_rng(3)
    values = rng.normal(10, 2, size=(nt, ny, nx)).astype("float32")
    ds = xr.Dataset({"t2m": (("time", "y", "x"), values)},
                    coords={"x": x, "y": y, "time": np.arange(nt).astype("datetime64[D]").astype("datetime64[ns]")})
    root = tmp_path / "utm.zarr"
    create_pyramid(ds, levels=2, x_dim="x", y_dim="y", crs="EPSG:32633", chunks_per_shard=None).write(root)
    with rasterio.open(gdal_name(root, 1, "t2m")) as src:
        assert src.crs.to_epsg() == 32633
        np.testing.assert_allclose(tuple(src.transform)[:6],
                                   expected_transform(ds, 2, "x", "y"), rtol=1e-9)
        assert src.count == nt
        got = src.read()
    ref = ds["t2m"].coarsen(x=2, y=2, boundary="trim").mean().values
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_crs_comes_from_the_cf_grid_mapping(tmp_path):
    """What GDAL 3.12 actually reads for the CRS: the ``grid_mapping`` attribute's variable
    (``crs_wkt``/``spatial_ref``), not the group's ``proj:`` attributes: without the attribute the
    CRS is gone (and the transform still comes from the coordinate arrays)."""
    ds = make_raster(ny=64, nx=96)
    root = tmp_path / "p.zarr"
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat", chunks_per_shard=None).write(root)
    node = root / "0" / "air" / "zarr.json"
    doc = json.loads(node.read_text())
    assert doc["attributes"]["grid_mapping"] == "spatial_ref"
    gm = json.loads((root / "0" / "spatial_ref" / "zarr.json").read_text())["attributes"]
    assert {"crs_wkt", "spatial_ref"} <= set(gm)
    with rasterio.open(gdal_name(root, 0)) as src:
        assert src.crs == rasterio.crs.CRS.from_epsg(4326)
    del doc["attributes"]["grid_mapping"]
    node.write_text(json.dumps(doc))
    with rasterio.open(gdal_name(root, 0)) as src:
        assert src.crs is None
        np.testing.assert_allclose(tuple(src.transform)[:6], expected_transform(ds, 1), rtol=1e-9)


def test_sharded_output_needs_a_gdal_with_the_sharding_codec(tmp_path):
    ds = make_raster(ny=300, nx=420)
    root = tmp_path / "p.zarr"
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", chunks_per_shard=4).write(root)
    assert json.loads((root / "0" / "air" / "zarr.json").read_text())["codecs"][0]["name"] == "sharding_indexed"
    if not GDAL_READS_SHARDS:
        with pytest.raises(RasterioIOError, match="Unsupported codec: sharding_indexed"):
            with rasterio.open(gdal_name(root, 0)) as src:
                src.read(1)
        return
    with rasterio.open(gdal_name(root, 0)) as src:  # pragma: no cover - a newer bundled GDAL
        np.testing.assert_allclose(src.read(1), ds["air"].values, rtol=1e-6, equal_nan=True)
