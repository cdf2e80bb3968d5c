"""The root-coordinate copy checks, shared by tests/core/publish/test_root_coords.py and its flow half."""

from __future__ import annotations

import numpy as np
import xarray as xr
import zarr

from tests.helpers.rasters import make_raster
from tests.helpers.schemas import validate_conventions
from topozarr_core.publish.root_doc import OWNED_KEY, is_published

ROOT_KW = dict(x_dim="lon", y_dim="lat")


def root_raster(nt: int, **kw) -> xr.Dataset:
    return make_raster(ny=64, nx=80, nt=nt, nan_fraction=0.05, **kw)


def assert_copy_current(store, ds: xr.Dataset, label: str) -> None:
    """``/time`` at the root decodes to the source's time, and is level 0's array: same dtype,
    attributes, encoding and values; xarray opens the root and the tree with it."""
    root_time = zarr.open_array(store, path="time", mode="r")
    level_time = zarr.open_array(store, path="0/time", mode="r")
    assert root_time.metadata.to_dict() == level_time.metadata.to_dict(), label
    np.testing.assert_array_equal(root_time[...], level_time[...], err_msg=label)
    assert dict(root_time.attrs) == dict(level_time.attrs) and "units" in root_time.attrs, label
    opened = xr.open_zarr(store, consolidated=False, zarr_format=3)
    assert list(opened.coords) == ["time"] and not opened.data_vars, label  # a coordinate, not a level
    np.testing.assert_array_equal(opened["time"].values, ds["time"].values, err_msg=label)
    assert opened["time"].encoding["units"] == xr.open_zarr(store, group="0", consolidated=False,
                                                            zarr_format=3)["time"].encoding["units"]
    tree = xr.open_datatree(store, engine="zarr", consolidated=False, zarr_format=3)
    assert sorted(tree.children) == [str(i) for i in range(len(tree.children))], label
    np.testing.assert_array_equal(tree["0"]["time"].values, ds["time"].values, err_msg=label)
    attrs = dict(zarr.open_group(store, mode="r", zarr_format=3).attrs)
    assert "time" in attrs[OWNED_KEY] and is_published(attrs), label
    validate_conventions({"zarr_format": 3, "node_type": "group", "attributes": attrs})
