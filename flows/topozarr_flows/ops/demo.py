"""Generated demo data: a smooth temperature-like field on a global lat/lon grid, as NetCDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyproj
import xarray as xr


def synthetic_dataset(ny: int = 1024, nx: int = 2048, nt: int = 3, seed: int = 0) -> xr.Dataset:
    """Deterministic air-temperature-like data with a NaN hole (a 'missing swath').

    :param ny: rows.
    :param nx: columns.
    :param nt: time steps.
    :param seed: the random generator's seed.
    """
    rng = np.random.default_rng(seed)
    lat = np.linspace(90 - 90 / ny, -90 + 90 / ny, ny)
    lon = np.linspace(-180 + 180 / nx, 180 - 180 / nx, nx)
    yy, xx = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    base = 273.15 + 30 * np.cos(yy) - 15 + 5 * np.sin(3 * xx) * np.cos(2 * yy)
    air = np.stack([base + 2 * np.sin(t) + rng.normal(0, 0.5, base.shape) for t in range(nt)]).astype("float32")
    air[:, ny // 3 : ny // 3 + ny // 16, nx // 5 : nx // 5 + nx // 8] = np.nan
    ds = xr.Dataset(
        {"air": (("time", "lat", "lon"), air, {"units": "K", "long_name": "air temperature"})},
        coords={
            "time": np.arange(nt).astype("datetime64[D]").astype("datetime64[ns]"),
            "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
            "spatial_ref": ((), 0, {"crs_wkt": pyproj.CRS("EPSG:4326").to_wkt()}),
        },
    )
    ds.air.attrs["grid_mapping"] = "spatial_ref"
    return ds


def write_demo_source(folder: Path, **kwargs) -> Path:
    """Write the demo source ``air.nc`` into ``folder`` (unless it is there already); returns its path.

    :param folder: the directory (created when missing).
    :param kwargs: :func:`synthetic_dataset`'s arguments.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "air.nc"
    if not path.exists():
        synthetic_dataset(**kwargs).to_netcdf(path, engine="h5netcdf")
    return path
