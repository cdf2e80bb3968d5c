"""The scratch missing counts of a write (``paths.MISSING_GROUP``) are no child node of the pyramid's root.

While a write is under way, readers listing the unpublished root (``xr.open_datatree``, zarr's group
listings) see only the levels: the scratch arrays have no group documents above them, so zarr skips
their prefix (as it skips the lease document). The write itself still reads them back, and a
published pyramid holds none.
"""

from __future__ import annotations

import warnings

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr

from tests.helpers.rasters import coarsen_reference, make_raster
from topozarr_core import create_pyramid
from topozarr_core.layout.paths import MISSING_GROUP, missing_path

LEVELS = 4  # scratch counts are kept for levels 1 and 2


def _listed(store) -> tuple[set[str], set[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns about keys that are no node (the lease, the scratch)
        tree = xr.open_datatree(store, engine="zarr", consolidated=False, zarr_format=3)
        keys = set(zarr.open_group(store, mode="r").group_keys())
    return set(tree.children), keys


def _check_hidden_then_published(store, pyramid) -> None:
    children, groups = _listed(store)
    assert children == groups == {str(lvl) for lvl in range(LEVELS)}, (children, groups)
    scratch = zarr.open_array(store, path=missing_path(1, "air"), mode="r")  # still there for the writer
    assert scratch.shape == pyramid.level_shape(1)
    pyramid.publish(store)
    assert _listed(store)[0] == {str(lvl) for lvl in range(LEVELS)}
    with pytest.raises(FileNotFoundError):
        zarr.open_array(store, path=missing_path(1, "air"), mode="r")


def test_the_scratch_counts_are_not_listed_during_a_local_write(tmp_path):
    pyramid = create_pyramid(make_raster(ny=128, nx=128, nan_fraction=0.1), levels=LEVELS, x_dim="lon", y_dim="lat")
    store = pyramid.initialise(tmp_path / "p.zarr")  # the layout of a write under way: root unpublished
    assert (tmp_path / "p.zarr" / MISSING_GROUP).is_dir()
    _check_hidden_then_published(store, pyramid)
    assert not (tmp_path / "p.zarr" / MISSING_GROUP).exists()


def test_the_scratch_counts_are_not_listed_on_an_icechunk_branch(tmp_path):
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    pyramid = create_pyramid(make_raster(ny=128, nx=128, nan_fraction=0.1), levels=LEVELS, x_dim="lon", y_dim="lat")
    store = pyramid.initialise(session.store)
    _check_hidden_then_published(store, pyramid)
    session.commit("published")


def test_means_read_back_with_their_counts_are_exact(tmp_path):
    """Levels re-read from the store (no level cache) use the scratch counts: exact NaN-aware means."""
    ds = make_raster(ny=256, nx=256, nan_fraction=0.2)
    p = create_pyramid(ds, levels=LEVELS, x_dim="lon", y_dim="lat", chunks_per_shard=1)
    p.write(tmp_path / "p.zarr", keep_levels_in_memory=False, max_region_bytes=64 * 64 * 4)
    for lvl, f in enumerate(p.factors):
        got = zarr.open_array(str(tmp_path / "p.zarr" / str(lvl) / "air"), mode="r")[:]
        np.testing.assert_allclose(got, coarsen_reference(ds, "air", f, "mean"), rtol=1e-6, equal_nan=True)
