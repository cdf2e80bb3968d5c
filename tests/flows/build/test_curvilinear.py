"""Curvilinear grids: a spatial dimension placed only by 2-D coordinates is refused at planning time.

Without a 1-D coordinate, a spatial dimension's pixel centres would be its indices (0..n-1); when a
2-D coordinate (``lon(y, x)``) says where the pixels really are, those indices are a silently wrong
georeferencing (an EPSG:4326 ``spatial:bbox`` of [-0.5 .. 95.5] for data spanning -90..90).
topozarr 0.2.1 refuses every 2-D coordinate over the spatial dims ("coordinates ['lon'] are 2-D over
the spatial dims; ... Drop them first"); here 2-D coordinates stay supported as auxiliary
coordinates of a regular grid, and only a dimension that has nothing but them is refused.
"""

from __future__ import annotations

import xproj  # noqa: F401

from tests.helpers.inputs import assert_clear
from tests.helpers.rasters import curvilinear_raster
from topozarr_flows import build_pyramid


def test_the_flow_fails_in_planning_with_that_line(prefect_harness, tmp_path):
    src = tmp_path / "curvi.nc"
    curvilinear_raster(only_x=True).drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    state = build_pyramid(dict(source=str(src), target=str(tmp_path / "p.zarr"), levels=2, x_dim="x", y_dim="y",
                               crs="EPSG:4326"), return_state=True)
    assert state.is_failed()
    msg = str(state.result(raise_on_failure=False))
    assert "curvilinear" in msg and "regrid" in msg, msg
    assert_clear(msg)
    assert not (tmp_path / "p.zarr").exists()
