"""GDAL (the rasterio wheel's) reads the unsharded output of the flow (the core half, values,
geotransform, CRS and the sharding refusal: tests/contract/test_gdal.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.gdal import gdal_name
from tests.helpers.rasters import coarsen_reference, make_raster

rasterio = pytest.importorskip("rasterio")


def test_flow_writes_unsharded_output_gdal_reads(prefect_harness, tmp_path):
    """The flow parameter ``chunks_per_shard: null`` (CLI ``--chunks-per-shard none``)."""
    from topozarr_flows import BuildParams, build_pyramid

    ds = make_raster(ny=200, nx=260, nan_fraction=0.05)
    src_path = tmp_path / "src.nc"
    ds.drop_vars("spatial_ref").to_netcdf(src_path, engine="h5netcdf")
    root = tmp_path / "flow.zarr"
    build_pyramid(BuildParams(source=str(src_path), target=str(root), levels=2, x_dim="lon", y_dim="lat",
                              crs="EPSG:4326", chunks_per_shard=None))
    for level in (0, 1):
        with rasterio.open(gdal_name(root, level)) as src:
            assert src.crs == rasterio.crs.CRS.from_epsg(4326)
            np.testing.assert_allclose(src.read(1), coarsen_reference(ds, "air", 2 ** level, "mean"),
                                       rtol=1e-6, equal_nan=True)
