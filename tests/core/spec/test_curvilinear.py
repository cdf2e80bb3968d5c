"""Curvilinear grids: a spatial dimension placed only by 2-D coordinates is refused at planning time.

Without a 1-D coordinate, a spatial dimension's pixel centres would be its indices (0..n-1); when a
2-D coordinate (``lon(y, x)``) says where the pixels really are, those indices are a silently wrong
georeferencing (an EPSG:4326 ``spatial:bbox`` of [-0.5 .. 95.5] for data spanning -90..90).
topozarr 0.2.1 refuses every 2-D coordinate over the spatial dims ("coordinates ['lon'] are 2-D over
the spatial dims; ... Drop them first"); here 2-D coordinates stay supported as auxiliary
coordinates of a regular grid, and only a dimension that has nothing but them is refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import xproj  # noqa: F401

from tests.helpers.rasters import curvilinear_raster
from topozarr_core import create_pyramid


@pytest.mark.parametrize("only_x", [True, False])
def test_a_dimension_placed_only_by_2d_coordinates_is_refused(only_x):
    ds = curvilinear_raster(only_x)
    with pytest.raises(ValueError) as info:
        create_pyramid(ds, levels=2, x_dim="x", y_dim="y")
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert "'lon'" in msg and "curvilinear" in msg and "regrid" in msg, msg
    assert ("x_dim='x'" if only_x else "y_dim='y'") in msg, msg  # y, checked first, is curvilinear too


def test_2d_auxiliary_coordinates_of_a_regular_grid_are_still_pyramided(tmp_path):
    """A regular projected grid (1-D x/y) with 2-D lon/lat beside it: accepted, the extent is x/y's."""
    ny, nx = 32, 48
    x = 500_000 + 1000 * np.arange(nx) + 500.0
    y = 4_000_000 - 1000 * np.arange(ny) - 500.0
    xx, yy = np.meshgrid(x, y)
    ds = xr.Dataset({"t": (("y", "x"), np.ones((ny, nx), "f4"))},
                    coords={"x": x, "y": y, "lon": (("y", "x"), xx / 1e5), "lat": (("y", "x"), yy / 1e5)})
    ds = ds.proj.assign_crs(spatial_ref="EPSG:32633")
    create_pyramid(ds, levels=2).write(tmp_path / "p.zarr")
    root = json.loads((tmp_path / "p.zarr" / "zarr.json").read_text())["attributes"]
    assert root["spatial:bbox"] == [500_000.0, 3_968_000.0, 548_000.0, 4_000_000.0]
    level1 = xr.open_zarr(tmp_path / "p.zarr", group="1", consolidated=False)
    np.testing.assert_allclose(level1.lon.values, ds.lon.coarsen(y=2, x=2).mean().values)
