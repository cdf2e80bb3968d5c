"""Root copies of the level-0 non-spatial coordinates (``/time`` beside ``/0/time``).

zarr-layer resolves value selectors (``{time: <value>}``) by reading ``/time`` at the store root, so
every published root has, written before it, a copy of each 1-D non-spatial dimension coordinate of
level 0. References are independent of the copy code: the source's own coordinate (decoded by
xarray), the level-0 array's stored bytes, the convention schemas, and xarray reading the pyramid.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import make_raster
from tests.helpers.root_coords import ROOT_KW, assert_copy_current, root_raster
from topozarr_core import UpdateRefused, create_pyramid, update_pyramid
from topozarr_core.publish.contract import ForeignTarget
from topozarr_core.publish.root_doc import OWNED_KEY, is_published
from topozarr_core.validate.pyramid import validate_pyramid


def _node_files(store_path: Path, node: str) -> dict[str, bytes]:
    base = store_path / node
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def _root(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())


# -- write, mode="a", rebuilds --------------------------------------------------------------------


def test_write_puts_level0_time_at_the_root(tmp_path):
    ds = root_raster(nt=4)
    path = tmp_path / "p.zarr"
    p = create_pyramid(ds, levels=3, **ROOT_KW)
    p.write(path)
    assert_copy_current(str(path), ds, "write")
    assert _node_files(path, "time") == _node_files(path, "0/time")  # byte for byte
    assert validate_pyramid(p, path).ok
    # a 2-D pyramid has no non-spatial coordinate: nothing at its root but the levels
    flat = tmp_path / "flat.zarr"
    create_pyramid(make_raster(ny=64, nx=80), levels=2, **ROOT_KW).write(flat)
    assert sorted(os.listdir(flat)) == ["0", "1", "zarr.json"]


def test_mode_a_keeps_the_copy_current(tmp_path):
    ds = root_raster(nt=4)
    path = tmp_path / "p.zarr"
    create_pyramid(ds, levels=3, **ROOT_KW).write(path)
    create_pyramid(ds, levels=3, **ROOT_KW).write(path, mode="a", levels=[1, 2])
    assert_copy_current(str(path), ds, "mode a, coarse levels")
    shifted = ds.assign_coords(time=ds["time"].values + np.timedelta64(10, "D"))  # level 0 gets new times
    p = create_pyramid(shifted, levels=3, **ROOT_KW)
    p.write(path, mode="a", levels=[0, 1, 2])
    assert_copy_current(str(path), shifted, "mode a, every level")
    assert validate_pyramid(p, path).ok
    # every level rewritten from a source without a time dimension: our old copy goes with it
    create_pyramid(make_raster(ny=64, nx=80), levels=3, **ROOT_KW).write(path, mode="a", levels=[0, 1, 2])
    assert sorted(os.listdir(path)) == ["0", "1", "2", "zarr.json"]
    assert "time" not in _root(path)["attributes"][OWNED_KEY]


def test_rebuild_with_another_time_length_replaces_the_copy(tmp_path):
    path = tmp_path / "p.zarr"
    create_pyramid(root_raster(nt=4), levels=3, **ROOT_KW).write(path)
    (path / "README.txt").write_text("not ours")
    longer = root_raster(nt=7, seed=1)
    create_pyramid(longer, levels=2, **ROOT_KW).write(path)
    assert_copy_current(str(path), longer, "rebuild")
    assert zarr.open_array(str(path), path="time", mode="r").shape == (7,)
    # a rebuild without a time dimension deletes the old copy (it is ours), and keeps foreign files
    create_pyramid(make_raster(ny=64, nx=80), levels=2, **ROOT_KW).write(path)
    assert sorted(os.listdir(path)) == ["0", "1", "README.txt", "zarr.json"]


def test_a_published_root_never_sits_over_a_stale_copy(tmp_path, monkeypatch):
    """Every root written while a rebuild, a mode="a" rewrite and an update run: each published one
    sits over a copy equal to level 0's, and each copy on disk is listed as ours by the root then."""
    import topozarr_core.publish.root_coords as root_coords
    import topozarr_core.publish.steps as layout
    import topozarr_core.update.pyramid_update as update
    from topozarr_core.publish.root_doc import owned_nodes, write_root

    path = tmp_path / "p.zarr"
    seen: list[str] = []

    def checked_write_root(store, attrs):
        if (path / "time").exists():
            assert "time" in owned_nodes(attrs), "a root that does not own the copy beside it"
        if is_published(attrs):
            assert _node_files(path, "time") == _node_files(path, "0/time"), "published over a stale copy"
            seen.append("published")
        else:
            seen.append("unpublished")
        write_root(store, attrs)

    for module in (layout, root_coords, update):
        monkeypatch.setattr(module, "write_root", checked_write_root)
    full = root_raster(nt=9)
    create_pyramid(full.isel(time=slice(0, 3)), levels=3, **ROOT_KW).write(path)
    create_pyramid(full.isel(time=slice(0, 5)), levels=3, **ROOT_KW).write(path)  # rebuild, longer time
    create_pyramid(full.isel(time=slice(0, 5)), levels=3, **ROOT_KW).write(path, mode="a", levels=[0, 1, 2])
    update_pyramid(full, str(path), "time")
    assert seen.count("published") == 4 and "unpublished" in seen
    assert_copy_current(str(path), full, "after the sequence")


def test_republishing_a_published_pyramid_unpublishes_it_before_fixing_its_copy(tmp_path, monkeypatch):
    import topozarr_core.publish.root_coords as root_coords
    from topozarr_core.publish.root_doc import write_root

    ds = root_raster(nt=4)
    path = tmp_path / "p.zarr"
    p = create_pyramid(ds, levels=3, **ROOT_KW)
    p.write(path)
    zarr.open_array(str(path), path="time", mode="r+")[0] = 42  # the copy goes stale under a published root
    order: list[str] = []

    def recording_write_root(store, attrs):
        order.append("published" if is_published(attrs) else "unpublished")
        write_root(store, attrs)

    monkeypatch.setattr(root_coords, "write_root", recording_write_root)
    p.publish(str(path))
    assert order == ["unpublished"]  # then the copy is rewritten, then layout writes the published root
    assert_copy_current(str(path), ds, "republished")


# -- updates ----------------------------------------------------------------------------------------


def test_update_grows_the_copy_and_equals_a_full_build(tmp_path):
    full = root_raster(nt=9)
    path = tmp_path / "u.zarr"
    create_pyramid(full.isel(time=slice(0, 5)), levels=3, **ROOT_KW).write(path)
    report = update_pyramid(full, str(path), "time")
    assert (report.old_length, report.new_length) == (5, 9)
    assert_copy_current(str(path), full, "update")
    create_pyramid(full, levels=3, **ROOT_KW).write(tmp_path / "full.zarr")
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    assert not update_pyramid(full, str(path), "time").changed  # the same source again writes nothing
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} == before


def test_update_gives_an_older_pyramid_its_copy(tmp_path):
    """A pyramid written before root copies existed (no ``/time``, not listed) gains one on its next
    update, even when there is nothing to append."""
    ds = root_raster(nt=5)
    path = tmp_path / "old.zarr"
    create_pyramid(ds, levels=3, **ROOT_KW).write(path)
    shutil.rmtree(path / "time")
    doc = _root(path)
    del doc["attributes"][OWNED_KEY]
    (path / "zarr.json").write_text(json.dumps(doc))
    assert update_pyramid(ds, str(path), "time").changed
    assert_copy_current(str(path), ds, "older pyramid")


# -- Icechunk ---------------------------------------------------------------------------------------


def test_icechunk_write_and_update_carry_the_copy(tmp_path):
    full = root_raster(nt=6)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    create_pyramid(full.isel(time=slice(0, 3)), levels=3, **ROOT_KW).write(session.store)
    session.commit("build")
    assert_copy_current(repo.readonly_session("main").store, full.isel(time=slice(0, 3)), "icechunk write")
    session = repo.writable_session("main")
    update_pyramid(full, session.store, "time")
    session.commit("update")
    store = repo.readonly_session("main").store
    assert_copy_current(store, full, "icechunk update")
    assert zarr.open_array(store, path="time", mode="r").shape == (6,)


def test_icechunk_rebuild_over_a_flat_pyramid_gets_the_copy(tmp_path):
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    create_pyramid(make_raster(ny=64, nx=80), levels=2, **ROOT_KW).write(session.store)
    session.commit("flat")
    ds = root_raster(nt=3)
    session = repo.writable_session("main")
    create_pyramid(ds, levels=3, **ROOT_KW).write(session.store)  # a pyramid of ours: no foreign 'time' there
    session.commit("with time")
    assert_copy_current(repo.readonly_session("main").store, ds, "icechunk rebuild")


# -- foreign nodes named like a copy -----------------------------------------------------------------


def _foreign_time(path: Path) -> dict[str, bytes]:
    """An older pyramid of ours (no copy) with someone else's ``time`` folder at its root."""
    shutil.rmtree(path / "time")
    doc = _root(path)
    del doc["attributes"][OWNED_KEY]
    (path / "zarr.json").write_text(json.dumps(doc))
    (path / "time").mkdir()
    (path / "time" / "notes.txt").write_text("someone else's")
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _everything(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_foreign_time_node_is_never_overwritten_without_the_opt_in(tmp_path):
    full = root_raster(nt=6)
    ds = full.isel(time=slice(0, 4))
    path = tmp_path / "p.zarr"
    create_pyramid(ds, levels=3, **ROOT_KW).write(path)
    before = _foreign_time(path)
    for write in (lambda: create_pyramid(ds, levels=3, **ROOT_KW).write(path),
                  lambda: create_pyramid(ds, levels=3, **ROOT_KW).write(path, mode="a", levels=[1, 2])):
        with pytest.raises(ForeignTarget, match="root holds a node 'time' that topozarr-flows did not write") as err:
            write()
        assert "overwrite_foreign=True" in str(err.value) and len(str(err.value).splitlines()) == 1
        assert _everything(path) == before
    with pytest.raises(UpdateRefused, match="root holds a node 'time'"):
        update_pyramid(full, str(path), "time")
    assert _everything(path) == before
    # the opt-in replaces it with our copy
    create_pyramid(ds, levels=3, **ROOT_KW).write(path, overwrite_foreign=True)
    assert not (path / "time" / "notes.txt").exists()
    assert_copy_current(str(path), ds, "after the opt-in")


def test_a_foreign_group_with_time_at_its_root_is_still_refused(tmp_path):
    path = tmp_path / "theirs.zarr"
    xr.Dataset(coords={"time": np.arange(3)}).to_zarr(path, zarr_format=3, consolidated=False)
    before = _everything(path)
    with pytest.raises(ForeignTarget, match="not a topozarr-flows pyramid"):
        create_pyramid(root_raster(nt=3), levels=2, **ROOT_KW).write(path)
    assert _everything(path) == before


# -- validation ---------------------------------------------------------------------------------------


def test_validation_catches_a_stale_copy(tmp_path):
    ds = root_raster(nt=4)
    path = tmp_path / "p.zarr"
    p = create_pyramid(ds, levels=3, **ROOT_KW)
    p.write(path)
    assert validate_pyramid(p, path).ok
    zarr.open_array(str(path), path="time", mode="r+")[1] = 123456
    report = validate_pyramid(p, path)
    assert [m for m in report.mismatches if "'time'" in m] == [
        "root: the copy of level 0's coordinate 'time' at the root is missing or differs from level 0's "
        "(zarr-layer's value selectors read it)"]
