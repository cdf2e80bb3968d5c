"""End to end against a real stack, as production runs it: PostgreSQL, `prefect server` on it, the
process work pool and limit, a process worker and the moto S3 endpoint, all on loopback and started
with the infra/ scripts.

The deployments are registered both ways operators do it (``prefect deploy`` with
deployments/prefect.yaml, then deployments/deploy.py). A run of ``build-pyramid-adhoc`` writes to
S3 through the worker; one tile is made to fail all its attempts so the run fails; the run is
retried through the API exactly as the UI's Retry button does; only that tile (and the tiles that
had not started) run again, and the S3 pyramid equals a clean local build.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import xarray as xr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import make_raster
from tests.helpers.services import free_port
from topozarr_core import create_pyramid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
POOL = "topozarr-pool"
FAULTY = "S0-00001"  # fails its 1 + 3 attempts in the first run, passes on the retry
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
    port, pg_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TOPOZARR_", "AWS_"))}
    env.update(
        VENV=sys.prefix,  # the venv running the tests
        TOPOZARR_STATE=str(state),
        PREFECT_PORT=str(port),
        PG_PORT=str(pg_port),
        PREFECT_HOME=str(state / "prefect-home"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOCAL_STORAGE_PATH=str(root / "results"),  # persisted task results, shared by both attempts
    )
    worker_env = {
        **env,
        **s3_server.env(),
        "TOPOZARR_FAULTS": f"tile={FAULTY}@4",
        "TOPOZARR_FAULT_DIR": str(fault_dir),
        "TOPOZARR_RETRY_DELAY": "0",
        "TOPOZARR_WORKER_NAME": f"e2e-worker-{port}",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    try:
        _sh(["infra/postgres.sh", "start"], env, timeout=120)
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
        _sh(["infra/postgres.sh", "stop"], env, timeout=60, check=False)
        for pid_file in state.glob("*.pid"):  # the scripts remove their pid files; anything left is killed
            try:
                os.killpg(int(pid_file.read_text()), 9)
            except (ValueError, ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    # 512 x 512, 3 levels, 256-px shards, 200 kB tiles: 4 tiles of level 0, one of level 1, one of level 2
    path = tmp_path_factory.mktemp("e2e-src") / "src.nc"
    make_raster(ny=512, nx=512, nt=1, nan_fraction=0.05).drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    return str(path)


def _params(source: str, target: str, **kw) -> dict:
    return {"source": source, "target": target, "levels": 3, "x_dim": "lon", "y_dim": "lat", "crs": "EPSG:4326",
            "chunks_per_shard": 1, "max_tile_bytes": 200_000, **kw}


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
    return {p.stem: len(p.read_text()) for p in fault_dir.rglob("*.attempts")}


def _s3_keys(s3_server, prefix: str) -> list[str]:
    out = s3_server.boto3_client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix + "/")
    return [o["Key"] for o in out.get("Contents", [])]


def test_deployments_registered_from_yaml_and_python(stack):
    nightly, adhoc, update = (stack.cli_deployments[n] for n in (NIGHTLY, ADHOC, UPDATE_NIGHTLY))
    assert nightly["entrypoint"] == adhoc["entrypoint"] == "flows/topozarr_flows/build/flow.py:build_pyramid"
    assert update["entrypoint"] == "flows/topozarr_flows/update/flow.py:update_pyramid"
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

    # the classic UI's Retry (force=False): the server's rules accept it for a failed run of a
    # deployment; the worker runs it again, and it fails the same way
    from topozarr_flows.ops.retry import mark_for_retry

    assert mark_for_retry(run.id, force=False).value == "ACCEPT"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.name in ("AwaitingRetry", "Pending", "Submitting", "Running",
                                                           "Failed")
    again = _wait_final(stack, run.id)
    assert again.state.is_failed() and "unknown method 'median'" in again.state.message
    with get_client(sync_client=True) as client:
        assert "AwaitingRetry" in [s.name for s in client.read_flow_run_states(run.id)]
    assert _s3_keys(s3_server, s3_prefix) == []


def test_failed_tile_is_retried_through_the_api_like_the_ui(stack, s3_server, s3_prefix, source, tmp_path):
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

    from topozarr_flows.ops.retry import mark_for_retry

    for p in stack.fault_dir.rglob("*.attempts"):
        p.unlink()
    target = f"s3://{s3_server.bucket}/{s3_prefix}/p.zarr"
    run = run_deployment(ADHOC, parameters={"params": _params(source, target)}, timeout=0)

    # 1. the run fails: FAULTY failed its 1 + 3 attempts, the other level-0 tiles were written once
    failed = _wait_final(stack, run.id)
    assert failed.state.type == StateType.FAILED, failed.state
    assert "1 of 6 tiles failed after their retries; tile-S0-00001 (level 0)" in failed.state.message
    assert "retry the run" in failed.state.message
    first = _attempts(stack.fault_dir)
    assert first == {"S0-00000": 1, FAULTY: 4, "S0-00002": 1, "S0-00003": 1}, first
    chunks = {lv: _s3_keys(s3_server, f"{s3_prefix}/p.zarr/{lv}/air/c") for lv in range(3)}
    assert [len(chunks[lv]) for lv in range(3)] == [3, 0, 0], chunks  # one shard per tile; level 1 not started

    # 2. the UI's Retry: AwaitingRetry with force=True; the worker runs the same flow run again
    assert mark_for_retry(run.id).value == "ACCEPT"
    done = _wait_final(stack, run.id)
    assert done.state.type == StateType.COMPLETED, f"{done.state!r}\n{stack.worker_log()}"
    assert done.id == run.id and done.run_count == 2

    # 3. only the failed tile ran again (plus the tiles that had not started), once
    second = _attempts(stack.fault_dir)
    assert {k: n for k, n in second.items() if n != first.get(k)} == {FAULTY: 5, "S1-00000": 1, "S2-00000": 1}
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        table = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["pyramid-levels"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    states: dict[str, list[str]] = {}
    for t in tasks:
        states.setdefault(t.name, []).append(t.state.name)
    for key in ("S0-00000", "S0-00002", "S0-00003"):  # reused from attempt 1, not rewritten
        assert sorted(states[f"tile-{key}"]) == ["Cached", "Completed"], (key, states[f"tile-{key}"])
    assert sorted(states[f"tile-{FAULTY}"]) == ["Completed", "Failed"], states[f"tile-{FAULTY}"]
    assert [a.type for a in table] == ["table"]  # the per-level table operators see in the UI

    # 4. the S3 pyramid equals a clean build of the same source with the same options
    clean = tmp_path / "clean.zarr"
    ds = xr.open_dataset(source, engine="h5netcdf")
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326", chunks_per_shard=1).write(clean)
    assert_same_pyramid(s3_server.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(clean))


# The server log, split into records: a `HH:MM:SS.fff | LEVEL | logger - message` line and the lines
# after it (a traceback). A record is a scheduler failure when it is an ERROR/CRITICAL or carries a
# traceback and names the scheduler services (docket logs their failures as `ERROR | docket... -
# schedule_recent_deployments()` with frames in prefect/server/services/scheduler.py), or when it holds
# SQLAlchemy's InvalidRequestError (the 2.1 bulk DML regression) anywhere. Other server errors, e.g. a
# worker heartbeat hitting `sqlite3.OperationalError: database is locked` on a loaded machine, are not.
LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| (\w+)\s*\| ", re.M)
SCHEDULER = re.compile(r"services[/.]scheduler|schedule_deployments|schedule_recent_deployments"
                       r"|_insert_scheduled_flow_runs|Error scheduling deployment")


def _server_log(stack: Stack) -> str:
    log = stack.state / "logs" / "prefect-server.log"
    return log.read_text(errors="replace") if log.exists() else ""


def scheduler_failures(log: str) -> list[str]:
    starts = [m.start() for m in LOG_RECORD.finditer(log)]
    records = [log[a:b] for a, b in zip([0, *starts], [*starts, len(log)]) if log[a:b].strip()]
    out = []
    for rec in records:
        m = LOG_RECORD.match(rec)
        failed = "Traceback (most recent call last)" in rec or (m is not None and m.group(1) in ("ERROR", "CRITICAL"))
        if "InvalidRequestError" in rec or (failed and SCHEDULER.search(rec)):
            out.append(rec.strip())
    return out


def _scheduler_failures(stack: Stack) -> list[str]:
    return scheduler_failures(_server_log(stack))


def test_scheduler_failures_are_found_in_a_real_log():
    """The detector on excerpts of real server logs: Prefect 3.8.8 with SQLAlchemy 2.1.9 (found), and
    a worker heartbeat's transient SQLite lock on this busy machine (not the scheduler's)."""
    broken = """01:10:11.905 | INFO    | uvicorn.error - Application startup complete.
01:10:16.253 | ERROR   | docket.dependencies - ↩ [    57ms] schedule_recent_deployments(){schedule_recent_deployments}
Traceback (most recent call last):
  File ".../docket/worker.py", line 1134, in _execute
    result = await execution.function(
  File ".../prefect/server/services/scheduler.py", line 348, in schedule_recent_deployments
    inserted_runs = await models.deployments._insert_scheduled_flow_runs(
  File ".../sqlalchemy/ext/hybrid.py", line 1851, in prop
    raise exc.InvalidRequestError(
sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement; please supply a bulk_dml decorated function
01:10:17.001 | INFO    | prefect.server - something else
"""
    locked = """01:07:59.555 | ERROR   | prefect.server.utilities.worker_channel - Worker channel heartbeat persistence failed: work_pool=topozarr-pool worker_name=w
Traceback (most recent call last):
  File ".../sqlalchemy/dialects/sqlite/aiosqlite.py", line 195, in execute
    self.await_(_cursor.execute(operation, parameters))
sqlite3.OperationalError: database is locked

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File ".../prefect/server/utilities/worker_channel.py", line 686, in _receive_loop
    pool_updated = await _persist_worker_channel_heartbeat(
  File ".../prefect/server/models/workers.py", line 1035, in worker_heartbeat
    result = await session.execute(insert_stmt)
sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked
01:08:00.100 | INFO    | prefect.server.services.scheduler - Scheduled 3 runs.
"""
    found = scheduler_failures(broken)
    assert len(found) == 1 and found[0].startswith("01:10:16.253 | ERROR   | docket.dependencies")
    assert found[0].endswith("please supply a bulk_dml decorated function")
    assert scheduler_failures(locked) == []
    assert scheduler_failures(locked + broken) == found


def test_active_schedule_creates_runs_that_the_worker_completes(stack, tmp_path):
    """An ACTIVE interval schedule: the server's scheduler creates the runs, the worker executes one
    into a valid pyramid, and the scheduler never raises (SQLAlchemy 2.1 broke it: no scheduled run
    was ever created, and the paused schedules of the other tests cannot see that)."""
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy, StateType
    from prefect.schedules import Interval

    from topozarr_core.validate.pyramid import validate_pyramid

    src, target = tmp_path / "src.nc", tmp_path / "scheduled.zarr"
    ds = make_raster(ny=128, nx=128, nt=1).drop_vars("spatial_ref")
    ds.to_netcdf(src, engine="h5netcdf")
    params = _params(str(src), str(target), levels=2)
    started = time.monotonic()
    dep_id = Flow.from_source(source=str(REPO), entrypoint="flows/topozarr_flows/build/flow.py:build_pyramid").deploy(
        name="build-pyramid-every-10s",
        work_pool_name=POOL,
        build=False,
        push=False,
        schedules=[Interval(10)],  # active
        parameters={"params": params},
        job_variables={"env": {"TOPOZARR_FAULTS": ""}},  # the stack's worker injects faults otherwise
        # a run that finds the previous one still running is cancelled, not queued: never two at once
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        print_next_steps=False,
        ignore_warnings=True,
    )
    runs_of_deployment = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[dep_id]))
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment(dep_id)
            assert [s.active for s in deployment.schedules] == [True]
            deadline = time.monotonic() + 120
            while True:
                failures = _scheduler_failures(stack)
                assert not failures, "the server's scheduler raised:\n" + "\n".join(failures[:20])
                runs = client.read_flow_runs(flow_run_filter=runs_of_deployment, limit=200)
                completed = [r for r in runs if r.state_type == StateType.COMPLETED]
                if completed:
                    break
                failed = [r for r in runs if r.state_type in (StateType.FAILED, StateType.CRASHED)]
                assert not failed, f"{failed[0].state!r}\n{stack.worker_log()}"
                assert time.monotonic() < deadline, (
                    f"no scheduled run completed within 120 s; runs: {[(r.name, r.state_name) for r in runs]}\n"
                    f"server log:\n{_server_log(stack)[-3000:]}\nworker log:\n{stack.worker_log()}")
                time.sleep(1)
            # every run of this deployment was created by the scheduler, none by hand
            assert runs and all(r.auto_scheduled for r in runs), [(r.name, r.auto_scheduled) for r in runs]
            assert len(runs) >= 2, [(r.name, r.state_name) for r in runs]  # the scheduler keeps runs ahead
            assert all(r.created_by is not None and r.created_by.type == "SCHEDULE" for r in runs)
            assert completed[0].parameters == {"params": params}

            # stop the schedule: its future runs are deleted; wait for one that was already submitted
            client.update_deployment_schedule(dep_id, deployment.schedules[0].id, active=False)
            assert [s.active for s in client.read_deployment(dep_id).schedules] == [False]
            deadline = time.monotonic() + 90
            while True:
                left = [r for r in client.read_flow_runs(flow_run_filter=runs_of_deployment, limit=200)
                        if r.state is None or not r.state.is_final()]
                scheduled = [r for r in left if r.state_type == StateType.SCHEDULED]
                for r in scheduled:  # one the server had already handed to the worker's prefetch
                    client.delete_flow_run(r.id)
                if not left:
                    break
                assert time.monotonic() < deadline, [(r.name, r.state_name) for r in left]
                time.sleep(1)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(dep_id)

    pyramid = create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", crs="EPSG:4326", chunks_per_shard=1)
    report = validate_pyramid(pyramid, str(target))
    assert report.ok, report.problems
    assert not _scheduler_failures(stack), "\n".join(_scheduler_failures(stack)[:20])
    print(f"scheduled run completed {time.monotonic() - started:.0f} s after the deployment was registered")


def _cli(stack: Stack, args: list[str], extra_env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`topozarr-flows ...` as an operator runs it: from the repository root, in a shell with the
    stack's variables (and the S3 endpoint's)."""
    return _sh([f"{sys.prefix}/bin/topozarr-flows", *args], {**stack.env, **extra_env}, timeout=timeout, check=False)


def test_failed_update_run_is_retried_on_the_worker_with_the_cli(stack, s3_server, s3_prefix, tmp_path):
    """`topozarr-flows retry <update run>`: AwaitingRetry (forced), the worker runs the same update
    run again with the update flow; only the failed tile is written again."""
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    ds = make_raster(ny=256, nx=256, nt=4, nan_fraction=0.05).drop_vars("spatial_ref")
    whole = tmp_path / "whole.nc"
    ds.to_netcdf(whole, engine="h5netcdf")
    opts = dict(levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326", chunks_per_shard=1)
    # the pyramid of the first 2 steps, on S3: the update appends 2
    create_pyramid(ds.isel(time=slice(0, 2)), **opts).write(s3_server.zarr_store(f"{s3_prefix}/u.zarr"))
    fault_dir = tmp_path / "faults"
    # 256 kB a time step: one tile per new step, every level of it
    params = {"source": str(whole), "target": f"s3://{s3_server.bucket}/{s3_prefix}/u.zarr", "append_dim": "time",
              "max_tile_bytes": 300_000}
    run = run_deployment(UPDATE_NIGHTLY, parameters={"params": params}, timeout=0, job_variables={
        "env": {"TOPOZARR_FAULTS": "tile=S0-00001@4", "TOPOZARR_FAULT_DIR": str(fault_dir)}})
    failed = _wait_final(stack, run.id)
    assert failed.state.type == StateType.FAILED, f"{failed.state!r}\n{stack.worker_log()}"
    assert "1 of 2 tiles failed after their retries; tile-S0-00001" in failed.state.message
    assert "retry the run" in failed.state.message
    assert _attempts(fault_dir)["S0-00001"] == 4

    out = _cli(stack, ["retry", str(run.id)], s3_server.env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"flow run {run.id}: AwaitingRetry; a worker polling pool '{POOL}' "
                                  "will run it again")
    done = _wait_final(stack, run.id)
    assert done.state.type == StateType.COMPLETED, f"{done.state!r}\n{stack.worker_log()}"
    assert done.run_count == 2
    attempts = _attempts(fault_dir)
    assert attempts == {"S0-00000": 1, "S0-00001": 5}, attempts
    full = tmp_path / "full.zarr"
    create_pyramid(xr.open_dataset(whole, engine="h5netcdf"), **opts).write(full)
    assert_same_pyramid(s3_server.zarr_store(f"{s3_prefix}/u.zarr", read_only=True), str(full))


def test_failed_deployment_run_is_retried_here_with_the_cli(stack, s3_server, s3_prefix, source, tmp_path):
    """`topozarr-flows retry <build run> --here` on a run of a deployment while the worker polls its pool:
    it runs in the CLI's process (claimed as Pending, never Scheduled, so the worker cannot take it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    fault_dir = tmp_path / "faults"
    faults = {"TOPOZARR_FAULTS": "tile=S0-00002@4", "TOPOZARR_FAULT_DIR": str(fault_dir)}
    target = f"s3://{s3_server.bucket}/{s3_prefix}/p.zarr"
    run = run_deployment(ADHOC, parameters={"params": _params(source, target)}, timeout=0,
                         job_variables={"env": faults})
    failed = _wait_final(stack, run.id)
    assert failed.state.type == StateType.FAILED, f"{failed.state!r}\n{stack.worker_log()}"
    assert _attempts(fault_dir)["S0-00002"] == 4

    out = _cli(stack, ["retry", str(run.id), "--here"], {**s3_server.env(), **faults, "TOPOZARR_RETRY_DELAY": "0"})
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert out.stdout.strip().endswith(f"flow run {run.id}: Completed (COMPLETED)"), out.stdout
    with get_client(sync_client=True) as client:
        done = client.read_flow_run(run.id)
        history = [s.name for s in client.read_flow_run_states(run.id)]
    assert done.run_count == 2 and done.state.is_completed()
    assert history[-4:] == ["Failed", "Pending", "Running", "Completed"], history
    attempts = _attempts(fault_dir)  # the tiles the worker's attempt wrote came from its cached results
    assert attempts["S0-00002"] == 5 and all(n == 1 for k, n in attempts.items() if k != "S0-00002"), attempts
    clean = tmp_path / "clean.zarr"
    create_pyramid(xr.open_dataset(source, engine="h5netcdf"), levels=3, x_dim="lon", y_dim="lat",
                   crs="EPSG:4326", chunks_per_shard=1).write(clean)
    assert_same_pyramid(s3_server.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(clean))


# -- SIGKILL of a worker's flow-run process -------------------------------------------------------

def _flow_run_process(stack: Stack, run_id: UUID, timeout: float = 60):
    """The process the worker started for ``run_id`` (it carries the run's id in its environment)."""
    import psutil

    worker = psutil.Process(int((stack.state / "worker.pid").read_text()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in worker.children(recursive=True):
            try:
                if proc.environ().get("PREFECT__FLOW_RUN_ID") == str(run_id):
                    return proc
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.2)
    raise AssertionError(f"no process of the worker runs {run_id}\n{stack.worker_log()}")


def _task_run_states(run_id: UUID) -> list[tuple[str, str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return [(t.name, t.state.type.value, t.state.message or "") for t in runs]


def _active_slots(limit: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(f"tag:{limit}").active_slots


def _run_to_the_end(stack: Stack, start) -> tuple[object, float]:
    t0 = time.monotonic()
    run_id = start()
    return _wait_final(stack, run_id, timeout=240), time.monotonic() - t0


def test_sigkill_of_a_workers_flow_run_frees_its_slots_and_the_retry_is_as_fast_as_a_clean_build(
        stack, source, tmp_path):
    """kill -9 of the flow-run process mid level 0, with every slot of the limit taken by its tiles: the
    worker marks the run Crashed and its crash hook gives the slots back and ends the dead task runs
    (Crashed, not Running) within seconds; the UI's Retry then takes no longer than 1.5x a clean build
    (with Prefect's own 300 s leases it waited five minutes for the slots) and ends identical to it."""
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    from topozarr_flows.ops.retry import mark_for_retry

    limit = f"crash-e2e-{uuid4().hex[:6]}"
    slow = {"env": {"TOPOZARR_FAULTS": "delay=1.5", "TOPOZARR_FAULT_DIR": str(tmp_path / "faults")}}

    def start(target: str):
        params = _params(source, str(target), concurrency_limit=limit, default_concurrency=2)
        return run_deployment(ADHOC, parameters={"params": params}, timeout=0, job_variables=slow).id

    clean, clean_s = _run_to_the_end(stack, lambda: start(tmp_path / "clean.zarr"))
    assert clean.state.type == StateType.COMPLETED, f"{clean.state!r}\n{stack.worker_log()}"

    run_id = start(tmp_path / "p.zarr")
    proc = _flow_run_process(stack, run_id)
    deadline = time.monotonic() + 120
    while _active_slots(limit) < 2:  # both slots held by level-0 tiles sleeping in them
        assert time.monotonic() < deadline, _task_run_states(run_id)
        time.sleep(0.1)
    proc.kill()
    killed = time.monotonic()

    crashed = _wait_final(stack, run_id, timeout=60)
    assert crashed.state.type == StateType.CRASHED, crashed.state
    while _active_slots(limit) or any(s in ("RUNNING", "PENDING") for _, s, _ in _task_run_states(run_id)):
        assert time.monotonic() - killed < 60, (_active_slots(limit), _task_run_states(run_id), stack.worker_log())
        time.sleep(0.5)
    freed_after = time.monotonic() - killed
    dead = [(n, m) for n, s, m in _task_run_states(run_id) if s == "CRASHED"]
    assert dead and all(n.startswith("tile-") and "flow run process died (Process exited with status code: -9" in m
                        and "SIGKILL" in m for n, m in dead), dead

    # Once the crash hook is done, Prefect's worker checks the run once more and reports it Crashed
    # again if it is not final by then: a Retry made before that check is overwritten. Wait for the
    # hook's line in the worker log, then a moment, as an operator would look before clicking Retry.
    while f"flow run {run_id} crashed: released" not in stack.worker_log(400):
        assert time.monotonic() - killed < 60, stack.worker_log()
        time.sleep(0.5)
    time.sleep(3)

    t0 = time.monotonic()
    mark_for_retry(run_id)
    done = _wait_final(stack, run_id, timeout=240)
    retry_s = time.monotonic() - t0
    assert done.state.type == StateType.COMPLETED, f"{done.state!r}\n{stack.worker_log()}"
    assert retry_s <= 1.5 * clean_s, f"retry took {retry_s:.1f} s, a clean build {clean_s:.1f} s"
    assert not [t for t in _task_run_states(run_id) if t[1] in ("RUNNING", "PENDING")]
    assert _active_slots(limit) == 0
    assert_same_pyramid(str(tmp_path / "p.zarr"), str(tmp_path / "clean.zarr"))
    print(f"slots free {freed_after:.1f} s after the kill; retry {retry_s:.1f} s, clean build {clean_s:.1f} s")


HOLD_SLOT = """
import sys, time
from topozarr_flows.prefect_api.slots import hold_slot
with hold_slot(sys.argv[1], None):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_holders_slot_comes_back_by_itself_within_its_short_lease(stack):
    """With nothing left to run a crash hook or a retry (the whole machine gone): the slot's lease is 60 s
    (the server's minimum, renewed while held) and infra/prefect-server.sh's repossessor runs every 5 s,
    so it is back within ~65 s. Prefect's own ``concurrency()`` would keep it 300 s."""
    from prefect.client.orchestration import get_client

    from topozarr_flows.prefect_api.slots import LEASE_SECONDS

    limit = f"lease-{uuid4().hex[:6]}"
    env = {**stack.env, "PYTHONPATH": str(REPO)}
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=limit, concurrency_limit=1)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SLOT, limit], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "held", proc.stdout.read()
    assert _active_slots(limit) == 1
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    while _active_slots(limit):
        waited = time.monotonic() - killed
        assert waited < LEASE_SECONDS + 15, f"the killed holder's slot is still taken after {waited:.0f} s"
        time.sleep(1)
    assert time.monotonic() - killed <= LEASE_SECONDS + 5 + 2  # lease + one repossessor pass + polling


def test_watch_prints_the_failure_line(stack, source, tmp_path):
    """`prefect deployment run --watch` ends with only "Flow run finished in state 'Failed'";
    `topozarr-flows run ... --watch` ends with the run's state message: the tile and the root cause."""
    import json

    faults = {"TOPOZARR_FAULTS": "tile=S0-00002@always", "TOPOZARR_FAULT_DIR": str(tmp_path / "faults")}
    out = _sh([f"{sys.prefix}/bin/topozarr-flows", "run", ADHOC, "--watch", "--timeout", "200",
               "--params", json.dumps({"params": _params(source, str(tmp_path / "w.zarr"))}),
               "--job-variable", f"env={json.dumps(faults)}"], stack.env, timeout=240, check=False)
    assert out.returncode == 1, f"{out.stdout}\n{out.stderr}"
    first, last = out.stdout.strip().splitlines()[0], out.stdout.strip().splitlines()[-1]
    run_id = first.split()[2]
    assert first.startswith(f"flow run {run_id} (") and first.endswith(f") of {ADHOC}"), first
    assert last.startswith(f"flow run {run_id} (") and "): Failed: " in last, last
    assert ("1 of 6 tiles failed after their retries; tile-S0-00002 (level 0): InjectedFault: injected "
            "failure in S0-00002 (attempt 4); 2 tiles that read them were not started; "
            "retry the run to redo only the failed tiles") in last, last

    # `watch` on the ended run prints the same line at once
    again = _sh([f"{sys.prefix}/bin/topozarr-flows", "watch", run_id], stack.env, timeout=60, check=False)
    assert again.returncode == 1 and again.stdout.strip() == last, again.stdout


def test_server_log_has_no_scheduler_failure_after_all_the_runs(stack):
    """Last in the module: the scheduler stayed healthy through every run, retry and schedule above."""
    failures = _scheduler_failures(stack)
    assert not failures, "\n\n".join(failures[:5])
