"""Issue #15 in the flow: a flow build's published pyramid holds no scratch data either (the data and
metadata contract itself: tests/contract/test_topozarr_contract_data.py)."""

from __future__ import annotations

from tests.helpers.levels import assert_exact_means, root_nodes
from tests.helpers.rasters import make_raster


def test_flow_build_holds_no_scratch(prefect_harness, tmp_path):
    from topozarr_flows import BuildParams, build_pyramid

    ds = make_raster(ny=300, nx=360, nan_fraction=0.05)
    src = tmp_path / "src.nc"
    ds.drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    target = tmp_path / "flow.zarr"
    build_pyramid(BuildParams(source=str(src), target=str(target), levels=4, x_dim="lon", y_dim="lat",
                              crs="EPSG:4326"))
    assert root_nodes(target) == ["0", "1", "2", "3"]
    assert_exact_means(target, ds, [1, 2, 4, 8])
