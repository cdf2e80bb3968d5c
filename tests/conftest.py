"""Shared fixtures: synthetic rasters, schema validation, isolated Prefect home."""

from __future__ import annotations

import json
import os
from pathlib import Path

# First: points PREFECT_HOME and result storage at temp dirs before anything imports prefect.
from tests.fixtures_services import *  # noqa: F401,F403

os.environ.setdefault("TOPOZARR_RETRY_DELAY", "0")  # task retries back off instantly in tests
import numpy as np
import pytest
import xarray as xr
import xproj  # noqa: F401

# The convention schemas live in ../shared/specs (beside the checkout, also in CI); the package carries a
# verbatim copy (topozarr_core/validate/schemas, compared with the original by test_validate.py), used only
# when that folder is absent.
SHARED_SPECS = Path(__file__).resolve().parents[2] / "shared" / "specs" / "zarr-conventions"
PACKAGED_SPECS = Path(__file__).resolve().parents[1] / "topozarr_core" / "validate" / "schemas"
SPECS = SHARED_SPECS if SHARED_SPECS.exists() else PACKAGED_SPECS


def make_raster(
    ny: int = 300,
    nx: int = 420,
    nt: int | None = None,
    dtype: str = "float32",
    nan_fraction: float = 0.0,
    seed: int = 0,
    crs: str | None = "EPSG:4326",
    descending_y: bool = True,
) -> xr.Dataset:
    """A smooth field with noise (and optional NaN holes) on a regular lat/lon grid."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 6, ny), np.linspace(0, 9, nx), indexing="ij")
    base = 250 + 20 * np.sin(yy) * np.cos(xx)
    shape = (ny, nx) if nt is None else (nt, ny, nx)
    values = base + rng.normal(0, 3, size=shape)
    if nan_fraction:
        holes = rng.random(shape) < nan_fraction
        values = np.where(holes, np.nan, values)
        # whole windows of missing data too
        values[..., : ny // 5, : nx // 7] = np.nan
    if np.dtype(dtype).kind in "iu":
        values = np.nan_to_num(values, nan=0).astype(dtype)
    else:
        values = values.astype(dtype)
    lat = np.linspace(60, -60, ny) if descending_y else np.linspace(-60, 60, ny)
    lon = np.linspace(-100, 100, nx)
    dims = ("lat", "lon") if nt is None else ("time", "lat", "lon")
    coords = {"lat": lat, "lon": lon}
    if nt is not None:
        coords["time"] = np.arange(nt).astype("datetime64[D]").astype("datetime64[ns]")
    ds = xr.Dataset({"air": (dims, values, {"units": "K", "long_name": "air temperature"})}, coords=coords)
    if crs:
        ds = ds.proj.assign_crs(spatial_ref=crs)
    return ds


@pytest.fixture
def raster2d() -> xr.Dataset:
    return make_raster()


@pytest.fixture
def raster3d() -> xr.Dataset:
    return make_raster(nt=4, nan_fraction=0.05)


def load_schema(name: str) -> dict:
    return json.loads((SPECS / name / "schema.json").read_text())


def validate_conventions(doc: dict, names=("multiscales", "spatial", "geo-proj")) -> None:
    """Validate a zarr.json document against the convention schemas (offline)."""
    import jsonschema

    for name in names:
        schema = load_schema(name)
        jsonschema.Draft7Validator(schema).validate(doc)


def coarsen_reference(ds: xr.Dataset, var: str, factor: int, method: str, lat="lat", lon="lon") -> np.ndarray:
    """Independent reference: xarray.coarsen of the source (trim boundary)."""
    da = ds[var]
    if factor == 1:
        return da.values
    c = da.coarsen({lat: factor, lon: factor}, boundary="trim")
    if method == "nearest":
        return da.isel({lat: slice(0, (da.sizes[lat] // factor) * factor, factor),
                        lon: slice(0, (da.sizes[lon] // factor) * factor, factor)}).values
    return getattr(c, method)().values
