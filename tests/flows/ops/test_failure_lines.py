"""One clear line per failure, where the operator looks first: the flow run's state message (and the
flow's last error log, which ``--watch`` streams) names the failing tile and the root cause."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.helpers.disks import small_tmpfs
from tests.helpers.rasters import make_raster
from topozarr_flows import BuildParams, build_pyramid


def _params(src: str, target: str, **kw) -> BuildParams:
    return BuildParams(source=src, target=target, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326",
                       chunks_per_shard=1, max_tile_bytes=1_000_000, concurrency_limit="failure-lines",
                       default_concurrency=8, **kw)


def _logs(harness, flow_run_id) -> list[tuple[int, str]]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    harness.settle(flow_run_id)
    with harness.client() as c:
        logs = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [(lg.level, lg.message) for lg in logs]


def _task_runs(harness, flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    harness.settle(flow_run_id)
    with harness.client() as c:
        return c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs): writes beyond it fail with ENOSPC, as on a full disk."""
    with small_tmpfs(tmp_path / "small", "256k") as mount:
        yield mount


def test_disk_full_is_named_in_the_state_message(prefect_harness, small_disk, tmp_path, caplog):
    src = tmp_path / "src.nc"
    make_raster(ny=600, nx=700, nt=2, seed=5).drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    state = build_pyramid(_params(str(src), str(small_disk / "p.zarr")), return_state=True)
    assert state.is_failed()
    message = state.message
    assert "\n" not in message and len(message) < 700, message
    assert "tiles failed after their retries; tile-S0-" in message and "retry the run" in message
    assert "OSError: [Errno 28] No space left on device" in message, message
    # the same line is the flow's last error log: what `prefect deployment run --watch` streams
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("prefect")]
    assert any("tiles failed" in m and "No space left on device" in m for m in errors), errors
    # and the root stays unpublished: nothing a reader would take for a pyramid
    root = small_disk / "p.zarr" / "zarr.json"
    assert not root.exists() or '"multiscales"' not in root.read_text()


def test_missing_source_fails_once_in_planning_without_cache_key_noise(prefect_harness, tmp_path):
    missing = tmp_path / "nowhere" / "src.nc"
    state = build_pyramid(_params(str(missing), str(tmp_path / "p.zarr")), return_state=True)
    assert state.is_failed()
    assert "does not exist" in state.message and str(missing) in state.message, state.message
    flow_run_id = state.state_details.flow_run_id
    runs = _task_runs(prefect_harness, flow_run_id)
    assert [(t.name.rsplit("-", 1)[0], t.state.type.value) for t in runs] == [("plan-pyramid", "FAILED")]
    logs = _logs(prefect_harness, flow_run_id)
    assert not [m for _, m in logs if "cache key" in m.lower()], logs
    # the cause is reported by the task that hit it and by the flow that ended with it, not once per retry
    tracebacks = [m for _, m in logs if "does not exist" in m and "Traceback" in m]
    assert len(tracebacks) <= 2, tracebacks
    assert not Path(tmp_path / "p.zarr").exists()


def test_watch_refuses_a_bad_or_unknown_run_id_in_one_line(prefect_harness, capsys):
    from topozarr_flows.ops.cli import main

    assert main(["watch", "not-a-uuid"]) == 2
    assert capsys.readouterr().err.strip() == "not a flow run id: 'not-a-uuid'"
    unknown = "00000000-0000-4000-8000-000000000000"
    assert main(["watch", unknown]) == 2
    assert capsys.readouterr().err.strip() == f"no flow run {unknown} on the Prefect API"


def test_watch_prints_the_state_message_of_an_ended_run(prefect_harness, tmp_path, capsys):
    from topozarr_flows.ops.cli import main

    state = build_pyramid(_params(str(tmp_path / "none.nc"), str(tmp_path / "p.zarr")), return_state=True)
    run_id = str(state.state_details.flow_run_id)
    assert main(["watch", run_id]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"flow run {run_id} (") and "): Failed: " in line and "does not exist" in line, line
