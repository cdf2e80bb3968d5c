"""Writing into an Icechunk session: commit, reopen, and nothing visible before the commit."""

from __future__ import annotations

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr

from tests.helpers.icechunk_repos import another_writer_publishes, new_repo
from tests.helpers.rasters import coarsen_reference, make_raster
from tests.helpers.schemas import validate_conventions
from topozarr_core import create_pyramid


def test_write_commit_reopen(tmp_path):
    ds = make_raster(ny=300, nx=400, nt=2, nan_fraction=0.1)
    repo = new_repo(tmp_path / "repo")
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
    repo = new_repo(tmp_path / "repo")
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
    session = new_repo(tmp_path / "repo").writable_session("main")
    with pytest.raises(ValueError, match="rust"):
        create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(session.store, io="rust")
    assert not session.has_uncommitted_changes


def _staged_build(tmp_path):
    """A pyramid built on a staging branch, not published yet: (target, staging branch, base snapshot, data)."""
    from topozarr_core.store import icechunk_txn

    ds = make_raster(ny=64, nx=64)
    target = icechunk_txn.IcechunkTarget(str(tmp_path / "repo"))
    staging, base = icechunk_txn.begin(target, "loser")
    session = icechunk_txn.writable(target, staging)
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(session.store)
    session.commit("the loser's pyramid")
    return target, staging, base, ds


def test_a_publish_conflict_leaves_no_staging_branch(tmp_path):
    """The loser of a publish race (its branch moved while it built) publishes nothing and deletes its staging
    branch; asking again gives the same one line, not Icechunk's error about a missing branch."""
    from topozarr_core.store import icechunk_txn

    target, staging, base, ds = _staged_build(tmp_path)
    won = another_writer_publishes(target.open_repo(), ds)
    for _ in range(2):
        with pytest.raises(icechunk_txn.PublishConflict, match="moved") as info:
            icechunk_txn.publish(target, staging, base)
        assert "\n" not in str(info.value) and "nothing was published" in str(info.value)
        repo = target.open_repo(create=False)
        assert repo.list_branches() == {"main"} and repo.lookup_branch("main") == won


def test_a_branch_moved_at_the_compare_and_swap_is_a_publish_conflict_too(tmp_path, monkeypatch):
    """The branch moves between publish's look at it and its compare-and-swap (Icechunk's ConflictError)."""
    from topozarr_core.store import icechunk_txn

    target, staging, base, ds = _staged_build(tmp_path)
    real_reset = icechunk.Repository.reset_branch
    won: list[str] = []

    def winner_first(repo, *args, **kwargs):
        won.append(another_writer_publishes(repo, ds))
        return real_reset(repo, *args, **kwargs)

    monkeypatch.setattr(icechunk.Repository, "reset_branch", winner_first)
    with pytest.raises(icechunk_txn.PublishConflict, match=f"moved from {base} to "):
        icechunk_txn.publish(target, staging, base)
    repo = target.open_repo(create=False)
    assert repo.list_branches() == {"main"} and repo.lookup_branch("main") == won[0]
