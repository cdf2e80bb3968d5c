"""Object-store credentials never appear in anything Prefect keeps about a run: captured log records
(with tracebacks), the API's logs, artifacts, flow and task runs (parameters, state messages), state
histories, every persisted result file (decoded: JSON, base64, pickle bytes), and the exceptions and
results handed back. Flows run against the moto S3 endpoint with distinctive credentials that exist
only in the environment (or in the URL): builds with injected (retried) tile failures, builds failing on
a missing bucket or on rejected credentials, and updates. The scanner and the core half:
tests/helpers/secrets.py, tests/core/store/test_secrets.py."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import pytest

from tests.helpers.inputs import MotoAuth
from tests.helpers.rasters import make_raster
from tests.helpers.secrets import KEY_ID, SECRET, leaks
from topozarr_flows import build_pyramid

# 100 kB tiles: a 256 x 256 float32 source is one tile of level 0 (S0-00000) and one of level 1 (S1-00000)
BASE = dict(levels=2, x_dim="lon", y_dim="lat", crs="EPSG:4326", max_tile_bytes=100_000,
            concurrency_limit="secrets-writes", default_concurrency=32)


def scan_everything(prefect_harness, states: dict, caplog, user_parameters: bool = False) -> dict[str, list[str]]:
    """Every place Prefect and this process kept something about the runs in ``states``, scanned for the
    needles. ``user_parameters``: the flow runs' own ``parameters`` (what the caller typed, shown back
    to the caller) are left out of the scan."""
    run_ids = [s.state_details.flow_run_id for s in states.values()]
    prefect_harness.settle(*run_ids)
    scanned: dict[str, list[str]] = {}

    def scan(what: str, blob) -> None:
        found = leaks(blob)
        if found:
            scanned[what] = found

    # exceptions and results returned to the caller
    for name, state in states.items():
        outcome = state.result(raise_on_failure=False)
        if isinstance(outcome, BaseException):
            scan(f"exception:{name}", "".join(traceback.format_exception(outcome)) + repr(outcome))
        else:
            scan(f"result:{name}", json.dumps(outcome, default=repr))
        scan(f"state:{name}", state.model_dump_json(exclude={"data"}) + repr(state))

    # log records of this process, formatted with their tracebacks
    fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")
    assert caplog.records
    for i, record in enumerate(caplog.records):
        scan(f"caplog:{i}:{record.name}", fmt.format(record))

    # everything the Prefect API kept
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with prefect_harness.client() as c:
        logs = []
        while batch := c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)),
                                   offset=len(logs), limit=200):
            logs += batch
        assert any("Retry" in log.message or "injected" in log.message for log in logs)
        for log in logs:
            scan(f"api-log:{log.id}", log.model_dump_json())
        for art in c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids))):
            scan(f"artifact:{art.key or art.id}", art.model_dump_json())
        for run_id in run_ids:
            exclude = {"parameters"} if user_parameters else None
            scan(f"flow-run:{run_id}", c.read_flow_run(run_id).model_dump_json(exclude=exclude))
            for st in c.read_flow_run_states(run_id):
                scan(f"flow-run-state:{run_id}", st.model_dump_json())
        task_runs = []
        while batch := c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)),
                                        offset=len(task_runs), limit=200):
            task_runs += batch
        assert task_runs
        for tr in task_runs:
            scan(f"task-run:{tr.name}", tr.model_dump_json())

    # persisted results (the harness's PREFECT_LOCAL_STORAGE_PATH): pickled task results, e.g. the
    # Icechunk fork sessions, and failure states
    files = [p for p in Path(prefect_harness.results).rglob("*") if p.is_file()]
    assert files
    for p in files:
        scan(f"result-file:{p.name}", p.read_bytes())

    return scanned


# -- the runs -------------------------------------------------------------------------------------

@pytest.fixture
def secret_env(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return s3_env


def test_credentials_never_leak(prefect_harness, secret_env, s3_prefix, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="prefect")
    s3 = secret_env
    src = tmp_path / "src.nc"
    make_raster(ny=256, nx=256, crs=None).to_netcdf(src, engine="h5netcdf")
    url = f"s3://{s3.bucket}/{s3_prefix}"

    states = {}

    def run(name: str, expect_ok: bool, faults: str = "", **kw):
        monkeypatch.setenv("TOPOZARR_FAULTS", faults)
        monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "faults" / name))
        state = build_pyramid({**BASE, "source": str(src), **kw}, return_state=True)
        assert state.is_completed() == expect_ok, (name, state.message)
        states[name] = state

    run("zarr-with-faults", True, faults="tile=S0-00000@1", target=f"{url}/a.zarr")
    run("icechunk-with-faults", True, faults="tile=S1-00000@1", target=f"{url}/repo", target_format="icechunk")
    run("missing-target-bucket", False, target="s3://no-such-bucket-topozarr/p.zarr")
    run("missing-icechunk-bucket", False, target="s3://no-such-bucket-topozarr/repo", target_format="icechunk")
    run("missing-source-bucket", False, target=f"{url}/x.zarr", source="s3://no-such-bucket-topozarr/src.zarr")
    auth = MotoAuth(s3.endpoint_url, s3.region)
    auth.on()  # now the endpoint checks the (unknown) key and rejects it
    try:
        run("rejected-credentials", False, target=f"{url}/r.zarr")
        run("rejected-credentials-icechunk", False, target=f"{url}/r-repo", target_format="icechunk")
    finally:
        auth.off()

    def attempts(name: str) -> dict[str, int]:
        return {p.stem: len(p.read_text()) for p in (tmp_path / "faults" / name).rglob("*.attempts")}

    # each injected fault fired once and was retried
    assert attempts("zarr-with-faults") == {"S0-00000": 2, "S1-00000": 1}
    assert attempts("icechunk-with-faults") == {"S0-00000": 1, "S1-00000": 2}
    scanned = scan_everything(prefect_harness, states, caplog)
    assert scanned == {}, f"credentials leaked into: {json.dumps(scanned, indent=1)}"


def test_credentials_in_the_url_never_leak(prefect_harness, s3_env, s3_prefix, tmp_path, monkeypatch, caplog):
    """Userinfo in a target URL (s3://KEY:SECRET@bucket/...): redacted from logs, artifacts (descriptions
    included), state messages, results and exceptions; a failing run's message too."""
    caplog.set_level(logging.INFO)
    src = tmp_path / "src.nc"
    make_raster(ny=128, nx=128, crs=None).to_netcdf(src, engine="h5netcdf")
    states = {}
    for name, target, ok, faults in [
        ("url-userinfo", f"s3://{KEY_ID}:{SECRET}@{s3_env.bucket}/{s3_prefix}/u.zarr", True, "tile=S0-00000@1"),
        ("url-userinfo-failing", f"s3://{KEY_ID}:{SECRET}@{s3_env.bucket}/{s3_prefix}/f.zarr", False,
         "tile=S0-00000@always"),
        ("url-userinfo-no-bucket", f"s3://{KEY_ID}:{SECRET}@no-such-bucket-topozarr/p.zarr", False, ""),
    ]:
        monkeypatch.setenv("TOPOZARR_FAULTS", faults)
        monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "faults" / name))
        state = build_pyramid({**BASE, "source": str(src), "target": target}, return_state=True)
        assert state.is_completed() == ok, (name, state.message)
        states[name] = state
    scanned = scan_everything(prefect_harness, states, caplog, user_parameters=True)
    assert scanned == {}, f"credentials leaked into: {json.dumps(scanned, indent=1)}"


def test_credentials_in_the_url_never_leak_from_updates(prefect_harness, s3_env, s3_prefix, tmp_path, monkeypatch,
                                                        caplog):
    """The update flow too: its plan log line, tile logs and table artifact name the target redacted."""
    from topozarr_flows import UpdateParams, update_pyramid

    caplog.set_level(logging.INFO)
    whole = make_raster(ny=128, nx=128, nt=4, crs=None)
    part, full = tmp_path / "part.nc", tmp_path / "whole.nc"
    whole.isel(time=slice(0, 2)).to_netcdf(part, engine="h5netcdf")
    whole.to_netcdf(full, engine="h5netcdf")
    target = f"s3://{KEY_ID}:{SECRET}@{s3_env.bucket}/{s3_prefix}/up.zarr"
    states = {"build": build_pyramid({**BASE, "source": str(part), "target": target}, return_state=True)}
    assert states["build"].is_completed(), states["build"].message
    monkeypatch.setenv("TOPOZARR_FAULTS", "tile=S0-00000@1")  # one retried update tile
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "faults"))
    states["update"] = update_pyramid(UpdateParams(source=str(full), target=target,
                                                   concurrency_limit=BASE["concurrency_limit"]), return_state=True)
    assert states["update"].is_completed(), states["update"].message
    assert states["update"].result()["new_length"] == 4
    scanned = scan_everything(prefect_harness, states, caplog, user_parameters=True)
    assert scanned == {}, f"credentials leaked into: {json.dumps(scanned, indent=1)}"
