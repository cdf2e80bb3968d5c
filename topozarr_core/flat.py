"""Helpers for single-level (flat) GeoZarr datasets: metadata and encoding without a pyramid."""

from __future__ import annotations

from typing import Any

import xarray as xr

from .chunking import DEFAULT_TARGET_CHUNK_BYTES
from .metadata import ZarrLayerVarConfig, flat_attributes, validate_layer_hints
from .planning import build_spec, recommend_encodings


def recommend_encoding(
    ds: xr.Dataset,
    x_dim: str = "x",
    y_dim: str = "y",
    chunks_per_shard: int | None = 4,
    target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES,
) -> dict[str, dict[str, Any]]:
    """``{var: {"chunks", "shards"}}`` for ``ds.to_zarr(zarr_format=3, encoding=...)``. Needs no CRS and no
    uniform grid (1-pixel and irregular axes are fine): only the sizes and dtypes matter."""
    layouts = recommend_encodings(ds, x_dim, y_dim, chunks_per_shard, target_chunk_bytes)
    return {name: enc.to_xarray() for name, enc in layouts.items()}


def attach_geozarr_metadata(
    ds: xr.Dataset,
    x_dim: str = "x",
    y_dim: str = "y",
    crs: Any = None,
    layer_hints: dict[str, ZarrLayerVarConfig] | None = None,
) -> xr.Dataset:
    """A copy of ``ds`` with ``spatial:``/``proj:`` (and zarr-layer) root attributes, no multiscales."""
    spec = build_spec(ds, levels=1, factors=None, x_dim=x_dim, y_dim=y_dim, method="mean", crs=crs,
                      layer_hints=None, chunks_per_shard=None, target_chunk_bytes=DEFAULT_TARGET_CHUNK_BYTES)
    validate_layer_hints(layer_hints, [v.name for v in spec.variables if not v.is_coord])
    out = ds.copy()
    out.attrs = {**ds.attrs, **flat_attributes(spec.grid, spec.crs, layer_hints)}
    return out
