"""Helpers for single-level (flat) GeoZarr datasets: metadata and encoding without a pyramid."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from topozarr_core.layout.conventions import flat_attributes
from topozarr_core.layout.level_dataset import NO_NODATA_FILL
from topozarr_core.spec.chunking import DEFAULT_TARGET_CHUNK_BYTES
from topozarr_core.spec.layer_hints import ZarrLayerVarConfig, validate_layer_hints
from topozarr_core.spec.pyramid_spec import build_spec, nodata_value, recommend_encodings


def recommend_encoding(
    ds: xr.Dataset,
    x_dim: str = "x",
    y_dim: str = "y",
    chunks_per_shard: int | None = 4,
    target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES,
) -> dict[str, dict[str, Any]]:
    """``{var: {"chunks", "shards"}}`` for ``ds.to_zarr(zarr_format=3, encoding=...)``, topozarr's layout (see
    :mod:`topozarr_core.spec.chunking`): variables over both or one spatial dim, and 1-D coordinates along one that need more
    than one chunk. Needs no CRS and no uniform grid (1-pixel and irregular axes are fine): only the sizes
    matter. A variable with a nodata value other than NaN (its ``_FillValue``) also gets ``fill_value``, so
    the written zarr ``fill_value`` marks nodata as in a pyramid's levels; an integer raster without one
    gets netCDF's default fill (:data:`topozarr_core.layout.level_dataset.NO_NODATA_FILL`), so its zeros stay data for zarr-layer and GDAL.

    :param ds: the dataset.
    :param x_dim: its x dimension.
    :param y_dim: its y dimension.
    :param chunks_per_shard: chunks per shard along each spatial dim (1, 2, 4, 8, 16, 32, or None
        for no sharding).
    :param target_chunk_bytes: the uncompressed size a chunk aims at."""
    layouts = recommend_encodings(ds, x_dim, y_dim, chunks_per_shard, target_chunk_bytes)
    out = {name: enc.to_xarray() for name, enc in layouts.items()}
    for name in out:
        da = ds[name]
        if da.dtype.kind in "iuf" and (name in ds.data_vars or {x_dim, y_dim} <= set(da.dims)):
            fill = nodata_value(da)
            if fill is not None:
                out[name]["fill_value"] = np.asarray(fill).astype(da.dtype).item()
            elif da.dtype.name in NO_NODATA_FILL and {x_dim, y_dim} <= set(da.dims):
                out[name]["fill_value"] = NO_NODATA_FILL[da.dtype.name]  # as a pyramid's levels: zeros stay data
    return out


def attach_geozarr_metadata(
    ds: xr.Dataset,
    x_dim: str = "x",
    y_dim: str = "y",
    crs: Any = None,
    layer_hints: dict[str, ZarrLayerVarConfig] | None = None,
) -> xr.Dataset:
    """A copy of ``ds`` with ``spatial:``/``proj:`` (and zarr-layer) root attributes, no multiscales.

    For a single-level dataset written with :func:`recommend_encoding`; refuses bad input as
    :func:`~topozarr_core.create_pyramid` does.

    :param ds: the dataset.
    :param x_dim: its x dimension.
    :param y_dim: its y dimension.
    :param crs: the CRS, when the dataset carries none.
    :param layer_hints: zarr-layer display hints per variable (:class:`~topozarr_core.ZarrLayerVarConfig`)."""
    spec = build_spec(ds, levels=1, factors=None, x_dim=x_dim, y_dim=y_dim, method="mean", crs=crs,
                      layer_hints=None, chunks_per_shard=None, target_chunk_bytes=DEFAULT_TARGET_CHUNK_BYTES)
    validate_layer_hints(layer_hints, [v.name for v in spec.variables if not v.is_coord])
    out = ds.copy()
    out.attrs = {**ds.attrs, **flat_attributes(spec.grid, spec.crs, layer_hints)}
    return out
