"""Bad inputs to the flow, its deployment's parameter schema and the CLI: each fails with one clear
line before anything is written and leaves the target untouched (files' names, sizes, mtimes and bytes;
an Icechunk repository the same way). The core half (sources ``open_source`` refuses) is
tests/core/store/test_bad_inputs.py; tests/core/spec/test_planning.py has 25 ``create_pyramid`` cases."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import xarray as xr
import zarr

from tests.helpers.inputs import MotoAuth, assert_clear, tree_state
from topozarr_core import create_pyramid
from topozarr_flows import build_pyramid

BASE = dict(levels=2, x_dim="lon", y_dim="lat", crs="EPSG:4326")


def fail_flow(params: dict, match: str) -> str:
    """Run the flow with ``params`` (a plain dict, as a deployment passes it); it must fail with ``match``."""
    state = build_pyramid(params, return_state=True)
    assert state.is_failed(), f"expected a failed run, got {state}"
    msg = str(state.result(raise_on_failure=False))
    assert re.search(match, msg), f"{match!r} not in: {msg}"
    assert_clear(msg)
    return msg


@pytest.fixture(scope="module")
def existing(tmp_path_factory, src) -> Path:
    """A published 2-level pyramid that bad runs must not touch."""
    path = tmp_path_factory.mktemp("existing") / "pyramid.zarr"
    create_pyramid(xr.open_dataset(src["good"], engine="h5netcdf"), levels=2, x_dim="lon", y_dim="lat",
                   crs="EPSG:4326").write(path)
    return path


@pytest.fixture
def target(existing, tmp_path) -> Path:
    """A private copy of the existing pyramid (with the original mtimes)."""
    path = tmp_path / "target.zarr"
    shutil.copytree(existing, path)
    return path


# -- 1. parameters: the flow's pydantic model (what a deployment run with bad parameters hits) ---------

PARAM_CASES = [
    ("no-levels-or-factors", dict(levels=None), "exactly one of levels or factors"),
    ("levels-and-factors", dict(factors=[1, 2]), "exactly one of levels or factors"),
    ("unknown-method", dict(method="median"), "unknown method 'median'"),
    ("chunks-per-shard", dict(chunks_per_shard=3), "chunks_per_shard must be one of"),
    ("rust-into-icechunk", dict(target_format="icechunk", io="rust"), "io='rust' cannot write Icechunk"),
    ("blank-target", dict(target="  "), "target.*must not be empty"),
    ("unknown-mode", dict(mode="overwrite"), r"mode.*'w', 'w-' or 'a'"),
    ("tiny-region-budget", dict(max_region_bytes=10), "max_region_bytes.*greater than or equal to 1000000"),
    ("unknown-key", dict(levls=2), "levls.*Extra inputs are not permitted"),
]


@pytest.mark.parametrize("name,kw,match", PARAM_CASES, ids=[c[0] for c in PARAM_CASES])
def test_invalid_flow_parameters(prefect_harness, src, target, name, kw, match):
    before = tree_state(target)
    params = {**BASE, "source": src["good"], "target": str(target), **kw}
    msg = fail_flow(params, match)
    assert "invalid parameters" in msg
    assert tree_state(target) == before


@pytest.fixture(scope="module")
def deployment_id(prefect_harness):
    """The flow registered as a deployment with the same parameter schema enforcement as prefect.yaml."""
    return build_pyramid.to_deployment(name="bad-inputs", enforce_parameter_schema=True).apply()


DEPLOYMENT_CASES = [
    ("missing-source", dict(source=None), "'source' is a required property"),
    ("wrong-type", dict(levels="three"), "params.levels"),
    ("out-of-range", dict(levels=0), "0 is less than the minimum of 1"),
    ("bad-enum", dict(mode="x"), r"'x' is not one of \['w', 'w-', 'a'\]"),
    ("unknown-key", dict(surprise=1), "Additional properties are not allowed"),
]


@pytest.mark.parametrize("name,kw,match", DEPLOYMENT_CASES, ids=[c[0] for c in DEPLOYMENT_CASES])
def test_deployment_rejects_parameters_breaking_its_schema(prefect_harness, deployment_id, src, name, kw, match):
    from prefect.exceptions import PrefectHTTPStatusError

    params = {k: v for k, v in {**BASE, "source": src["good"], "target": "never.zarr", **kw}.items() if v is not None}
    with prefect_harness.client() as c:
        with pytest.raises(PrefectHTTPStatusError, match=match):
            c.create_flow_run_from_deployment(deployment_id, parameters={"params": params})
    assert not Path("never.zarr").exists()


def test_deployment_run_with_invalid_parameters_fails_before_any_task(prefect_harness, deployment_id, src,
                                                                      target):
    """Passes the JSON schema (a string is a string) but not the model: the run fails at its start."""
    from prefect.flow_engine import run_flow

    before = tree_state(target)
    params = {**BASE, "source": src["good"], "target": str(target), "method": "median"}
    with prefect_harness.client() as c:
        run = c.create_flow_run_from_deployment(deployment_id, parameters={"params": params})
    state = run_flow(build_pyramid, flow_run=run, parameters=run.parameters, return_type="state")
    assert state.is_failed()
    msg = str(state.result(raise_on_failure=False))
    assert "unknown method 'median'" in msg
    assert_clear(msg)
    with prefect_harness.client() as c:
        assert c.read_task_runs(flow_run_filter=_run_filter(run.id)) == []  # not even planning ran
    assert tree_state(target) == before


def _run_filter(run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))


def test_cli_rejects_invalid_parameters(prefect_harness, src, target, capsys):
    from topozarr_flows.ops.cli import main

    before = tree_state(target)
    assert main(["build", src["good"], str(target), "--levels", "2", "--chunks-per-shard", "3"]) == 2
    assert "chunks_per_shard must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["build", src["good"], str(target), "--factors", "1,two"])
    assert exc.value.code == 2
    assert "--factors" in capsys.readouterr().err
    assert tree_state(target) == before


# -- 2. sources: content the planner refuses, and sources that cannot be opened ----------------------

SOURCE_CASES = [
    # name, source key, params, expected fragment
    ("wrong-x-dim", "good", dict(x_dim="longitude"), "'longitude' is not a dimension"),
    ("same-dims", "good", dict(y_dim="lon"), "must differ"),
    ("non-uniform-x", "nonuniform", {}, "not uniformly spaced"),
    ("non-monotonic-y", "nonmonotonic", {}, "monotonic"),
    ("missing-crs", "good", dict(crs=None), "the dataset has no CRS: pass crs="),
    ("invalid-crs", "good", dict(crs="EPSG:999999"), "crs='EPSG:999999' is not a valid CRS"),
    ("invalid-cf-crs", "badcrs", dict(crs=None), "'crs_wkt' attribute of 'spatial_ref' is not a valid CRS"),
    ("factors-not-from-1", "good", dict(levels=None, factors=[2, 4]), "factors must start at 1"),
    ("factors-not-dividing", "good", dict(levels=None, factors=[1, 3, 4]), "does not divide"),
    ("factors-decreasing", "good", dict(levels=None, factors=[1, 4, 2]), "strictly increasing"),
    ("factors-empty", "good", dict(levels=None, factors=[]), "factors must not be empty"),
    ("too-many-levels", "good", dict(levels=12), "too many levels for a 64x64 grid"),
    ("complex-dtype", "complex", {}, "unsupported dtype complex64"),
    ("bool-dtype", "bool", {}, "unsupported dtype bool"),
    ("empty-dataset", "empty", {}, "no data variables"),
    ("no-gridded-variable", "nogrid", {}, "no data variable has both 'lat' and 'lon'"),
    ("single-row", "onerow", {}, "at least 2"),
    ("unknown-variable", "good", dict(variables=["nope"]), r"variables \['nope'\] are not in the source"),
    ("majority-without-fill", "uint8", dict(method="majority"), r"needs a _FillValue.*set ds\['air'\]"),
    ("missing-file", "missing", {}, "does not exist"),
    ("garbage-netcdf", "garbage", {}, "cannot open source .*garbage.nc"),
    ("truncated-netcdf", "truncated", {}, "cannot open source .*truncated.nc"),
    ("directory-not-zarr", "notzarr", {}, "notzarr.zarr' is a directory but not a Zarr store"),
]


@pytest.mark.parametrize("name,key,kw,match", SOURCE_CASES, ids=[c[0] for c in SOURCE_CASES])
def test_bad_source_fails_in_planning_and_leaves_target_untouched(prefect_harness, src, target, name, key, kw,
                                                                  match):
    before = tree_state(target)
    params = {**BASE, "source": src[key], "target": str(target), "mode": "w", **kw}
    params = {k: v for k, v in params.items() if v is not None}
    fail_flow(params, match)
    assert tree_state(target) == before  # mode="w" would have replaced it, had planning not refused


# -- 3. targets ---------------------------------------------------------------------------------------

def test_non_empty_target_with_mode_w_dash(prefect_harness, src, target):
    before = tree_state(target)
    fail_flow({**BASE, "source": src["good"], "target": str(target), "mode": "w-"},
              "not empty and mode='w-' refuses to overwrite")
    assert tree_state(target) == before


def test_target_below_a_regular_file(prefect_harness, src, tmp_path):
    # tests may run as root, where chmod cannot make a directory unwritable; a file in the path can
    blocker = tmp_path / "some_file.txt"
    blocker.write_text("not a directory")
    before = tree_state(tmp_path)
    fail_flow({**BASE, "source": src["good"], "target": str(blocker / "p.zarr")},
              "some_file.txt' is a file, not a directory")
    assert tree_state(tmp_path) == before


def test_target_is_a_regular_file(prefect_harness, src, tmp_path):
    path = tmp_path / "p.zarr"
    path.write_text("a file where the pyramid should go")
    before = tree_state(tmp_path)
    fail_flow({**BASE, "source": src["good"], "target": str(path)}, "p.zarr' is a file, not a directory")
    assert tree_state(tmp_path) == before


def test_target_holding_a_zarr_array(prefect_harness, src, tmp_path):
    path = tmp_path / "array.zarr"
    zarr.create_array(str(path), shape=(4,), dtype="i4", zarr_format=3)[:] = 7
    before = tree_state(path)
    fail_flow({**BASE, "source": src["good"], "target": str(path)}, "holds a zarr array at its root")
    assert tree_state(path) == before


def test_append_mode_that_would_orphan_levels(prefect_harness, src, target):
    before = tree_state(target)
    fail_flow({**BASE, "source": src["good"], "target": str(target), "mode": "a", "levels": 1},
              "the target has 2 levels but this pyramid has 1")
    assert tree_state(target) == before


def test_icechunk_branch_that_does_not_exist(prefect_harness, src, repo):
    before = tree_state(repo)
    fail_flow({**BASE, "source": src["good"], "target": str(repo), "target_format": "icechunk", "branch": "dev"},
              "branch 'dev' does not exist")
    assert tree_state(repo) == before  # no staging branch, no commit


def test_icechunk_branch_in_a_repository_that_does_not_exist(prefect_harness, src, tmp_path):
    fail_flow({**BASE, "source": src["good"], "target": str(tmp_path / "new-repo"), "target_format": "icechunk",
               "branch": "dev"}, "branch 'dev' does not exist")
    assert not (tmp_path / "new-repo").exists()  # not created just to fail


def test_icechunk_non_empty_branch_with_mode_w_dash(prefect_harness, src, repo):
    before = tree_state(repo)
    fail_flow({**BASE, "source": src["good"], "target": str(repo), "target_format": "icechunk", "mode": "w-"},
              "not empty and mode='w-' refuses to overwrite")
    assert tree_state(repo) == before  # in particular: no staging branch left behind


def test_icechunk_target_below_a_regular_file(prefect_harness, src, tmp_path):
    blocker = tmp_path / "some_file.txt"
    blocker.write_text("not a directory")
    before = tree_state(tmp_path)
    fail_flow({**BASE, "source": src["good"], "target": str(blocker / "repo"), "target_format": "icechunk"},
              "some_file.txt' is a file, not a directory")
    assert tree_state(tmp_path) == before


# -- 4. object-store targets: missing bucket, wrong credentials ----------------------------------------

def _keys(s3, prefix: str) -> list[str]:
    listing = s3.boto3_client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


@pytest.mark.parametrize("target_format", ["zarr", "icechunk"])
def test_target_bucket_that_does_not_exist(prefect_harness, src, s3_env, target_format):
    fail_flow({**BASE, "source": src["good"], "target": "s3://no-such-bucket-topozarr/p",
               "target_format": target_format}, "NoSuchBucket|bucket does not exist")


@pytest.fixture
def moto_auth(s3_server):
    auth = MotoAuth(s3_server.endpoint_url, s3_server.region)
    auth.on()
    try:
        yield auth
    finally:
        auth.off()


@pytest.mark.parametrize("target_format", ["zarr", "icechunk"])
@pytest.mark.parametrize("wrong", ["unknown-key", "wrong-secret"])
def test_wrong_credentials(prefect_harness, src, s3_env, s3_prefix, moto_auth, monkeypatch, target_format, wrong):
    if wrong == "unknown-key":
        key_id, secret, match = "AKIAUNKNOWNKEY000000", "wrong-secret-0000", "InvalidAccessKeyId"
    else:
        key_id, _ = moto_auth.real_key()  # a known key with the wrong secret
        secret, match = "wrong-secret-0000", "SignatureDoesNotMatch"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    msg = fail_flow({**BASE, "source": src["good"], "target": f"s3://{s3_env.bucket}/{s3_prefix}/p",
                     "target_format": target_format}, match)
    assert secret not in msg
    moto_auth.off()
    assert _keys(s3_env, s3_prefix) == []
