"""Synthetic rasters and the independent reference for their coarsened levels.

Fixtures (registered for every test by tests/conftest.py): ``raster2d``, ``raster3d``, ``netcdf_720``."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import xproj  # noqa: F401  (the .proj accessor)


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


def curvilinear_raster(only_x: bool) -> xr.Dataset:
    """96 x 48 pixels whose positions are given by 2-D lon (and lat) coordinates spanning -90..90."""
    ny, nx = 48, 96
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    lon = -90 + 180 * (ii + 0.3 * np.sin(jj / 8)) / (nx - 1)
    lat = 60 - 120 * (jj + 0.2 * np.cos(ii / 9)) / (ny - 1)
    values = np.cos(np.radians(lat)) * 280
    coords = {"lon": (("y", "x"), lon)}
    if only_x:  # y has a regular 1-D coordinate: only x is placed by the 2-D lon
        coords["y"] = np.linspace(60, -60, ny)
    else:
        coords["lat"] = (("y", "x"), lat)
    ds = xr.Dataset({"t": (("y", "x"), values.astype("f4"))}, coords=coords)
    return ds.proj.assign_crs(spatial_ref="EPSG:4326")


@pytest.fixture
def netcdf_720(tmp_path) -> str:
    """A NetCDF source of 2 time steps of 720 x 720 with 5% NaN (the flow tests' many-tile source)."""
    path = tmp_path / "src.nc"
    make_raster(ny=720, nx=720, nt=2, nan_fraction=0.05).drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    return str(path)
