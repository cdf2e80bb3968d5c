"""Reliability: injected transient faults and SIGKILLed flow runs end with exactly the output of a
clean run (decoded arrays and all metadata), and Icechunk's branch never shows a half-built pyramid.

Faults come from the documented hook ``flows/topozarr_flows/runs/faults.py`` (env TOPOZARR_FAULTS, inactive unless set).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import icechunk
import pytest
import xarray as xr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid
from topozarr_flows import BuildParams, build_pyramid
from topozarr_flows.ops.retry import retry_here

ROOT = Path(__file__).resolve().parents[3]
# 400 x 400 x 4 time steps, levels=3, one chunk per shard, 600 kB tiles: 8 tiles of level 0 (one shard
# and time step each), 4 of level 1, 4 of level 2 (the flow's min_tiles: one time step each), each its
# own task run.
TILE_BYTES = 600_000
MIN_TILES = BuildParams.model_fields["min_tiles"].default
STAGE_TILES = {0: 8, 1: 4, 2: 4}
TILE_KEYS = [f"S{stage}-{i:05d}" for stage, n in STAGE_TILES.items() for i in range(n)]
FAULT_RATE = 0.2
#: With 3 task retries a tile fails the run only if 4 consecutive attempts fail (0.2**4 = 0.16 %
#: per tile). Attempts are seeded (flows/topozarr_flows/runs/faults.py), so the outcome of a seed is fixed: seed 9
#: injects 6 failures over 16 tiles (one tile fails twice) and no tile exhausts its retries, so
#: the run completes. (Seed 17, for instance, would exhaust one tile's retries and fail the run.)
FAULT_SEED = "9"
TASK_ATTEMPTS = 4  # 1 + RETRYING["retries"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    ds = make_raster(ny=400, nx=400, nt=4, nan_fraction=0.05)
    path = tmp_path_factory.mktemp("rel-src") / "src.nc"
    ds.drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    return str(path)


@pytest.fixture(scope="module")
def clean(source, tmp_path_factory) -> str:
    """The reference: a plain ``Pyramid.write`` of the same source, no Prefect, no faults."""
    path = tmp_path_factory.mktemp("rel-clean") / "clean.zarr"
    ds = xr.open_dataset(source, engine="h5netcdf")
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326", chunks_per_shard=1).write(path)
    return str(path)


def _params(src: str, target: str, **kw) -> BuildParams:
    # a roomy limit of its own: waiting for slots would only slow these tests down
    kw = {"concurrency_limit": "reliability-writes", "default_concurrency": 32, **kw}
    return BuildParams(source=src, target=target, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326",
                       chunks_per_shard=1, max_tile_bytes=TILE_BYTES, **kw)


def _attempts(fault_dir: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text()) for p in fault_dir.rglob("*.attempts")}


def predicted_attempts(seed: str, rate: float = FAULT_RATE) -> dict[str, int | None]:
    """Attempts each tile needs under ``rate=`` faults (None: all TASK_ATTEMPTS fail), computed
    with the same seeded draw as flows/topozarr_flows/runs/faults.py."""
    out: dict[str, int | None] = {}
    for key in TILE_KEYS:
        out[key] = next((a for a in range(1, TASK_ATTEMPTS + 1)
                         if not random.Random(f"{seed}:{key}:{a}").random() < rate), None)
    return out


def _main_store(repo_path: str):
    return icechunk.Repository.open(icechunk.local_filesystem_storage(repo_path)).readonly_session("main").store


# -- 20 % transient faults ---------------------------------------------------------------------------

def test_fault_seed_is_a_completing_one(source):
    """Documents the seed choice: it injects faults, and no tile exhausts its retries."""
    plan = create_pyramid(xr.open_dataset(source, engine="h5netcdf"), levels=3, x_dim="lon", y_dim="lat",
                          crs="EPSG:4326", chunks_per_shard=1).tile_plan(max_tile_bytes=TILE_BYTES,
                                                                                min_tiles=MIN_TILES)
    assert [t.key for t in plan.tiles] == TILE_KEYS
    predicted = predicted_attempts(FAULT_SEED)
    assert None not in predicted.values()
    assert sum(n - 1 for n in predicted.values()) >= 5  # 6 injected failures
    assert None in predicted_attempts("17").values()  # a seed that would fail the run


@pytest.mark.parametrize("target_format", ["zarr", "icechunk"])
def test_20pct_transient_faults_complete_with_identical_output(prefect_harness, source, clean, tmp_path,
                                                               monkeypatch, target_format):
    fault_dir = tmp_path / "faults"
    monkeypatch.setenv("TOPOZARR_FAULTS", f"rate={FAULT_RATE}")
    monkeypatch.setenv("TOPOZARR_FAULT_SEED", FAULT_SEED)
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(fault_dir))
    target = str(tmp_path / ("p.zarr" if target_format == "zarr" else "repo"))
    state = build_pyramid(_params(source, target, target_format=target_format), return_state=True)
    assert state.is_completed(), state.message

    attempts = _attempts(fault_dir)
    assert sorted(attempts) == sorted(TILE_KEYS)
    retried = {k: n for k, n in attempts.items() if n > 1}
    assert len(retried) >= 5, f"faults did not fire: {attempts}"
    # exactly the seeded outcome: every failed attempt was retried, every tile stopped at its first success
    assert attempts == predicted_attempts(FAULT_SEED)

    store = target if target_format == "zarr" else _main_store(target)
    assert_same_pyramid(store, clean)
    if target_format == "icechunk":
        assert icechunk.Repository.open(icechunk.local_filesystem_storage(target)).list_branches() == {"main"}


def test_fault_hook_is_inactive_by_default(monkeypatch, tmp_path):
    from topozarr_flows.runs import faults

    monkeypatch.delenv("TOPOZARR_FAULTS", raising=False)
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "f"))
    for key in TILE_KEYS:
        faults.maybe_fail(key)  # never raises, never counts
    assert not (tmp_path / "f").exists()


def test_fault_counters_are_per_flow_run(prefect_harness, monkeypatch, tmp_path):
    """Two runs sharing one TOPOZARR_FAULT_DIR: ``tile=K@1`` fails the first attempt of each run."""
    from prefect import flow

    from topozarr_flows.runs import faults

    monkeypatch.setenv("TOPOZARR_FAULTS", "tile=S0-00000@1")
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "f"))

    @flow
    def two_attempts() -> list[str]:
        outcomes = []
        for _ in range(2):
            try:
                faults.maybe_fail("S0-00000")
                outcomes.append("ok")
            except faults.InjectedFault:
                outcomes.append("failed")
        return outcomes

    assert two_attempts() == ["failed", "ok"]
    assert two_attempts() == ["failed", "ok"]  # a new run counts from 1 again
    assert len(list((tmp_path / "f").rglob("S0-00000.attempts"))) == 2


# -- SIGKILL mid-run, then retry the same flow run --------------------------------------------------

def _spawn(params: BuildParams, tmp_path: Path, faults: str, max_workers: int) -> tuple[subprocess.Popen, Path]:
    id_file = tmp_path / "run-id"
    env = dict(os.environ)
    env.update({"TOPOZARR_FAULTS": faults, "TOPOZARR_FAULT_DIR": str(tmp_path / "faults"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))})
    assert env.get("PREFECT_API_URL"), "the prefect_harness fixture exports the harness API URL"
    log = open(tmp_path / "crash_runner.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.scripts.crash_runner", params.model_dump_json(), str(id_file),
                             str(max_workers)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, id_file


def _task_runs(harness, run_id: str, name_like: str, completed_only: bool = True):
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    task_filter = TaskRunFilter(name=TaskRunFilterName(like_=name_like))
    if completed_only:
        task_filter.state = TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED]))
    with harness.client() as c:
        return c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)])),
                                task_run_filter=task_filter)


def _kill_when(proc: subprocess.Popen, id_file: Path, ready, tmp_path: Path, timeout: float = 120) -> str:
    """Wait for the run id, then until ``ready(run_id)``; SIGKILL the runner. Returns the run id."""
    deadline = time.monotonic() + timeout
    run_id = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (tmp_path / "crash_runner.log").read_text()[-3000:]
            pytest.fail(f"the flow process ended (rc {proc.returncode}) before it was killed:\n{log}")
        if run_id is None and id_file.exists():
            run_id = id_file.read_text().strip()
        if run_id is not None and ready(run_id):
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            return run_id
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail("timed out waiting for the flow run to make progress")


DELAY = 0.5  # seconds every tile sleeps in the killed run


def _in_flight(fault_dir: Path) -> bool:
    """Some tile began (its attempt file was written) less than DELAY / 2 ago: it is still sleeping in its slot."""
    now = time.time()
    return any(now - p.stat().st_mtime < DELAY / 2 for p in fault_dir.rglob("*.attempts"))


def _flow_run_state(harness, run_id: str):
    with harness.client() as c:
        return c.read_flow_run(uuid.UUID(run_id)).state


def _unfinished_task_runs(harness, run_id: str) -> list:
    return [t for t in _task_runs(harness, run_id, "%", completed_only=False)
            if t.state is None or not t.state.is_final()]


def _completed_tiles(harness, run_id: str) -> set[str]:
    return {r.name.removeprefix("tile-") for r in _task_runs(harness, run_id, "tile-S")}


@pytest.mark.parametrize("target_format", ["zarr", "icechunk"])
def test_sigkill_mid_run_then_retry_same_run(prefect_harness, source, clean, tmp_path, monkeypatch, target_format):
    limit = f"crash-{target_format}-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 6)
    if target_format == "zarr":
        target = str(tmp_path / "p.zarr")
        previous = None
    else:
        target = str(tmp_path / "repo")
        repo = icechunk.Repository.create(icechunk.local_filesystem_storage(target))
        s = repo.writable_session("main")
        create_pyramid(make_raster(ny=64, nx=64), levels=2, x_dim="lon", y_dim="lat").write(s.store)
        previous = s.commit("previous pyramid")
    params = _params(source, target, target_format=target_format, concurrency_limit=limit)

    # at most 3 tiles in flight: each sleeps 0.5 s while holding its slot (rate=0 only counts attempts)
    proc, id_file = _spawn(params, tmp_path, faults=f"delay={DELAY},rate=0", max_workers=3)
    if target_format == "zarr":  # mid stage 0
        progressed = lambda run_id: len(_completed_tiles(prefect_harness, run_id)) >= 4  # noqa: E731
    else:  # after stage 0 was committed to the staging branch, while stage 1 is being written
        progressed = lambda run_id: bool(_task_runs(prefect_harness, run_id, "commit-stage"))  # noqa: E731
    # ... and while a tile is surely in flight: it started less than DELAY / 2 ago. Checked last, right
    # before the kill: ``progressed`` asks the API, which on a loaded machine can take longer than the
    # tile sleeps (checked first, the tile seen in flight had ended, with its slot, before the kill)
    run_id = _kill_when(proc, id_file, lambda run_id: progressed(run_id) and _in_flight(tmp_path / "faults"),
                        tmp_path)

    # the killed run is still RUNNING as far as the API knows: nothing reported the crash
    assert _flow_run_state(prefect_harness, run_id).is_running()
    # ... and the slots its in-flight tiles held stay taken (no worker ran the crash hook); each lease
    # names its holder, a task run of the dead attempt that the API still shows as Running
    with prefect_harness.client() as c:
        leaked = c.read_global_concurrency_limit_by_name(f"tag:{limit}").active_slots
        holders = set(c.read_concurrency_limit_by_tag(limit).active_slots)
    assert 1 <= leaked <= 3  # at most max_workers
    unfinished = _unfinished_task_runs(prefect_harness, run_id)
    assert len(holders) == leaked and holders <= {t.id for t in unfinished}, (holders, unfinished)
    done_before = _completed_tiles(prefect_harness, run_id)
    assert 4 <= len(done_before) < len(TILE_KEYS)
    started_before = _attempts(tmp_path / "faults")
    assert set(done_before) <= set(started_before)
    if target_format == "icechunk":
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target))
        assert repo.lookup_branch("main") == previous  # readers still see the previous pyramid
        staging = [b for b in repo.list_branches() if b.startswith("topozarr-staging-")]
        assert staging == [f"topozarr-staging-{run_id}"]
        assert "topozarr: stage-0" in [s.message for s in repo.ancestry(branch=staging[0])]
        assert "topozarr: stage-0" not in [s.message for s in repo.ancestry(branch="main")]

    # Retry the SAME flow run as the UI does: force RUNNING -> AwaitingRetry, then execute it here
    monkeypatch.setenv("TOPOZARR_FAULTS", "rate=0")  # keep counting attempts, no delay
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "faults"))
    state = retry_here(run_id, unfinished=True)  # the API still says RUNNING: nothing reported the kill
    assert state.is_completed(), state.message
    assert str(state.state_details.flow_run_id) == run_id
    prefect_harness.settle(run_id)  # the retry's task-run states are recorded from events, after it returns

    # the retry gave the dead attempt's slots back first and ended its task runs: nothing is left Running
    with prefect_harness.client() as c:
        assert c.read_global_concurrency_limit_by_name(f"tag:{limit}").active_slots == 0
        assert c.read_concurrency_limit_by_tag(limit).active_slots == []
    assert _unfinished_task_runs(prefect_harness, run_id) == []
    crashed = [t for t in _task_runs(prefect_harness, run_id, "tile-S", completed_only=False)
               if t.state.type.value == "CRASHED"]
    assert 1 <= len(crashed) <= 3 and all("attempt 1 died" in t.state.message for t in crashed)
    assert holders <= {t.id for t in crashed}

    after = _attempts(tmp_path / "faults")
    assert sorted(after) == sorted(TILE_KEYS)
    # tiles the killed run had completed were resumed from their persisted results, not redone
    assert all(after[k] == 1 for k in done_before), {k: after[k] for k in done_before}
    # tiles not started before the kill ran once; tiles in flight when it died (or whose completion
    # the dying process could not report) ran once more -- tile writes are idempotent
    assert all(after[k] == 1 for k in set(TILE_KEYS) - set(started_before))
    assert all(after[k] <= 2 for k in started_before)
    assert any(after[k] == 2 for k in started_before), "no tile was in flight at the kill"

    if target_format == "zarr":
        assert_same_pyramid(target, clean)
    else:
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target))
        assert repo.lookup_branch("main") not in (previous, None)
        assert repo.lookup_branch("main") == state.result()["snapshot"]
        assert repo.list_branches() == {"main"}
        assert_same_pyramid(repo.readonly_session("main").store, clean)

