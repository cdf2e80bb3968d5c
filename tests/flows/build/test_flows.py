"""The build-pyramid flow under Prefect's test harness: outputs, Icechunk publishing,
concurrency limits, artifacts, Dask, CLI and parameter validation."""

from __future__ import annotations

import icechunk
import numpy as np
import pytest
import zarr
from prefect.artifacts import Artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import make_raster
from tests.helpers.schemas import validate_conventions
from topozarr_core import create_pyramid
from topozarr_flows import BuildParams, build_pyramid


@pytest.fixture
def source(tmp_path):
    ds = make_raster(ny=600, nx=700, nt=2, nan_fraction=0.05)
    path = tmp_path / "src.nc"
    ds.drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    return ds, str(path)


def _params(src, target, **kw) -> BuildParams:
    # 1 MB tiles of 300 x 350 shards: 4 tiles of level 0, 2 of level 1 (reading level 0), 1 of level 2
    base = dict(source=src, target=target, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326",
                chunks_per_shard=1, max_tile_bytes=1_000_000)
    base.update(kw)
    return BuildParams(**base)


def test_flow_output_equals_direct_write(prefect_harness, source, tmp_path):
    ds, src = source
    result = build_pyramid(_params(src, str(tmp_path / "flow.zarr")))
    assert [r["level"] for r in result["levels"]] == [0, 1, 2]
    assert result["spot_checks"] > 0
    import xarray as xr

    direct = create_pyramid(xr.open_dataset(src, engine="h5netcdf"), levels=3, x_dim="lon", y_dim="lat",
                            crs="EPSG:4326", chunks_per_shard=1)
    direct.write(tmp_path / "direct.zarr")
    assert_same_pyramid(str(tmp_path / "flow.zarr"), str(tmp_path / "direct.zarr"))


def test_each_level_is_checked_in_the_background_once_written(prefect_harness, source, tmp_path, monkeypatch):
    """validate-pyramid takes the checks the flow made of each level once it was complete, and reads
    no level again; a level found wrong there fails the run before its root is published."""
    import xarray as xr

    import topozarr_flows.build.flow
    import topozarr_flows.runs.level_checks
    from topozarr_core.validate.pyramid import validate_pyramid

    _, src = source
    checked, taken = [], []
    real_check, real_take = topozarr_flows.build.flow.check_written_level, topozarr_flows.runs.level_checks.take

    def check(params, staging, level):
        checked.append(level)
        return real_check(params, staging, level)

    def take(run_id):
        found = real_take(run_id)
        taken.append(sorted(found))
        return found

    real_prepare, prepared = topozarr_flows.build.flow.prepare_spot_references, []

    def prepare(params):
        prepared.append((sorted(checked), real_prepare(params)))  # before any level check
        return prepared[-1][1]

    import topozarr_flows.runs.job

    real_build, built = topozarr_flows.runs.job._build, []

    def build(params):
        built.append(params)
        return real_build(params)

    monkeypatch.setattr(topozarr_flows.runs.job, "_build", build)
    monkeypatch.setattr(topozarr_flows.build.flow, "check_written_level", check)
    monkeypatch.setattr(topozarr_flows.build.flow, "prepare_spot_references", prepare)
    monkeypatch.setattr(topozarr_flows.runs.level_checks, "take", take)
    params = _params(src, str(tmp_path / "bg.zarr"))
    result = build_pyramid(params)
    assert sorted(checked) == [0, 1, 2] and taken == [[0, 1, 2]]
    # the references of every spot check were computed from the source before the first level check
    assert prepared == [([], result["spot_checks"])] and result["spot_checks"] > 0
    # the background thread runs in the flow run's context: it shares the attempt's one Job (and so the
    # references validate-pyramid uses) instead of building one of its own, keyed by no attempt
    assert len(built) == 1
    planned = create_pyramid(xr.open_dataset(src, engine="h5netcdf"), levels=3, x_dim="lon", y_dim="lat",
                             crs="EPSG:4326", chunks_per_shard=1)
    assert result["spot_checks"] == validate_pyramid(planned, tmp_path / "bg.zarr",
                                                     samples_per_level=params.validate_samples).spot_checks

    def corrupting_check(params, staging, level):
        if level == 1:  # as a writer bug would leave it
            arr = zarr.open_array(params.target, path="1/air", mode="r+")
            arr[...] = np.zeros(arr.shape, arr.dtype)
        return real_check(params, staging, level)

    monkeypatch.setattr(topozarr_flows.build.flow, "check_written_level", corrupting_check)
    bad = str(tmp_path / "bad.zarr")
    state = build_pyramid(_params(src, bad), return_state=True)
    assert state.is_failed() and "level 1 'air' window" in str(state.message), state.message
    assert "multiscales" not in zarr.open_group(bad, mode="r").attrs


def test_flow_artifacts_and_logs(prefect_harness, source, tmp_path, caplog):
    _, src = source
    build_pyramid(_params(src, str(tmp_path / "a.zarr")))
    with prefect_harness.client() as client:
        table = Artifact.get("pyramid-levels", client=client)
    assert table is not None and table.type == "table"
    assert "shards" in str(table.data) and "seconds" in str(table.data)
    assert any("level 2" in r.getMessage() and "written" in r.getMessage() for r in caplog.records)


def test_icechunk_target_publishes_main_as_last_step(prefect_harness, source, tmp_path):
    ds, src = source
    repo_path = tmp_path / "repo"
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(repo_path)))
    before = repo.lookup_branch("main")
    state = build_pyramid(_params(src, str(repo_path), target_format="icechunk"), return_state=True)
    result = state.result()
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(repo_path)))
    assert repo.lookup_branch("main") == result["snapshot"] != before
    assert repo.list_branches() == {"main"}  # staging branch removed
    store = repo.readonly_session("main").store
    root = zarr.open_group(store, mode="r")
    validate_conventions({"zarr_format": 3, "node_type": "group", "attributes": dict(root.attrs)})
    ref = ds.air.coarsen(lat=4, lon=4, boundary="trim").mean().values
    np.testing.assert_allclose(zarr.open_array(store, path="2/air")[:], ref, rtol=1e-6, equal_nan=True)
    # one commit per stage of tiles on the way (each stage's tiles read the commit before): init, 3 stages,
    # metadata
    messages = [s.message for s in repo.ancestry(branch="main")]
    assert messages == ["topozarr: publish metadata", "topozarr: stage-2", "topozarr: stage-1", "topozarr: stage-0",
                        "topozarr: initialise pyramid", "Repository initialized"], messages


def test_concurrency_limit_is_never_exceeded(prefect_harness, source, tmp_path, monkeypatch):
    _, src = source
    prefect_harness.ensure_concurrency_limit("test-writes-2", 2)
    monkeypatch.setenv("TOPOZARR_FAULTS", "delay=0.4")
    flow = build_pyramid.with_options(task_runner=ThreadPoolTaskRunner(max_workers=8))
    result = flow(_params(src, str(tmp_path / "c.zarr"), levels=2, concurrency_limit="test-writes-2",
                          max_tile_bytes=200_000),  # one shard a tile: 8 tiles of level 0, 2 of level 1
                  return_state=True)
    assert result.is_completed()
    runs = _tile_results(prefect_harness, result)
    assert len(runs) >= 8
    assert _max_overlap(runs) == 2  # 8 threads wanted more; the limit held them to 2


def test_missing_limit_is_created_not_ignored(prefect_harness, source, tmp_path):
    _, src = source
    name = "created-by-flow"
    from prefect.exceptions import ObjectNotFound

    with prefect_harness.client() as c:
        with pytest.raises(ObjectNotFound):
            c.read_concurrency_limit_by_tag(name)
    build_pyramid(_params(src, str(tmp_path / "m.zarr"), levels=2, concurrency_limit=name, default_concurrency=3))
    with prefect_harness.client() as c:
        assert c.read_concurrency_limit_by_tag(name).concurrency_limit == 3


def test_inactive_limit_is_refused(prefect_harness, source, tmp_path):
    _, src = source
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with prefect_harness.client() as c:
        c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="tag:inactive-limit", limit=2,
                                                                       active=False))
    state = build_pyramid(_params(src, str(tmp_path / "i.zarr"), levels=2, concurrency_limit="inactive-limit"),
                          return_state=True)
    assert state.is_failed()
    assert "inactive" in str(state.result(raise_on_failure=False))
    assert not (tmp_path / "i.zarr").exists()


def test_rust_io_flow_matches_python(prefect_harness, source, tmp_path):
    _, src = source
    build_pyramid(_params(src, str(tmp_path / "py.zarr")))
    build_pyramid(_params(src, str(tmp_path / "rs.zarr"), io="rust"))
    assert_same_pyramid(str(tmp_path / "py.zarr"), str(tmp_path / "rs.zarr"))


def test_flow_writes_to_s3(prefect_harness, source, tmp_path, s3_env, s3_prefix):
    _, src = source
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    build_pyramid(_params(src, url, levels=2))
    build_pyramid(_params(src, str(tmp_path / "local.zarr"), levels=2))
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "local.zarr"))


def test_bad_input_fails_in_planning_before_writing(prefect_harness, source, tmp_path):
    _, src = source
    state = build_pyramid(_params(src, str(tmp_path / "bad.zarr"), x_dim="longitude"), return_state=True)
    assert state.is_failed()
    assert "not a dimension" in str(state.result(raise_on_failure=False))
    assert not (tmp_path / "bad.zarr").exists()


@pytest.mark.parametrize("kw,match", [
    (dict(levels=None), "exactly one"),
    (dict(factors=[1, 2]), "exactly one"),
    (dict(method="median"), "unknown method"),
    (dict(chunks_per_shard=3), "chunks_per_shard"),
    (dict(io="go"), "io"),
    (dict(target_format="icechunk", io="rust"), "rust"),
    (dict(source=" "), "empty"),
    (dict(surprise=1), "Extra inputs"),
])
def test_parameter_model_rejects(kw, match):
    with pytest.raises(ValidationError, match=match):
        _params("a.nc", "b.zarr", **kw)


def test_cli_build(prefect_harness, source, tmp_path, capsys):
    from topozarr_flows.ops.cli import main

    _, src = source
    rc = main(["build", src, str(tmp_path / "cli.zarr"), "--levels", "2", "--x-dim", "lon", "--y-dim", "lat",
               "--crs", "EPSG:4326"])
    assert rc == 0
    assert '"spot_checks"' in capsys.readouterr().out
    assert main(["build", src, str(tmp_path / "x.zarr"), "--levels", "2", "--method", "median"]) == 2


# -- helpers --------------------------------------------------------------------------------------

def _tile_results(harness, flow_state) -> list[dict]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    harness.settle(flow_state.state_details.flow_run_id)
    with harness.client() as c:
        runs = c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="tile-S")),
        )
    results = []
    for run in runs:
        if run.state.is_completed():
            results.append(run.state.result())
    return results


def _max_overlap(results: list[dict]) -> int:
    events = sorted([(r["started"], 1) for r in results] + [(r["finished"], -1) for r in results],
                    key=lambda e: (e[0], e[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


@pytest.mark.parametrize("target_format", ["zarr", "icechunk"])
def test_flow_runs_unchanged_on_dask_process_cluster(prefect_harness, source, tmp_path, target_format):
    """The same tiles run on Dask worker processes; no slot is held once a run has ended (three runs,
    checked after each at once: a lease that outlived its task would still be counted)."""
    from prefect_dask import DaskTaskRunner

    _, src = source
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "processes": True, "threads_per_worker": 1,
                                            "dashboard_address": None})
    threads = build_pyramid(_params(src, str(tmp_path / "threads.zarr")), return_state=True)
    planned = sorted(t["key"] for t in _tile_results(prefect_harness, threads))
    assert len(planned) >= 4  # min_tiles: both workers get several
    for run in range(3 if target_format == "zarr" else 1):
        target = str(tmp_path / (f"d{run}.zarr" if target_format == "zarr" else "repo"))
        params = _params(src, target, target_format=target_format)
        state = build_pyramid.with_options(task_runner=runner)(params, return_state=True)
        assert state.is_completed(), state.message
        assert sorted(t["key"] for t in _tile_results(prefect_harness, state)) == planned
        with prefect_harness.client() as c:
            assert c.read_global_concurrency_limit_by_name("tag:" + params.concurrency_limit).active_slots == 0
            assert c.read_concurrency_limit_by_tag(params.concurrency_limit).active_slots == []
        if target_format == "icechunk":
            target = icechunk.Repository.open(icechunk.local_filesystem_storage(target)).readonly_session("main").store
        assert_same_pyramid(target, str(tmp_path / "threads.zarr"))


def test_progress_artifact_reaches_100(prefect_harness, source, tmp_path):
    _, src = source
    state = build_pyramid(_params(src, str(tmp_path / "pr.zarr")), return_state=True)
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    with prefect_harness.client() as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            type=ArtifactFilterType(any_=["progress"])))
    assert len(arts) == 1 and float(arts[0].data) == 100.0
