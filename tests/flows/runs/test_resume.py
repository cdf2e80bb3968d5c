"""Retrying a failed flow run (as the UI's Retry does) redoes only the failed tiles and ends with
output identical to a clean run; Icechunk's main stays untouched until the final publish."""

from __future__ import annotations

from pathlib import Path

import icechunk
import pytest
import xarray as xr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid
from topozarr_flows import BuildParams, build_pyramid
from topozarr_flows.ops.retry import retry_here
from topozarr_flows.runs.job import load_job


@pytest.fixture
def source(netcdf_720):
    return netcdf_720


#: 8 tiles of level 0 (a quarter of one time step each), 2 of level 1 (one time step each, reading the four
#: level-0 tiles under it), 2 of level 2
TILE_BYTES = 800_000


def _params(src, target, **kw):
    return BuildParams(source=src, target=target, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326",
                       chunks_per_shard=1, max_tile_bytes=TILE_BYTES, **kw)


def _above(depends: dict[str, tuple[str, ...]], key: str) -> set[str]:
    """The tiles that read ``key``'s output, directly or through a level between."""
    above, frontier = set(), {key}
    while frontier:
        frontier = {k for k, parents in depends.items() if set(parents) & frontier} - above
        above |= frontier
    return above


def _attempts(fault_dir: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text()) for p in fault_dir.rglob("*.attempts")}


def _clean_build(src, path):
    ds = xr.open_dataset(src, engine="h5netcdf")
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326", chunks_per_shard=1).write(path)


def test_retry_redoes_only_failed_tile_zarr(prefect_harness, source, tmp_path, monkeypatch):
    fault_dir = tmp_path / "faults"
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(fault_dir))
    # S0-00003 fails its first 4 attempts: the task's 1 + 3 retries, so the run fails
    monkeypatch.setenv("TOPOZARR_FAULTS", "tile=S0-00003@4")
    params = _params(source, str(tmp_path / "p.zarr"))
    state = build_pyramid(params, return_state=True)
    assert state.is_failed()
    # the tiles reading the failed one (directly or through a level between) are never started
    depends = load_job(params).plan.depends()
    above = _above(depends, "S0-00003")
    assert above and len(above) < len(depends) - 1
    # one line naming the failing tile and its root cause
    message = state.message or ""
    assert "1 of" in message and "tile-S0-00003 (level 0): InjectedFault: injected failure in S0-00003" in message
    assert f"{len(above)} tiles that read them were not started" in message
    assert "\n" not in message, message
    first = _attempts(fault_dir)
    assert first["S0-00003"] == 4 and len(first) >= 4
    assert all(n == 1 for k, n in first.items() if k != "S0-00003")
    assert not above & set(first)
    # every other tile ran: a later stage's tile starts as soon as what it reads is written (no barrier)
    assert set(first) | above == set(depends)
    assert any(k.startswith("S1") for k in first)

    retried = retry_here(state.state_details.flow_run_id)
    assert retried.is_completed()
    level0 = retried.result()["levels"][0]
    assert (level0["written"], level0["reused"]) == (1, level0["tiles"] - 1)  # what this attempt rewrote
    assert len(level0["shape"]) == len(level0["chunks"]) == len(level0["shards"]) == len(level0["dims"])
    second = _attempts(fault_dir)
    redone = {k for k in second if second[k] != first.get(k, 0)}
    # only the failed tile and the tiles that had not run yet
    assert second["S0-00003"] == 5
    assert redone == {"S0-00003"} | above  # the tiles written before are reused
    _clean_build(source, tmp_path / "clean.zarr")
    assert_same_pyramid(str(tmp_path / "p.zarr"), str(tmp_path / "clean.zarr"))


@pytest.mark.parametrize("failing", ["S1-00000", "S0-00003"])
def test_retry_icechunk_main_untouched_until_publish(prefect_harness, source, tmp_path, monkeypatch, failing):
    """Each stage's tiles write into forks of the commit of the stage before; a failed tile leaves
    main alone, and the retry writes only what had not been written and ends identical to a clean build."""
    fault_dir = tmp_path / "faults"
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(fault_dir))
    repo_path = str(tmp_path / "repo")
    storage = icechunk.local_filesystem_storage(repo_path)
    repo = icechunk.Repository.create(storage)
    # a previous pyramid on main
    s = repo.writable_session("main")
    create_pyramid(make_raster(ny=64, nx=64), levels=2, x_dim="lon", y_dim="lat").write(s.store)
    previous = s.commit("previous pyramid")

    monkeypatch.setenv("TOPOZARR_FAULTS", f"tile={failing}@4")
    state = build_pyramid(_params(source, repo_path, target_format="icechunk"), return_state=True)
    assert state.is_failed()
    repo = icechunk.Repository.open(storage)
    assert repo.lookup_branch("main") == previous  # readers still see the previous snapshot
    assert any(b.startswith("topozarr-staging-") for b in repo.list_branches())

    retried = retry_here(state.state_details.flow_run_id)
    assert retried.is_completed()
    attempts = _attempts(fault_dir)
    assert all(n == 1 for k, n in attempts.items() if k != failing)  # nothing written twice
    assert attempts[failing] == 5
    repo = icechunk.Repository.open(storage)
    assert repo.lookup_branch("main") != previous
    assert repo.list_branches() == {"main"}
    _clean_build(source, tmp_path / "clean.zarr")
    assert_same_pyramid(repo.readonly_session("main").store, str(tmp_path / "clean.zarr"))


# -- `topozarr-flows retry`: both flows, and what is refused ------------------------------------------


def test_cli_retry_here_build_run(prefect_harness, source, tmp_path, monkeypatch, capsys):
    from topozarr_flows.ops.cli import main

    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv("TOPOZARR_FAULTS", "tile=S0-00001@4")
    state = build_pyramid(_params(source, str(tmp_path / "p.zarr")), return_state=True)
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    assert main(["retry", run_id, "--here"]) == 0
    assert capsys.readouterr().out.strip() == f"flow run {run_id}: Completed (COMPLETED)"
    with prefect_harness.client() as client:
        run = client.read_flow_run(run_id)
        history = [s.name for s in client.read_flow_run_states(run_id)]
    assert run.run_count == 2 and run.state.is_completed()
    # what happened, in order: failed, claimed here as a worker claims a run, run again
    assert history == ["Pending", "Running", "Failed", "Pending", "Running", "Completed"], history
    assert _attempts(tmp_path / "faults")["S0-00001"] == 5
    _clean_build(source, tmp_path / "clean.zarr")
    assert_same_pyramid(str(tmp_path / "p.zarr"), str(tmp_path / "clean.zarr"))


def test_cli_retry_here_update_run(prefect_harness, tmp_path, monkeypatch, capsys):
    """An update run is retried with the update flow and its UpdateParams (BuildParams refuses append_dim)."""
    from topozarr_flows import UpdateParams, update_pyramid
    from topozarr_flows.ops.cli import main

    ds = make_raster(ny=512, nx=512, nt=5, nan_fraction=0.05).drop_vars("spatial_ref")
    part, whole = str(tmp_path / "part.nc"), str(tmp_path / "whole.nc")
    ds.isel(time=slice(0, 3)).to_netcdf(part, engine="h5netcdf")
    ds.to_netcdf(whole, engine="h5netcdf")
    target = str(tmp_path / "p.zarr")
    assert build_pyramid(_params(part, target), return_state=True).is_completed()
    monkeypatch.setenv("TOPOZARR_FAULT_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv("TOPOZARR_FAULTS", "tile=S0-00001@4")  # the task's 1 + 3 attempts
    # 1 MB per time step: the update's 2 new steps are 2 tiles of every level
    state = update_pyramid(UpdateParams(source=whole, target=target, max_tile_bytes=1_000_000), return_state=True)
    assert state.is_failed(), state
    run_id = str(state.state_details.flow_run_id)
    assert main(["retry", run_id, "--here"]) == 0
    assert capsys.readouterr().out.strip() == f"flow run {run_id}: Completed (COMPLETED)"
    with prefect_harness.client() as client:
        run = client.read_flow_run(run_id)
    assert run.run_count == 2
    attempts = _attempts(tmp_path / "faults")
    assert attempts["S0-00001"] == 5 and all(n == 1 for k, n in attempts.items() if k != "S0-00001"), attempts
    assert len(attempts) == 2
    full = tmp_path / "full.zarr"
    create_pyramid(xr.open_dataset(whole, engine="h5netcdf"), levels=3, x_dim="lon", y_dim="lat",
                   crs="EPSG:4326", chunks_per_shard=1).write(full)
    assert_same_pyramid(target, str(full))


def test_retry_refusals(prefect_harness, tmp_path, capsys):
    from prefect import flow
    from prefect.states import Running

    from topozarr_flows.ops.cli import main
    from topozarr_flows.ops.retry import RetryRefused, mark_for_retry, retry_here

    @flow(name="not-a-pyramid-flow")
    def other():
        raise RuntimeError("boom")

    failed = other(return_state=True)
    assert failed.is_failed()
    run_id = failed.state_details.flow_run_id
    # the classic UI's force=False: the server refuses to reschedule a run without a deployment
    with pytest.raises(RetryRefused, match="ABORT.*Cannot reschedule a run without an associated deployment"):
        mark_for_retry(run_id, force=False)
    # a flow retry does not know how to run: refused before any state change
    with pytest.raises(RetryRefused, match="flow 'not-a-pyramid-flow'"):
        retry_here(run_id)
    # without --here, a run without a deployment would wait for a worker forever: refused
    assert main(["retry", str(run_id)]) == 2
    assert "has no deployment, so no worker would run it: use --here" in capsys.readouterr().err
    with prefect_harness.client() as client:
        assert client.read_flow_run(run_id).state.name == "Failed"  # untouched by all of the above
        # a run that has not finished is never retried (it would run twice)
        client.set_flow_run_state(run_id, Running(), force=True)
    with pytest.raises(RetryRefused, match="only a finished run"):
        mark_for_retry(run_id)
    assert main(["retry", str(run_id), "--here"]) == 1
    assert "only a finished run" in capsys.readouterr().err
    assert main(["retry", "00000000-0000-0000-0000-000000000000"]) == 1
    assert "no flow run 00000000-0000-0000-0000-000000000000" in capsys.readouterr().err
    assert main(["retry", "not-an-id", "--here"]) == 2
