"""The update flow: zarr and Icechunk (one snapshot) updates equal a full build, a refused update
fails before writing, a retry redoes only the failed tile, and bad parameters are refused (the core
half: tests/core/update/test_update.py)."""

from __future__ import annotations

import icechunk
import pytest
import xarray as xr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import make_raster
from tests.helpers.updates import file_stamps
from topozarr_core import create_pyramid

# -- the flow --------------------------------------------------------------------------------------


@pytest.fixture
def nc_sources(tmp_path):
    """The first 5 steps and all 9 steps of one dataset, as nightly NetCDF files would come."""
    ds = make_raster(ny=400, nx=500, nt=9, nan_fraction=0.05)
    paths = {}
    for name, n in (("part", 5), ("whole", 9)):
        paths[name] = str(tmp_path / f"{name}.nc")
        ds.isel(time=slice(0, n)).drop_vars("spatial_ref").to_netcdf(paths[name], engine="h5netcdf")
    return ds, paths


def _build_params(src, target, **kw):
    from topozarr_flows import BuildParams

    return BuildParams(source=src, target=target, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326",
                       max_tile_bytes=1_000_000, **kw)


def _update_params(src, target, **kw):
    from topozarr_flows import UpdateParams

    # 800 kB a time step: one tile per new step (every level of it)
    return UpdateParams(source=src, target=target, max_tile_bytes=1_000_000, **kw)


def _direct_build(src, path):
    ds = xr.open_dataset(src, engine="h5netcdf")
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326").write(path)


def test_update_flow_zarr(prefect_harness, nc_sources, tmp_path):
    from topozarr_flows import build_pyramid
    from topozarr_flows import update_pyramid as update_flow

    _, src = nc_sources
    target = str(tmp_path / "p.zarr")
    build_pyramid(_build_params(src["part"], target))
    result = update_flow(_update_params(src["whole"], target))
    assert result["changed"] and (result["old_length"], result["new_length"]) == (5, 9)
    assert result["regions"] > 0 and result["spot_checks"] > 0
    _direct_build(src["whole"], tmp_path / "full.zarr")
    assert_same_pyramid(target, str(tmp_path / "full.zarr"))
    before = file_stamps(target)
    again = update_flow(_update_params(src["whole"], target))
    assert not again["changed"] and again["regions"] == 0
    assert file_stamps(target) == before


def test_update_flow_icechunk_one_snapshot(prefect_harness, nc_sources, tmp_path):
    from topozarr_flows import build_pyramid
    from topozarr_flows import update_pyramid as update_flow

    _, src = nc_sources
    repo_path = tmp_path / "repo"
    storage = icechunk.local_filesystem_storage(str(repo_path))
    icechunk.Repository.create(storage)
    build_pyramid(_build_params(src["part"], str(repo_path), target_format="icechunk"))
    repo = icechunk.Repository.open(storage)
    built = repo.lookup_branch("main")
    result = update_flow(_update_params(src["whole"], str(repo_path), target_format="icechunk"))
    repo = icechunk.Repository.open(storage)
    head = repo.lookup_branch("main")
    assert result["snapshot"] == head != built
    ancestry = list(repo.ancestry(branch="main"))
    assert ancestry[1].id == built  # exactly one new snapshot on main
    assert ancestry[0].message == "topozarr: update time 5 -> 9"
    assert repo.list_branches() == {"main"}  # staging branch removed
    _direct_build(src["whole"], tmp_path / "full.zarr")
    assert_same_pyramid(repo.readonly_session("main").store, str(tmp_path / "full.zarr"))
    again = update_flow(_update_params(src["whole"], str(repo_path), target_format="icechunk"))
    assert not again["changed"]
    assert icechunk.Repository.open(storage).lookup_branch("main") == head


def test_update_flow_refusal_fails_before_writing(prefect_harness, nc_sources, tmp_path):
    from topozarr_flows import build_pyramid
    from topozarr_flows import update_pyramid as update_flow

    ds, src = nc_sources
    target = str(tmp_path / "p.zarr")
    build_pyramid(_build_params(src["whole"], target))
    shorter = str(tmp_path / "shorter.nc")
    ds.isel(time=slice(0, 3)).drop_vars("spatial_ref").to_netcdf(shorter, engine="h5netcdf")
    before = file_stamps(target)
    state = update_flow(_update_params(shorter, target), return_state=True)
    assert state.is_failed()
    assert "shrunken" in str(state.result(raise_on_failure=False))
    assert file_stamps(target) == before


def test_update_flow_retry_redoes_only_the_failed_tile(prefect_harness, nc_sources, tmp_path, monkeypatch):
    from prefect.flow_engine import run_flow

    from topozarr_flows import build_pyramid
    from topozarr_flows import update_pyramid as update_flow
    from topozarr_flows.ops.retry import mark_for_retry

    _, src = nc_sources
    target = str(tmp_path / "p.zarr")
    build_pyramid(_build_params(src["part"], target))
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "faults"))
    # levels 1 and 2 get deeper time shards (5 -> 9 steps): they are rewritten whole, so the update is
    # one tile of every level (test_resume retries one of two tiles of an update without relayout)
    monkeypatch.setenv("TOPOZARR_FAULTS", "tile=S0-00000@4")  # fails the task's 1 + 3 retries
    params = _update_params(src["whole"], target)
    state = update_flow(params, return_state=True)
    assert state.is_failed()
    mark_for_retry(state.state_details.flow_run_id)
    with prefect_harness.client() as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    retried = run_flow(update_flow, flow_run=run, parameters={"params": params}, return_type="state")
    assert retried.is_completed()
    attempts = {p.stem: len(p.read_text()) for p in (tmp_path / "faults").rglob("*.attempts")}
    assert attempts == {"S0-00000": 5}, attempts
    _direct_build(src["whole"], tmp_path / "full.zarr")
    assert_same_pyramid(target, str(tmp_path / "full.zarr"))


@pytest.mark.parametrize("kw,match", [
    (dict(target_format="icechunk", io="rust"), "rust"),
    (dict(append_dim=" "), "empty"),
    (dict(levels=3), "Extra inputs"),
])
def test_update_params_reject(kw, match):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=match):
        _update_params("a.nc", "b.zarr", **kw)
