"""Bad-input helpers shared by the core and flow halves of test_bad_inputs (and others): the state of a
target tree before/after, the check that a message is for people, the bad sources (fixture ``src``), an
Icechunk repository holding a pyramid (fixture ``repo``), and moto's authentication switch (MotoAuth)."""

from __future__ import annotations

import hashlib
import urllib.request
import uuid
from pathlib import Path

import icechunk
import numpy as np
import pytest
import xarray as xr

from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid


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


def write_nc(ds: xr.Dataset, path: Path) -> str:
    ds.to_netcdf(path, engine="h5netcdf")
    return str(path)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> dict[str, str]:
    """The bad (and one good) sources, written once."""
    d = tmp_path_factory.mktemp("bad-src")
    good = make_raster(ny=64, nx=64, crs=None)
    out = {"good": write_nc(good, d / "good.nc")}
    out["nonuniform"] = write_nc(good.assign_coords(lon=np.r_[good.lon.values[:-1], good.lon.values[-1] + 5]),
                                  d / "nonuniform.nc")
    lat = good.lat.values
    out["nonmonotonic"] = write_nc(good.assign_coords(lat=np.r_[lat[1:2], lat[:1], lat[2:]]), d / "nonmono.nc")
    out["bool"] = write_nc(good.assign(air=good.air > 250), d / "bool.nc")
    out["empty"] = write_nc(xr.Dataset(coords=good.coords), d / "empty.nc")
    out["nogrid"] = write_nc(xr.Dataset({"w": ("lat", np.cos(lat))}, coords=good.coords), d / "nogrid.nc")
    out["onerow"] = write_nc(good.isel(lat=slice(0, 1)), d / "onerow.nc")
    out["uint8"] = write_nc(make_raster(ny=64, nx=64, crs=None, dtype="uint8"), d / "uint8.nc")
    out["badcrs"] = write_nc(good.assign_coords(spatial_ref=((), 0, {"crs_wkt": "not a crs"})), d / "badcrs.nc")
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


@pytest.fixture
def repo(tmp_path, src) -> Path:
    """An Icechunk repository whose main holds a pyramid."""
    path = tmp_path / "repo"
    r = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    s = r.writable_session("main")
    create_pyramid(make_raster(ny=64, nx=64), levels=2, x_dim="lon", y_dim="lat").write(s.store)
    s.commit("previous pyramid")
    return path


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
