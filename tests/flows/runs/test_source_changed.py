"""A retried run whose source changed since it was planned is refused by its tile tasks, build and
update alike, in one line and without task retries: the old plan is never written over new data.

The job a task derives from the parameters is cached per flow-run attempt, so the retry (here, in the
same process, as ``topozarr-flows retry --here`` does) re-derives the plan from the source as it is now.
"""

from __future__ import annotations

import json
import os

import xarray as xr

from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid
from topozarr_flows import BuildParams, UpdateParams, build_pyramid, update_pyramid
from topozarr_flows.ops.retry import retry_here

REFUSED = "SourceChanged: the source changed since this run was planned (its tile plan differs)"


def _write(ds: xr.Dataset, path) -> None:
    """Write the source as a producer replaces a file: a new file moved over the old one."""
    new = path.with_suffix(".new.nc")
    ds.drop_vars("spatial_ref").to_netcdf(new, engine="h5netcdf")
    os.replace(new, path)


def _attempts(fault_dir) -> dict[str, int]:
    return {p.stem: len(p.read_text()) for p in fault_dir.rglob("*.attempts")}


def test_a_build_retried_after_its_source_changed_is_refused(prefect_harness, tmp_path, monkeypatch):
    src, target = tmp_path / "src.nc", tmp_path / "p.zarr"
    _write(make_raster(ny=720, nx=720, nt=2, seed=1), src)
    fault_dir = tmp_path / "faults"
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(fault_dir))
    monkeypatch.setenv("TOPOZARR_FAULTS", "tile=S0-00003@4")  # fails the task's 1 + 3 attempts
    params = BuildParams(source=str(src), target=str(target), levels=3, x_dim="lon", y_dim="lat",
                         crs="EPSG:4326", chunks_per_shard=1, max_tile_bytes=800_000)
    state = build_pyramid(params, return_state=True)
    assert state.is_failed()
    assert _attempts(fault_dir)["S0-00003"] == 4

    _write(make_raster(ny=736, nx=720, nt=2, seed=2), src)  # the source grew by 16 rows meanwhile
    monkeypatch.delenv("TOPOZARR_FAULTS")
    retried = retry_here(state.state_details.flow_run_id)
    assert retried.is_failed()
    message = retried.message or ""
    assert "tile-S0-00003" in message and REFUSED in message, message
    assert "\n" not in message
    # refused before it wrote and not retried: the fault rule counted no new attempt...
    assert _attempts(fault_dir)["S0-00003"] == 4
    # ...and the pyramid is still unpublished, never a mix of the old plan and the new data
    attrs = json.loads((target / "zarr.json").read_text()).get("attributes", {})
    assert "multiscales" not in attrs


def test_an_update_retried_after_its_source_changed_is_refused(prefect_harness, tmp_path, monkeypatch):
    src, target = tmp_path / "src.nc", tmp_path / "p.zarr"
    full = make_raster(ny=256, nx=256, nt=6, seed=3)
    create_pyramid(full.isel(time=slice(0, 4)), levels=2, x_dim="lon", y_dim="lat", crs="EPSG:4326",
                   chunks_per_shard=1).write(target)
    _write(full.isel(time=slice(0, 5)), src)
    fault_dir = tmp_path / "faults"
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(fault_dir))
    monkeypatch.setenv("TOPOZARR_FAULTS", "tile=S0-00000@4")
    params = UpdateParams(source=str(src), target=str(target), append_dim="time")
    state = update_pyramid(params, return_state=True)
    assert state.is_failed()

    _write(full, src)  # one more time step arrived before the retry
    monkeypatch.delenv("TOPOZARR_FAULTS")
    retried = retry_here(state.state_details.flow_run_id)
    assert retried.is_failed()
    message = retried.message or ""
    assert REFUSED in message, message
    assert _attempts(fault_dir)["S0-00000"] == 4
