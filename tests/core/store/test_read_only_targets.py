"""A read-only target is refused with one line before anything is written (no backend dump).

Writing into an Icechunk read-only session used to end in Icechunk's own dump
(``ReadOnlyError: cannot write to read-only store\\ncontext:\\n   0: icechunk::store::set with key="zarr.json"
at icechunk/src/store.rs:274``).
"""

from __future__ import annotations

import traceback

import icechunk
import pytest
import zarr

from tests.helpers.inputs import assert_clear, tree_state
from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid, update_pyramid
from topozarr_core.store.errors import TargetError

KW = dict(levels=2, x_dim="lon", y_dim="lat")


def _one_line(fn, *fragments: str) -> str:
    with pytest.raises(TargetError) as info:
        fn()
    msg = str(info.value)
    shown = "".join(traceback.format_exception(info.value))
    assert "\n" not in msg and "read-only" in msg, msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    for noise in ("icechunk::", "store.rs", "context:", "ReadOnlyError"):
        assert noise not in shown, (noise, shown)
    assert_clear(msg)
    return msg


@pytest.fixture
def repo(tmp_path):
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    create_pyramid(make_raster(ny=64, nx=64, nt=2), **KW).write(session)
    session.commit("v1")
    return repo


@pytest.mark.parametrize("what", ["session", "session.store"])
def test_write_into_a_read_only_icechunk_session_is_one_line(repo, tmp_path, what):
    session = repo.readonly_session(branch="main")
    target = session if what == "session" else session.store
    before = tree_state(tmp_path / "repo")
    _one_line(lambda: create_pyramid(make_raster(ny=64, nx=64, nt=2), **KW).write(target),
              "writable_session")
    _one_line(lambda: create_pyramid(make_raster(ny=64, nx=64, nt=2), **KW).initialise(target), "writable_session")
    _one_line(lambda: update_pyramid(make_raster(ny=64, nx=64, nt=3), target, "time"), "writable_session")
    assert tree_state(tmp_path / "repo") == before


def test_write_into_a_read_only_local_store_is_one_line(tmp_path):
    ds = make_raster(ny=64, nx=64, nt=2)
    create_pyramid(ds, **KW).write(tmp_path / "p.zarr")
    before = tree_state(tmp_path / "p.zarr")
    store = zarr.storage.LocalStore(str(tmp_path / "p.zarr"), read_only=True)
    _one_line(lambda: create_pyramid(ds, **KW).write(store))
    _one_line(lambda: update_pyramid(make_raster(ny=64, nx=64, nt=3), store, "time"))
    assert tree_state(tmp_path / "p.zarr") == before
