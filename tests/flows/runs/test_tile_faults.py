"""A tile retries on its own: a transient storage fault after part of its shards were written is
absorbed by the tile task's own retry (no flow-run retry, output identical to a clean build); a
lasting fault fails the run with one line naming the root cause; a wait for a slot is bounded and
says who holds the slots."""

from __future__ import annotations

import threading

import pytest
import xarray as xr

from tests.helpers.compare import assert_same_pyramid
from topozarr_core import create_pyramid
from topozarr_flows import BuildParams, build_pyramid


@pytest.fixture
def source(netcdf_720):
    return netcdf_720


def _params(src, target, **kw):
    return BuildParams(source=src, target=target, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326",
                       chunks_per_shard=1, max_tile_bytes=1_100_000, **kw)


def _task_run(harness, flow_state, name):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    harness.settle(flow_state.state_details.flow_run_id)
    with harness.client() as c:
        runs = c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))
        assert len(runs) == 1, runs
        return runs[0], [s for s in c.read_task_run_states(runs[0].id)]


def test_transient_store_error_is_absorbed_by_the_tiles_own_retry(prefect_harness, source, tmp_path, monkeypatch):
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "faults"))
    # the 2nd shard write of tile S0-00002's first attempt fails (of 2: one time step each), after its
    # first shard was written
    monkeypatch.setenv("TOPOZARR_FAULTS", "store=S0-00002@2")
    state = build_pyramid(_params(source, str(tmp_path / "p.zarr")), return_state=True)
    assert state.is_completed(), state.message
    with prefect_harness.client() as c:
        assert c.read_flow_run(state.state_details.flow_run_id).run_count == 1  # no flow-run retry
    run, states = _task_run(prefect_harness, state, "tile-S0-00002")
    names = [s.name for s in states]
    assert run.run_count == 2 and "Retrying" in names and names[-1] == "Completed", names
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    with prefect_harness.client() as c:
        logs = [log.message for log in c.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[run.id])))]
    assert any("OSError(5, 'Input/output error') - Retry 1/3" in m for m in logs), logs
    clean = tmp_path / "clean.zarr"
    create_pyramid(xr.open_dataset(source, engine="h5netcdf"), levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326",
                   chunks_per_shard=1).write(clean)
    assert_same_pyramid(str(tmp_path / "p.zarr"), str(clean))


def test_a_full_disk_fails_the_run_with_its_root_cause(prefect_harness, source, tmp_path, monkeypatch):
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv("TOPOZARR_FAULTS", "store=S0-00001@1:28@always")
    state = build_pyramid(_params(source, str(tmp_path / "p.zarr")), return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert "tile-S0-00001 (level 0): OSError: [Errno 28] No space left on device" in message, message
    assert "retry the run to redo only the failed tiles" in message and "\n" not in message
    assert "IncompleteBlock" not in message and "cache" not in message


def test_a_wait_for_a_slot_is_bounded_and_names_the_holders(prefect_harness, source, tmp_path, monkeypatch):
    from prefect import flow, task
    from prefect.runtime import task_run

    from topozarr_flows.prefect_api.slots import hold_slot

    prefect_harness.ensure_concurrency_limit("one-slot", 1)
    holding, release = threading.Event(), threading.Event()

    @task(name="hold-the-slot")
    def hold() -> None:
        with hold_slot("one-slot", str(task_run.id)):
            holding.set()
            release.wait(60)

    @flow(name="slot-holder")
    def holder() -> None:
        hold()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(30)
        monkeypatch.setenv("TOPOZARR_SLOT_WAIT_SECONDS", "1")
        state = build_pyramid(_params(source, str(tmp_path / "p.zarr"), concurrency_limit="one-slot"),
                              return_state=True)
    finally:
        release.set()
        thread.join(60)
    assert state.is_failed()
    message = state.message or ""
    assert "SlotWaitTimeout: no slot of concurrency limit 'one-slot' came free within 1 s" in message, message
    assert "held by 1 task run(s): hold-the-slot" in message and "Running" in message, message
