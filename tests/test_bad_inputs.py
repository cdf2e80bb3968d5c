"""A corpus of bad inputs. Each case must fail with a clear message (an expected fragment, no
backend debug dumps) before anything is written, and must leave existing data untouched.

Cases run through the flow (``build_pyramid(params)``), the deployment's parameter schema, the CLI
or ``open_source``. Where a target exists, its files (names, sizes, mtimes, bytes) are compared
before/after; an Icechunk repository is compared the same way (a new branch would show as files).
tests/test_planning.py has a further 25 ``create_pyramid`` cases without Prefect.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import urllib.request
import uuid
from pathlib import Path

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr

from tests.conftest import make_raster
from topozarr_core import create_pyramid
from topozarr_core.store.sources import SourceError, open_source
from topozarr_flows import build_pyramid

BASE = dict(levels=2, x_dim="lon", y_dim="lat", crs="EPSG:4326")


# -- helpers ----------------------------------------------------------------------------------------

def tree_state(path: str | Path) -> dict | None:
    """Every file and directory below ``path`` with size, mtime and content hash (None if absent)."""
    p = Path(path)
    if not p.exists():
        return None
    if p.is_file():
        st = p.stat()
        return {".": (st.st_size, st.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())}
    out = {}
    for f in sorted(p.rglob("*")):
        st = f.lstat()
        out[str(f.relative_to(p))] = ("dir", st.st_mtime_ns) if f.is_dir() else (
            st.st_size, st.st_mtime_ns, hashlib.sha1(f.read_bytes()).hexdigest())
    return out


def assert_clear(msg: str) -> None:
    """A message for people: no backend debug dumps, tracebacks or XML bodies, not a wall of text."""
    for noise in ("Debug source", "Traceback", "<?xml", "context:\n", "RetryError"):
        assert noise not in msg, f"unclear error message ({noise!r}): {msg}"
    assert len(msg) < 700, f"error message too long ({len(msg)} chars): {msg}"


def fail_flow(params: dict, match: str) -> str:
    """Run the flow with ``params`` (a plain dict, as a deployment passes it); it must fail with ``match``."""
    state = build_pyramid(params, return_state=True)
    assert state.is_failed(), f"expected a failed run, got {state}"
    msg = str(state.result(raise_on_failure=False))
    assert re.search(match, msg), f"{match!r} not in: {msg}"
    assert_clear(msg)
    return msg


def _write_nc(ds: xr.Dataset, path: Path) -> str:
    ds.to_netcdf(path, engine="h5netcdf")
    return str(path)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> dict[str, str]:
    """The bad (and one good) sources, written once."""
    d = tmp_path_factory.mktemp("bad-src")
    good = make_raster(ny=64, nx=64, crs=None)
    out = {"good": _write_nc(good, d / "good.nc")}
    out["nonuniform"] = _write_nc(good.assign_coords(lon=np.r_[good.lon.values[:-1], good.lon.values[-1] + 5]),
                                  d / "nonuniform.nc")
    lat = good.lat.values
    out["nonmonotonic"] = _write_nc(good.assign_coords(lat=np.r_[lat[1:2], lat[:1], lat[2:]]), d / "nonmono.nc")
    out["bool"] = _write_nc(good.assign(air=good.air > 250), d / "bool.nc")
    out["empty"] = _write_nc(xr.Dataset(coords=good.coords), d / "empty.nc")
    out["nogrid"] = _write_nc(xr.Dataset({"w": ("lat", np.cos(lat))}, coords=good.coords), d / "nogrid.nc")
    out["onerow"] = _write_nc(good.isel(lat=slice(0, 1)), d / "onerow.nc")
    out["uint8"] = _write_nc(make_raster(ny=64, nx=64, crs=None, dtype="uint8"), d / "uint8.nc")
    out["badcrs"] = _write_nc(good.assign_coords(spatial_ref=((), 0, {"crs_wkt": "not a crs"})), d / "badcrs.nc")
    cplx = good.assign(air=good.air.astype("complex64"))
    cplx.to_zarr(d / "complex.zarr", zarr_format=3, consolidated=False)
    out["complex"] = str(d / "complex.zarr")
    (d / "garbage.nc").write_bytes(np.random.default_rng(0).bytes(4096))
    out["garbage"] = str(d / "garbage.nc")
    data = (d / "good.nc").read_bytes()
    (d / "truncated.nc").write_bytes(data[: len(data) // 3])
    out["truncated"] = str(d / "truncated.nc")
    (d / "notzarr.zarr").mkdir()
    (d / "notzarr.zarr" / "readme.txt").write_text("not a zarr store")
    out["notzarr"] = str(d / "notzarr.zarr")
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(d / "src-repo")))
    s = repo.writable_session("main")
    good.to_zarr(s.store, zarr_format=3, consolidated=False)
    s.commit("source")
    out["icechunk_repo"] = str(d / "src-repo")
    out["missing"] = str(d / "does-not-exist.nc")
    return out


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


ICECHUNK_SOURCE_CASES = [
    ("icechunk-no-repo", "icechunk://{d}/no-repo", "does not exist"),
    ("icechunk-no-branch", "icechunk://{repo}?branch=dev", "branch 'dev' does not exist in the Icechunk"),
    ("icechunk-empty-url", "icechunk://", "names no repository"),
]


@pytest.mark.parametrize("name,url,match", ICECHUNK_SOURCE_CASES, ids=[c[0] for c in ICECHUNK_SOURCE_CASES])
def test_unopenable_icechunk_sources(src, tmp_path, name, url, match):
    url = url.format(d=tmp_path, repo=src["icechunk_repo"])
    with pytest.raises(SourceError, match=match) as exc:
        open_source(url)
    assert_clear(str(exc.value))
    assert not (tmp_path / "no-repo").exists()  # opening a source never creates anything


def test_source_in_missing_bucket(s3_env):
    with pytest.raises(SourceError, match="does not exist|NoSuchBucket") as exc:
        open_source("s3://no-such-bucket-topozarr/src.zarr")
    assert_clear(str(exc.value))


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


@pytest.fixture
def repo(tmp_path, src) -> Path:
    """An Icechunk repository whose main holds a pyramid."""
    path = tmp_path / "repo"
    r = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    s = r.writable_session("main")
    create_pyramid(make_raster(ny=64, nx=64), levels=2, x_dim="lon", y_dim="lat").write(s.store)
    s.commit("previous pyramid")
    return path


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


class MotoAuth:
    """Switch moto's request authentication (off by default: moto accepts any key) on and off.

    moto's ``INITIAL_NO_AUTH_ACTION_COUNT`` = n lets n more requests through unauthenticated, then
    checks every request's key and signature against its IAM users."""

    def __init__(self, endpoint: str, region: str):
        self.endpoint, self.region = endpoint, region

    def _set(self, count: str) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).close()

    def on(self) -> None:
        self._set("0")

    def off(self) -> None:
        self._set("inf")

    def real_key(self) -> tuple[str, str]:
        """A key moto knows (an IAM user's), created with the 2 requests let through unauthenticated."""
        import boto3

        self._set("2")
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=self.region,
                           aws_access_key_id="x", aws_secret_access_key="x")
        user = f"u{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]


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
