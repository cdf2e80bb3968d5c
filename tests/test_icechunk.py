"""Writing into an Icechunk session: commit, reopen, and nothing visible before the commit."""

from __future__ import annotations

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr

from tests.conftest import coarsen_reference, make_raster, validate_conventions
from topozarr_core import create_pyramid


def _repo(path):
    return icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))


def test_write_commit_reopen(tmp_path):
    ds = make_raster(ny=300, nx=400, nt=2, nan_fraction=0.1)
    repo = _repo(tmp_path / "repo")
    session = repo.writable_session("main")
    p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat")
    p.write(session.store, mode="w")
    snap = session.commit("write pyramid")
    ro = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / "repo"))).readonly_session("main")
    assert ro.snapshot_id == snap
    for lvl, f in enumerate(p.factors):
        got = xr.open_zarr(ro.store, group=str(lvl), zarr_format=3, consolidated=False).air.values
        np.testing.assert_allclose(got, coarsen_reference(ds, "air", f, "mean"), rtol=1e-6, equal_nan=True)
    root = zarr.open_group(ro.store, mode="r")
    validate_conventions({"zarr_format": 3, "node_type": "group", "attributes": dict(root.attrs)})


def test_session_object_accepted_and_uncommitted_writes_invisible(tmp_path):
    ds = make_raster(ny=128, nx=128)
    repo = _repo(tmp_path / "repo")
    first = repo.writable_session("main")
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(first)  # the Session itself
    first.commit("v1")
    session = repo.writable_session("main")
    create_pyramid(ds + 1, levels=2, x_dim="lon", y_dim="lat").write(session.store)
    # not committed: readers of main still see v1
    ro = repo.readonly_session("main")
    np.testing.assert_allclose(zarr.open_array(ro.store, path="0/air")[:], ds.air.values)


def test_rust_io_refuses_icechunk(tmp_path):
    ds = make_raster(ny=64, nx=64)
    session = _repo(tmp_path / "repo").writable_session("main")
    with pytest.raises(ValueError, match="rust"):
        create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(session.store, io="rust")
    assert not session.has_uncommitted_changes
