"""A flow that loses an Icechunk publish race fails in one line and leaves no staging branch (the core
half: tests/core/store/test_icechunk.py)."""

from __future__ import annotations

import icechunk

from tests.helpers.icechunk_repos import another_writer_publishes, new_repo
from tests.helpers.rasters import make_raster


def test_a_flow_that_loses_the_publish_race_fails_in_one_line_without_a_staging_branch(prefect_harness, tmp_path,
                                                                                       monkeypatch):
    from topozarr_core.store import icechunk_txn
    from topozarr_flows import BuildParams, build_pyramid

    ds = make_raster(ny=64, nx=64)
    src = tmp_path / "src.nc"
    ds.drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    repo_path = tmp_path / "repo"
    new_repo(repo_path)
    real_publish = icechunk_txn.publish
    won: list[str] = []

    def another_writer_first(target, staging, base):
        if not won:  # another run publishes to main while this one built
            won.append(another_writer_publishes(target.open_repo(create=False), ds))
        return real_publish(target, staging, base)

    monkeypatch.setattr(icechunk_txn, "publish", another_writer_first)
    state = build_pyramid(BuildParams(source=str(src), target=str(repo_path), target_format="icechunk", levels=2,
                                      x_dim="lon", y_dim="lat", crs="EPSG:4326"), return_state=True)
    assert state.is_failed()
    assert "PublishConflict" in state.message and "nothing was published" in state.message, state.message
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(repo_path)))
    assert repo.list_branches() == {"main"} and repo.lookup_branch("main") == won[0]
