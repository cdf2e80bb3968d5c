"""Retrying a failed flow run (as the UI's Retry does) redoes only the failed batches and ends
with output identical to a clean run; Icechunk's main stays untouched until the final publish."""

from __future__ import annotations

from pathlib import Path

import icechunk
import pytest
import xarray as xr

from flows.build import build_pyramid
from flows.params import BuildParams
from flows.retry import retry_here
from tests.compare import assert_same_pyramid
from tests.conftest import make_raster
from topozarr_core import create_pyramid


@pytest.fixture
def source(tmp_path):
    ds = make_raster(ny=720, nx=720, nt=2, nan_fraction=0.05)
    path = tmp_path / "src.nc"
    ds.drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    return str(path)


def _params(src, target, **kw):
    return BuildParams(source=src, target=target, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326",
                       chunks_per_shard=1, regions_per_batch=1, **kw)


def _attempts(fault_dir: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text()) for p in fault_dir.glob("*.attempts")}


def _clean_build(src, path):
    ds = xr.open_dataset(src, engine="h5netcdf")
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326", chunks_per_shard=1).write(path)


def test_retry_redoes_only_failed_batch_zarr(prefect_harness, source, tmp_path, monkeypatch):
    fault_dir = tmp_path / "faults"
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(fault_dir))
    # L0-B00003 fails its first 4 attempts: the task's 1 + 3 retries, so the run fails
    monkeypatch.setenv("TOPOZARR_FAULTS", "batch=L0-B00003@4")
    state = build_pyramid(_params(source, str(tmp_path / "p.zarr")), return_state=True)
    assert state.is_failed()
    first = _attempts(fault_dir)
    assert first["L0-B00003"] == 4 and len(first) >= 8
    assert all(n == 1 for k, n in first.items() if k != "L0-B00003")
    assert not any(k.startswith("L1") for k in first)  # level 1 never started

    retried = retry_here(state.state_details.flow_run_id)
    assert retried.is_completed()
    second = _attempts(fault_dir)
    redone = {k for k in second if second[k] != first.get(k, 0)}
    # only the failed batch and the levels that had not run yet
    assert {k for k in redone if k.startswith("L0")} == {"L0-B00003"}
    assert second["L0-B00003"] == 5
    _clean_build(source, tmp_path / "clean.zarr")
    assert_same_pyramid(str(tmp_path / "p.zarr"), str(tmp_path / "clean.zarr"))


def test_retry_icechunk_main_untouched_until_publish(prefect_harness, source, tmp_path, monkeypatch):
    fault_dir = tmp_path / "faults"
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(fault_dir))
    repo_path = str(tmp_path / "repo")
    storage = icechunk.local_filesystem_storage(repo_path)
    repo = icechunk.Repository.create(storage)
    # a previous pyramid on main
    s = repo.writable_session("main")
    create_pyramid(make_raster(ny=64, nx=64), levels=2, x_dim="lon", y_dim="lat").write(s.store)
    previous = s.commit("previous pyramid")

    monkeypatch.setenv("TOPOZARR_FAULTS", "batch=L1-B00000@4")
    state = build_pyramid(_params(source, repo_path, target_format="icechunk"), return_state=True)
    assert state.is_failed()
    repo = icechunk.Repository.open(storage)
    assert repo.lookup_branch("main") == previous  # readers still see the previous snapshot
    assert any(b.startswith("topozarr-staging-") for b in repo.list_branches())

    retried = retry_here(state.state_details.flow_run_id)
    assert retried.is_completed()
    attempts = _attempts(fault_dir)
    assert all(n == 1 for k, n in attempts.items() if k.startswith("L0"))  # level 0 not rewritten
    repo = icechunk.Repository.open(storage)
    assert repo.lookup_branch("main") != previous
    assert repo.list_branches() == {"main"}
    _clean_build(source, tmp_path / "clean.zarr")
    assert_same_pyramid(repo.readonly_session("main").store, str(tmp_path / "clean.zarr"))
