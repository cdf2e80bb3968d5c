"""End to end against a real stack: `prefect server` on loopback, the process work pool and limits,
a process worker and the moto S3 endpoint, all started with the infra/ scripts.

The deployments are registered both ways operators do it (``prefect deploy`` with
deployments/prefect.yaml, then deployments/deploy.py). A run of ``build-pyramid-adhoc`` writes to
S3 through the worker; one region batch is made to fail all its attempts so the run fails; the run
is retried through the API exactly as the UI's Retry button does; only that batch (and the levels
that had not started) run again, and the S3 pyramid equals a clean local build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
import xarray as xr

from tests.compare import assert_same_pyramid
from tests.conftest import make_raster
from tests.fixtures_services import _free_port
from topozarr_core import create_pyramid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
POOL = "topozarr-pool"
FAULTY = "L0-B00001"  # fails its 1 + 3 attempts in the first run, passes on the retry
FLOW = "build-pyramid"
ADHOC, NIGHTLY = f"{FLOW}/build-pyramid-adhoc", f"{FLOW}/build-pyramid-nightly"
UPDATE_NIGHTLY = "update-pyramid/update-pyramid-nightly"
DEPLOYMENTS = (ADHOC, NIGHTLY, UPDATE_NIGHTLY)


@dataclass
class Stack:
    api_url: str
    env: dict[str, str]  # for infra scripts and the prefect CLI (no S3, no faults)
    fault_dir: Path
    state: Path
    cli_deployments: dict[str, dict]  # as registered by `prefect deploy` (prefect.yaml)
    py_deployments: dict[str, UUID]  # as registered by deployments/deploy.py

    def worker_log(self, lines: int = 60) -> str:
        log = self.state / "logs" / "worker.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def _sh(args: list[str], env: dict[str, str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _deployment_summary(client, name: str) -> dict:
    d = client.read_deployment_by_name(name)
    return {
        "id": d.id,
        "entrypoint": d.entrypoint,
        "work_pool_name": d.work_pool_name,
        "pull_steps": d.pull_steps,
        "parameters": d.parameters,
        "enforce_parameter_schema": d.enforce_parameter_schema,
        "schedules": [(s.schedule.cron, s.schedule.timezone) for s in d.schedules],
        "active": [s.active for s in d.schedules],
    }


@pytest.fixture(scope="module")
def stack(s3_server, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("e2e")
    state, fault_dir = root / "state", root / "faults"
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TOPOZARR_", "AWS_"))}
    env.update(
        VENV=sys.prefix,  # the venv running the tests
        TOPOZARR_STATE=str(state),
        PREFECT_PORT=str(port),
        PREFECT_HOME=str(state / "prefect-home"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOCAL_STORAGE_PATH=str(root / "results"),  # persisted task results, shared by both attempts
    )
    worker_env = {
        **env,
        **s3_server.env(),
        "TOPOZARR_FAULTS": f"batch={FAULTY}@4",
        "TOPOZARR_FAULT_DIR": str(fault_dir),
        "TOPOZARR_RETRY_DELAY": "0",
        "TOPOZARR_WORKER_NAME": f"e2e-worker-{port}",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    try:
        _sh(["infra/prefect-server.sh", "start"], env, timeout=150)
        _sh(["infra/setup-prefect.sh"], env, timeout=120)
        _sh(["infra/worker.sh", "start"], worker_env, timeout=120)
        # what an operator runs from the repository root
        _sh([f"{sys.prefix}/bin/prefect", "--no-prompt", "deploy", "--all",
             "--prefect-file", "deployments/prefect.yaml"], env, timeout=120)
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                cli = {n: _deployment_summary(client, n) for n in DEPLOYMENTS}
            # and the Python registration of the same deployments (nightly schedule paused, so no
            # scheduled run can ever start during the test, even at 02:00 UTC)
            out = _sh([sys.executable, "deployments/deploy.py", "--paused-schedules"], env, timeout=120).stdout
            py = {line.split(": ")[0]: UUID(line.split(": ")[1]) for line in out.splitlines() if ": " in line}
            yield Stack(api_url, env, fault_dir, state, cli, py)
    finally:
        _sh(["infra/worker.sh", "stop"], env, timeout=60, check=False)
        _sh(["infra/prefect-server.sh", "stop"], env, timeout=60, check=False)
        for pid_file in state.glob("*.pid"):  # the scripts remove their pid files; anything left is killed
            try:
                os.killpg(int(pid_file.read_text()), 9)
            except (ValueError, ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    # 512 x 512, 3 levels, one region per batch: 4 batches at level 0, 1 at levels 1 and 2
    path = tmp_path_factory.mktemp("e2e-src") / "src.nc"
    make_raster(ny=512, nx=512, nt=1, nan_fraction=0.05).drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    return str(path)


def _params(source: str, target: str, **kw) -> dict:
    return {"source": source, "target": target, "levels": 3, "x_dim": "lon", "y_dim": "lat", "crs": "EPSG:4326",
            "chunks_per_shard": 1, "regions_per_batch": 1, **kw}


def _wait_final(stack: Stack, flow_run_id, timeout: float = 150):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {flow_run_id} still {run.state!r} after {timeout}s; worker log:\n"
                                     f"{stack.worker_log()}")
            time.sleep(0.5)


def _attempts(fault_dir: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text()) for p in fault_dir.glob("*.attempts")}


def _s3_keys(s3_server, prefix: str) -> list[str]:
    out = s3_server.boto3_client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix + "/")
    return [o["Key"] for o in out.get("Contents", [])]


def test_deployments_registered_from_yaml_and_python(stack):
    nightly, adhoc, update = (stack.cli_deployments[n] for n in (NIGHTLY, ADHOC, UPDATE_NIGHTLY))
    assert nightly["entrypoint"] == adhoc["entrypoint"] == "flows/build.py:build_pyramid"
    assert update["entrypoint"] == "flows/update.py:update_pyramid"
    for d in (nightly, adhoc, update):
        assert d["work_pool_name"] == POOL
        assert d["enforce_parameter_schema"] is True
        # runs start in the checkout prefect deploy ran from
        assert d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert nightly["schedules"] == [("0 2 * * *", "UTC")] and nightly["active"] == [True]
    assert nightly["parameters"]["params"]["levels"] == 4
    assert adhoc["schedules"] == [] and adhoc["parameters"] == {}
    assert update["schedules"] == [("0 2 * * *", "UTC")] and update["active"] == [False]
    assert update["parameters"]["params"]["target"] == nightly["parameters"]["params"]["target"]

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        again = {n: _deployment_summary(client, n) for n in stack.cli_deployments}
    assert {n: d["id"] for n, d in again.items()} == {n: stack.cli_deployments[n]["id"] for n in again}
    assert {n: d["id"] for n, d in again.items()} == stack.py_deployments  # deploy.py updated the same ones
    for n, d in again.items():
        cli = dict(stack.cli_deployments[n])
        assert d.pop("active") == [False] * len(cli.pop("active"))  # deploy.py --paused-schedules
        assert d == cli


def test_invalid_parameters_are_rejected_before_anything_is_written(stack, s3_server, s3_prefix, source):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    name = ADHOC
    attempts_before = _attempts(stack.fault_dir)
    target = f"s3://{s3_server.bucket}/{s3_prefix}/p.zarr"
    # violations of the model's JSON schema: the server refuses to create the run
    for bad, reason in (({"params": _params(source, target, levels=0)}, "less than the minimum of 1"),
                        ({"params": _params(source, target, colour="red")}, "'colour' was unexpected"),
                        ({"params": {"source": source, "levels": 2}}, "'target' is a required property")):
        with pytest.raises(PrefectHTTPStatusError, match=reason):
            run_deployment(name, parameters=bad, timeout=0)

    # violations only pydantic sees (a validator): the run fails validating its parameters
    run = run_deployment(name, parameters={"params": _params(source, target, method="median")}, timeout=0)
    run = _wait_final(stack, run.id)
    assert run.state.is_failed(), run.state
    assert "Validation of flow parameters failed" in run.state.message
    assert "unknown method 'median'" in run.state.message
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert tasks == []  # not even the planning task ran
    assert _s3_keys(s3_server, s3_prefix) == []
    assert _attempts(stack.fault_dir) == attempts_before


def test_failed_batch_is_retried_through_the_api_like_the_ui(stack, s3_server, s3_prefix, source, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    from flows.retry import mark_for_retry

    for p in stack.fault_dir.glob("*.attempts"):
        p.unlink()
    target = f"s3://{s3_server.bucket}/{s3_prefix}/p.zarr"
    run = run_deployment(ADHOC, parameters={"params": _params(source, target)}, timeout=0)

    # 1. the run fails: FAULTY failed its 1 + 3 attempts, the other level-0 batches were written once
    failed = _wait_final(stack, run.id)
    assert failed.state.type == StateType.FAILED, failed.state
    assert "1 of 4 batches failed; retry the run" in failed.state.message
    first = _attempts(stack.fault_dir)
    assert first == {"L0-B00000": 1, FAULTY: 4, "L0-B00002": 1, "L0-B00003": 1}, first
    chunks = {lv: _s3_keys(s3_server, f"{s3_prefix}/p.zarr/{lv}/air/c") for lv in range(3)}
    assert [len(chunks[lv]) for lv in range(3)] == [3, 0, 0], chunks  # one chunk per batch; level 1 not started

    # 2. the UI's Retry: AwaitingRetry with force=True; the worker runs the same flow run again
    assert mark_for_retry(run.id).value == "ACCEPT"
    done = _wait_final(stack, run.id)
    assert done.state.type == StateType.COMPLETED, f"{done.state!r}\n{stack.worker_log()}"
    assert done.id == run.id and done.run_count == 2

    # 3. only the failed batch ran again (plus the levels that had not started), once
    second = _attempts(stack.fault_dir)
    assert {k: n for k, n in second.items() if n != first.get(k)} == {FAULTY: 5, "L1-B00000": 1, "L2-B00000": 1}
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        table = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["pyramid-levels"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    states: dict[str, list[str]] = {}
    for t in tasks:
        states.setdefault(t.name, []).append(t.state.name)
    for key in ("L0-B00000", "L0-B00002", "L0-B00003"):  # reused from attempt 1, not rewritten
        assert sorted(states[f"write-{key}"]) == ["Cached", "Completed"], (key, states[f"write-{key}"])
    assert sorted(states[f"write-{FAULTY}"]) == ["Completed", "Failed"], states[f"write-{FAULTY}"]
    assert [a.type for a in table] == ["table"]  # the per-level table operators see in the UI

    # 4. the S3 pyramid equals a clean build of the same source with the same options
    clean = tmp_path / "clean.zarr"
    ds = xr.open_dataset(source, engine="h5netcdf")
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326", chunks_per_shard=1).write(clean)
    assert_same_pyramid(s3_server.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(clean))
