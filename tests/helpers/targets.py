"""The target contract's source and pyramid (fixtures ``ds``, ``pyramid_dir``, ``zarr_source``), shared by
tests/core/publish/test_target_contract.py and tests/flows/build/test_target_contract.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid

TARGET_KW = dict(levels=2, x_dim="lon", y_dim="lat")


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    return make_raster(ny=64, nx=64)


@pytest.fixture
def pyramid_dir(ds, tmp_path) -> Path:
    path = tmp_path / "pyramid.zarr"
    create_pyramid(ds, **TARGET_KW).write(path)
    return path


@pytest.fixture
def zarr_source(ds, tmp_path) -> Path:
    path = tmp_path / "x" / "src.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path
