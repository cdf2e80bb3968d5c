"""Builders for the incremental-update tests (tests/core/update/test_update.py and its flow half).
Fixture: ``built`` (a pyramid of the first 6 of 8 steps, and the 8-step source)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid

UPDATE_KW = dict(x_dim="lon", y_dim="lat")


def update_raster(nt=12, **kw):
    return make_raster(ny=300, nx=420, nt=nt, nan_fraction=0.05, **kw)


def file_stamps(path) -> dict[str, tuple[int, int]]:
    """{relative path: (mtime_ns, size)} of every file below ``path``."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), path)] = (st.st_mtime_ns, st.st_size)
    return out


def build_for_update(ds, path, **kw):
    opts = {**UPDATE_KW, "levels": 3, **kw}
    create_pyramid(ds, **opts).write(path)


# -- refusals ----------------------------------------------------------------------------------------


@pytest.fixture
def built(tmp_path):
    ds = update_raster(nt=8)
    path = tmp_path / "p.zarr"
    build_for_update(ds.isel(time=slice(0, 6)), path)
    return ds, path
