"""Curvilinear grids in the flow: a spatial dimension placed only by 2-D coordinates fails the run in
planning with the core's one line (the core half: tests/core/spec/test_curvilinear.py)."""

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
