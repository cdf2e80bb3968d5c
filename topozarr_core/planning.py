"""Turn a Dataset and user options into a validated pyramid specification.

Every rule about bad input lives here, so errors surface at planning time, before any write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyproj
import xarray as xr

from .chunking import (
    DEFAULT_TARGET_CHUNK_BYTES,
    VarEncoding,
    spatial_chunk_size,
    validate_chunks_per_shard,
    variable_encoding,
)
from .crs import resolve_crs
from .grid import SpatialGrid, spatial_grid
from .kernels import METHODS, output_dtype
from .metadata import ZarrLayerVarConfig, validate_layer_hints
from .plan import VarSpec
from .storable import check_storable, short

SUPPORTED_DTYPES = tuple(np.dtype(d) for d in ("u1", "u2", "i2", "i4", "i8", "f4", "f8"))


@dataclass(frozen=True)
class PyramidSpec:
    """Validated description of a pyramid: grid, CRS, factors and per-variable layout."""

    grid: SpatialGrid
    crs: pyproj.CRS
    factors: tuple[int, ...]
    method: str
    variables: tuple[VarSpec, ...]  # gridded: written region by region
    carried: tuple[str, ...]  # data variables without both spatial dims
    source_chunks: dict[str, tuple[int, ...] | None]
    chunks_per_shard: int | None
    target_chunk_bytes: int
    layer_hints: dict[str, ZarrLayerVarConfig]

    @property
    def x_dim(self) -> str:
        return self.grid.x.name

    @property
    def y_dim(self) -> str:
        return self.grid.y.name


#: More levels than any raster can have (2**63 pixels): refused before any factor is computed.
MAX_LEVELS = 63


def resolve_factors(levels: int | None, factors: list[int] | None) -> tuple[int, ...]:
    """``levels=N`` means ``[1, 2, ..., 2**(N-1)]``; explicit factors are checked."""
    if (levels is None) == (factors is None):
        raise ValueError("pass exactly one of levels=N or factors=[1, ...]")
    if levels is not None:
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
            raise TypeError(f"levels must be an int, got {type(levels).__name__}")
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        if levels > MAX_LEVELS:  # checked before 2**levels is ever computed
            raise ValueError(f"levels={short(levels)} is too many: no grid has more than {MAX_LEVELS} levels "
                             f"(a 2**{MAX_LEVELS - 1} pixel wide raster)")
        return tuple(2**i for i in range(int(levels)))
    if isinstance(factors, (str, bytes)) or not hasattr(factors, "__iter__"):
        raise TypeError(f"factors must be a list of ints, got {type(factors).__name__}")
    fs = list(factors)
    if not fs:
        raise ValueError("factors must not be empty")
    for f in fs:
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
            raise TypeError(f"factors must be ints, got {short(f)}")
    if fs[0] != 1:
        raise ValueError(f"factors must start at 1 (level 0 is the source), got {short(fs)}")
    for a, b in zip(fs, fs[1:]):
        if b <= a:
            raise ValueError(f"factors must be strictly increasing, got {short(fs)}")
        if b % a:
            raise ValueError(f"each factor must divide the next, but {a} does not divide {b} in {short(fs)}")
    return tuple(int(f) for f in fs)


def _fill_value(da: xr.DataArray) -> float | int | None:
    fill = da.attrs.get("_FillValue")
    if fill is None:
        return None
    dtype = da.dtype
    fill_arr = np.asarray(fill)
    if fill_arr.dtype.kind not in "biuf" or fill_arr.size != 1:
        raise ValueError(f"variable {da.name!r}: attribute _FillValue {short(fill)} is not a number; set "
                         f"ds[{da.name!r}].attrs['_FillValue'] to a number of dtype {dtype} (or delete it)")
    if dtype.kind in "iu":
        if not np.isfinite(fill_arr).all() or fill_arr != np.round(fill_arr):
            raise ValueError(f"variable {da.name!r}: _FillValue {fill!r} is not an integer for dtype {dtype}")
        info = np.iinfo(dtype)
        if not info.min <= int(fill) <= info.max:
            raise ValueError(f"variable {da.name!r}: _FillValue {fill!r} does not fit dtype {dtype}")
        return int(fill)
    value = float(fill)
    return None if np.isnan(value) else value


def _source_chunks(da: xr.DataArray) -> tuple[int, ...] | None:
    """Source chunk shape per dim: dask chunks, else the backend's on-disk chunks."""
    if da.chunks:
        return tuple(int(c[0]) if len(c) else 1 for c in da.chunks)
    enc = da.encoding.get("preferred_chunks") or {}
    if enc:
        return tuple(int(enc.get(d, da.sizes[d])) for d in da.dims)
    chunks = da.encoding.get("chunks")
    if chunks and len(chunks) == da.ndim:
        return tuple(int(c) for c in chunks)
    return None


def _gridded_names(ds: xr.Dataset, x_dim: str, y_dim: str) -> tuple[list[str], list[str], list[str]]:
    """(gridded data vars, gridded non-index coords, carried data vars)."""
    gridded, coords, carried = [], [], []
    for name, da in ds.data_vars.items():
        (gridded if {x_dim, y_dim} <= set(da.dims) else carried).append(str(name))
    for name, da in ds.coords.items():
        if name not in ds.dims and {x_dim, y_dim} <= set(da.dims):
            coords.append(str(name))
    return gridded, coords, carried


def build_spec(
    ds: xr.Dataset | xr.DataArray,
    *,
    levels: int | None,
    factors: list[int] | None,
    x_dim: str,
    y_dim: str,
    method: str,
    crs: Any,
    layer_hints: dict[str, ZarrLayerVarConfig] | None,
    chunks_per_shard: int | None,
    target_chunk_bytes: int,
) -> PyramidSpec:
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "data")
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"create_pyramid needs an xarray Dataset, got {type(ds).__name__}")
    check_storable(ds)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    fs = resolve_factors(levels, factors)
    validate_chunks_per_shard(chunks_per_shard)
    if isinstance(target_chunk_bytes, bool) or not isinstance(target_chunk_bytes, int) or target_chunk_bytes <= 0:
        raise ValueError(f"target_chunk_bytes must be a positive int, got {target_chunk_bytes!r}")
    if not ds.data_vars:
        raise ValueError("the dataset has no data variables: nothing to build a pyramid from")
    grid = spatial_grid(ds, x_dim, y_dim)
    ny, nx = grid.shape(fs[-1])
    if ny < 1 or nx < 1:
        max_f = 1
        while grid.y.size // (max_f * 2) >= 1 and grid.x.size // (max_f * 2) >= 1:
            max_f *= 2
        raise ValueError(
            f"too many levels for a {grid.y.size}x{grid.x.size} grid: factor {fs[-1]} leaves no pixels; "
            f"the largest usable factor is {max_f} (levels <= {max_f.bit_length()})"
        )
    gridded, grid_coords, carried = _gridded_names(ds, x_dim, y_dim)
    if not gridded:
        raise ValueError(f"no data variable has both {y_dim!r} and {x_dim!r}; nothing to build a pyramid from")
    empty = [(name, dim) for name in gridded for dim, n in ds[name].sizes.items() if n == 0]
    if empty:
        name, dim = empty[0]
        raise ValueError(f"variable {name!r} has a zero-length {dim!r} dimension: there is nothing to build a "
                         "pyramid from (select a non-empty range first)")
    resolved_crs = resolve_crs(ds, crs)
    validate_layer_hints(layer_hints, gridded)

    specs = []
    source_chunks: dict[str, tuple[int, ...] | None] = {}
    for name in gridded + grid_coords:
        da = ds[name]
        if da.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"variable {name!r} has unsupported dtype {da.dtype}; supported: "
                f"{', '.join(str(d) for d in SUPPORTED_DTYPES)} (cast it first, e.g. ds[{name!r}].astype('float32'))"
            )
        is_coord = name in grid_coords
        var_method = method if not is_coord else ("mean" if da.dtype.kind == "f" else "nearest")
        fill = _fill_value(da)
        if var_method == "majority" and da.dtype.kind in "iu" and fill is None:
            raise ValueError(
                f"method='majority' on integer variable {name!r} needs a _FillValue attribute to mark "
                f"windows without a majority; set ds[{name!r}].attrs['_FillValue'] or use method='mode'"
            )
        chunks = _source_chunks(da)
        source_chunks[name] = chunks
        yi, xi = da.get_axis_num(y_dim), da.get_axis_num(x_dim)
        src_spatial = min(chunks[yi], chunks[xi]) if chunks else None
        if src_spatial is not None and src_spatial >= min(da.shape[yi], da.shape[xi]):
            src_spatial = None  # one chunk over the whole grid: nothing to snap to
        edge = spatial_chunk_size(da.dtype.itemsize, target_chunk_bytes, src_spatial)
        shapes, encodings = [], []
        for f in fs:
            shape = tuple(
                (n // f if d in (x_dim, y_dim) else n) for d, n in zip(da.dims, da.shape)
            )
            shapes.append(shape)
            encodings.append(
                variable_encoding(tuple(map(str, da.dims)), shape, da.dtype.itemsize, y_dim, x_dim, edge,
                                  chunks_per_shard)
            )
        specs.append(
            VarSpec(
                name=name,
                dims=tuple(map(str, da.dims)),
                dtype=da.dtype.str,
                out_dtype=np.dtype(output_dtype(var_method, da.dtype)).str,
                method=var_method,
                fill_value=fill,
                shapes=tuple(shapes),
                encodings=tuple(encodings),
                track_missing=var_method == "mean" and (da.dtype.kind == "f" or fill is not None),
                is_coord=is_coord,
            )
        )
    return PyramidSpec(
        grid=grid,
        crs=resolved_crs,
        factors=fs,
        method=method,
        variables=tuple(specs),
        carried=tuple(carried),
        source_chunks=source_chunks,
        chunks_per_shard=chunks_per_shard,
        target_chunk_bytes=target_chunk_bytes,
        layer_hints=dict(layer_hints or {}),
    )


__all__ = ["PyramidSpec", "build_spec", "resolve_factors", "DEFAULT_TARGET_CHUNK_BYTES", "VarEncoding"]
