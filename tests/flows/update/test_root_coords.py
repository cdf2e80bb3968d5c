"""The update and Icechunk flows carry the root copies of the level-0 coordinates (``/time`` beside
``/0/time``); the copies themselves: tests/core/publish/test_root_coords.py."""

from __future__ import annotations

import icechunk
import zarr

from tests.helpers.root_coords import ROOT_KW, assert_copy_current, root_raster


def test_update_flow_refreshes_the_copy(prefect_harness, tmp_path):
    from topozarr_flows import BuildParams, UpdateParams, build_pyramid
    from topozarr_flows import update_pyramid as update_flow

    full = root_raster(nt=7)
    paths = {}
    for name, n in (("part", 4), ("whole", 7)):
        paths[name] = str(tmp_path / f"{name}.nc")
        full.isel(time=slice(0, n)).drop_vars("spatial_ref").to_netcdf(paths[name], engine="h5netcdf")
    target = tmp_path / "flow.zarr"
    build_pyramid(BuildParams(source=paths["part"], target=str(target), levels=3, crs="EPSG:4326",
                              **ROOT_KW))
    assert_copy_current(str(target), full.isel(time=slice(0, 4)), "build flow")
    result = update_flow(UpdateParams(source=paths["whole"], target=str(target)))
    assert result["changed"] and result["new_length"] == 7
    assert_copy_current(str(target), full, "update flow")
    assert zarr.open_array(str(target), path="time", mode="r").shape == (7,)


def test_icechunk_flows_carry_the_copy(prefect_harness, tmp_path):
    from topozarr_flows import BuildParams, UpdateParams, build_pyramid
    from topozarr_flows import update_pyramid as update_flow

    full = root_raster(nt=5)
    paths = {}
    for name, n in (("part", 3), ("whole", 5)):
        paths[name] = str(tmp_path / f"{name}.nc")
        full.isel(time=slice(0, n)).drop_vars("spatial_ref").to_netcdf(paths[name], engine="h5netcdf")
    repo_path = tmp_path / "repo"
    storage = icechunk.local_filesystem_storage(str(repo_path))
    icechunk.Repository.create(storage)
    build_pyramid(BuildParams(source=paths["part"], target=str(repo_path), target_format="icechunk", levels=3,
                              crs="EPSG:4326", **ROOT_KW))
    repo = icechunk.Repository.open(storage)
    assert_copy_current(repo.readonly_session("main").store, full.isel(time=slice(0, 3)), "icechunk build flow")
    update_flow(UpdateParams(source=paths["whole"], target=str(repo_path), target_format="icechunk"))
    repo = icechunk.Repository.open(storage)
    assert_copy_current(repo.readonly_session("main").store, full, "icechunk update flow")
