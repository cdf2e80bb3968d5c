"""Rasters of blocks of constant value and their pyramids: what the preview page must draw block for
block (tests/browser/test_browser.py) and what the preview server serves (tests/flows/preview)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import xproj  # noqa: F401

from topozarr_core import ZarrLayerVarConfig, create_pyramid

BLOCK = 64


# ---------------------------------------------------------------- data ---------------------------

def block_raster(ny: int, nx: int, x0: float, y0: float, step: float, crs: str, x_dim: str, y_dim: str,
                 nt: int | None = None) -> xr.Dataset:
    """Blocks of BLOCK x BLOCK cells, values 16 + 16 * ((5 by + 3 bx + 7 t) mod 15); y descending."""
    by, bx = np.meshgrid(np.arange(ny) // BLOCK, np.arange(nx) // BLOCK, indexing="ij")
    steps = [0] if nt is None else range(nt)
    planes = [16.0 + 16.0 * ((5 * by + 3 * bx + 7 * t) % 15) for t in steps]
    values = np.stack(planes).astype("float32")
    x = x0 + (np.arange(nx) + 0.5) * step
    y = y0 - (np.arange(ny) + 0.5) * step
    dims: tuple[str, ...] = (y_dim, x_dim)
    coords: dict = {y_dim: y, x_dim: x}
    if nt is None:
        values = values[0]
    else:
        dims = ("time",) + dims
        coords["time"] = (np.datetime64("2020-01-01") + np.arange(nt) * np.timedelta64(1, "D")).astype("datetime64[ns]")
    ds = xr.Dataset({"v": (dims, values)}, coords=coords)
    return ds.proj.assign_crs(spatial_ref=crs)


def write_pyramid(ds: xr.Dataset, path: Path, x_dim: str, y_dim: str, levels: int,
                  chunk: int | None = None) -> Path:
    """``chunk``: square chunks of that edge on every level (two by two to a shard) instead of the
    planned ones, so that a level is drawn from many chunks."""
    pyramid = create_pyramid(ds, levels=levels, x_dim=x_dim, y_dim=y_dim, method="mean",
                             layer_hints={"v": ZarrLayerVarConfig(colormap="gray", clim=[0, 255])})
    if chunk is not None:
        for group, variables in pyramid.encoding.items():
            shape = pyramid.level_templates[int(group.strip("/"))]["v"].shape
            shards = tuple(min(2 * chunk, n) // chunk * chunk or n for n in shape)
            variables["v"] = {"chunks": tuple(min(chunk, n) for n in shape), "shards": shards}
    pyramid.write(str(path))
    return path
