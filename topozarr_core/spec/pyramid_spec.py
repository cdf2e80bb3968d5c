"""Turn a Dataset and user options into a validated pyramid specification.

Every rule about bad input lives here, so errors surface at planning time, before any write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyproj
import xarray as xr

from topozarr_core.kernels.reduce import METHODS, SUPPORTED_DTYPES, output_dtype
from topozarr_core.spec.chunking import (
    DEFAULT_TARGET_CHUNK_BYTES,
    VarEncoding,
    coordinate_encoding,
    level_source_chunks,
    validate_chunks_per_shard,
    variable_encoding,
)
from topozarr_core.spec.crs import resolve_crs
from topozarr_core.spec.grid import SpatialGrid, spatial_grid
from topozarr_core.spec.layer_hints import ZarrLayerVarConfig, validate_layer_hints
from topozarr_core.spec.packing import source_packing
from topozarr_core.spec.storable import check_storable
from topozarr_core.spec.variables import VarSpec
from topozarr_core.text import short

#: The ``method`` values ``create_pyramid`` accepts (topozarr exports the same name; a test keeps it
#: equal to :data:`topozarr_core.kernels.reduce.METHODS`, the kernel's own list).
CoarseningMethod = Literal["mean", "max", "min", "sum", "nearest", "mode", "majority"]
#: ``levels="auto"`` keeps coarsening while the smaller spatial side stays at least this many pixels.
DEFAULT_MIN_DIM = 256


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
    #: the dataset's global attributes (copied to every level group and the root, see metadata)
    source_attrs: dict[str, Any] = field(default_factory=dict)
    #: CF-packed integer variables stay packed (``create_pyramid(pack=...)``, see packing)
    pack: bool = True
    #: per level, the layout of the data variables over one spatial dim and the 1-D coordinates along a
    #: spatial dim (None: one chunk, xarray's default); see :func:`side_layouts`
    side_encodings: dict[str, tuple[VarEncoding | None, ...]] = field(default_factory=dict)
    #: the dims of each variable of ``side_encodings``
    side_dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: the nodata value (not NaN) of each data variable over one spatial dim that has one
    side_fills: dict[str, float | int] = field(default_factory=dict)

    @property
    def x_dim(self) -> str:
        """The x dimension's name."""
        return self.grid.x.name

    @property
    def y_dim(self) -> str:
        """The y dimension's name."""
        return self.grid.y.name

    def layout(self) -> dict[str, Any]:
        """What a region or tile plan is built from (the keyword arguments of
        :func:`topozarr_core.plan.regions.build_region_plan` and :func:`topozarr_core.plan.tiles.build_tile_plan`)."""
        return {"x_dim": self.x_dim, "y_dim": self.y_dim, "factors": list(self.factors),
                "variables": list(self.variables), "source_chunks": self.source_chunks}


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
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)):  # a ValueError, as in topozarr
            raise ValueError(f"factors must be ints, got {short(f)} ({type(f).__name__}) in {short(fs)}")
    if fs[0] != 1:
        raise ValueError(f"factors must start at 1 (level 0 is the source), got {short(fs)}")
    for a, b in zip(fs, fs[1:]):
        if b <= a:
            raise ValueError(f"factors must be strictly increasing, got {short(fs)}")
        if b % a:
            raise ValueError(f"each factor must divide the next, but {a} does not divide {b} in {short(fs)}")
    return tuple(int(f) for f in fs)


def check_min_dim(min_dim: Any) -> int:
    """``min_dim`` of ``levels="auto"``: a positive int."""
    if isinstance(min_dim, bool) or not isinstance(min_dim, (int, np.integer)) or min_dim < 1:
        raise ValueError(f"min_dim must be a positive int, got {short(min_dim)}")
    return int(min_dim)


def auto_levels(ny: int, nx: int, min_dim: int = DEFAULT_MIN_DIM) -> int:
    """Levels of ``levels="auto"``, as topozarr counts them: one more while
    ``min(nx, ny) // 2**levels >= min_dim`` (20000 px -> 7, 512 -> 2, 511 -> 1)."""
    side, levels = min(int(ny), int(nx)), 1
    while levels < MAX_LEVELS and side // 2**levels >= min_dim:
        levels += 1
    return levels


def nodata_value(da: xr.DataArray) -> float | int | None:
    """The variable's nodata value: its ``_FillValue`` attribute, or for an integer variable also its
    ``encoding["_FillValue"]`` (where xarray keeps it after decoding, as topozarr reads it). A float
    variable's encoding fill is already NaN in the decoded data, so NaN stays its nodata.

    :param da: the source variable.
    """
    fill, where = da.attrs.get("_FillValue"), "attribute"
    if fill is None and da.dtype.kind in "iu":
        fill, where = da.encoding.get("_FillValue"), "encoding"
    if fill is None:
        return None
    dtype = da.dtype
    fill_arr = np.asarray(fill)
    if fill_arr.dtype.kind not in "biuf" or fill_arr.size != 1:
        place = "attrs" if where == "attribute" else "encoding"
        raise ValueError(f"variable {da.name!r}: {where} _FillValue {short(fill)} is not a number; set "
                         f"ds[{da.name!r}].{place}['_FillValue'] to a number of dtype {dtype} (or delete it)")
    if dtype.kind in "iu":
        if not np.isfinite(fill_arr).all() or fill_arr != np.round(fill_arr):
            raise ValueError(f"variable {da.name!r}: {where} _FillValue {fill!r} is not an integer for dtype {dtype}")
        info = np.iinfo(dtype)
        if not info.min <= int(fill) <= info.max:
            raise ValueError(f"variable {da.name!r}: {where} _FillValue {fill!r} does not fit dtype {dtype}")
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


def layout_chunks(da: xr.DataArray) -> tuple[int, ...] | None:
    """The source chunk shape the layout snaps to, as topozarr sniffs it: the first dask chunk per dim,
    else the Zarr backend's ``encoding["chunks"]`` (a NetCDF file's chunking is not snapped to).

    :param da: the source variable.
    """
    if da.chunks:
        return tuple(int(c[0]) if len(c) else 1 for c in da.chunks)
    chunks = da.encoding.get("chunks")
    if chunks is not None and len(chunks) == da.ndim:
        return tuple(int(c) for c in chunks)
    return None


def layout_source_chunks(ds: xr.Dataset, x_dim: str, y_dim: str) -> dict[str, int] | None:
    """The source chunk per dim that every layout snaps to: one value for the whole dataset, taken from
    the data variables over both spatial dims. None when one of them is not chunked or they disagree
    along x or y (then nothing snaps, as in topozarr); a non-spatial dim they disagree on is left out.

    :param ds: the source dataset.
    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    """
    sizes: dict[str, set[int]] = {x_dim: set(), y_dim: set()}
    for da in ds.data_vars.values():
        if not {x_dim, y_dim} <= set(da.dims):
            continue
        chunks = layout_chunks(da)
        if chunks is None:
            return None
        for dim, chunk in zip(da.dims, chunks):
            sizes.setdefault(str(dim), set()).add(chunk)
    if any(len(sizes[dim]) != 1 for dim in (x_dim, y_dim)):
        return None
    return {dim: next(iter(s)) for dim, s in sizes.items() if len(s) == 1}


def level_layouts(da: xr.DataArray, x_dim: str, y_dim: str, factors: tuple[int, ...],
                  chunks_per_shard: int | None, target_chunk_bytes: int, source_chunks: dict[str, int] | None,
                  itemsize: int | None = None) -> tuple[list[tuple[int, ...]], list[VarEncoding]]:
    """Shape and chunk/shard layout at every factor of a variable over one or both spatial dims. Needs only
    the sizes (and the source chunks), not a uniform grid: :func:`recommend_encodings` uses it on any raster.

    :param da: the variable.
    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    :param factors: each level's factor relative to level 0.
    :param chunks_per_shard: chunks per shard along each spatial dim (None: unsharded).
    :param target_chunk_bytes: the chunk size to aim at.
    :param source_chunks: the source's chunk per dim that layouts snap to, or None.
    :param itemsize: bytes per stored element (default: the variable's dtype's).
    :returns: the shapes and the encodings, one per factor.
    """
    itemsize = itemsize or da.dtype.itemsize  # a packed variable's stored dtype (see packing)
    dims = tuple(map(str, da.dims))
    shapes, encodings = [], []
    for f in factors:
        shape = tuple((n // f if d in (x_dim, y_dim) else n) for d, n in zip(dims, da.shape))
        shapes.append(shape)
        encodings.append(variable_encoding(dims, shape, itemsize, y_dim, x_dim, chunks_per_shard, target_chunk_bytes,
                                           level_source_chunks(source_chunks, f, (x_dim, y_dim))))
    return shapes, encodings


def side_layouts(ds: xr.Dataset, x_dim: str, y_dim: str, factors: tuple[int, ...], names: list[str],
                 chunks_per_shard: int | None, target_chunk_bytes: int, source_chunks: dict[str, int] | None,
                 ) -> dict[str, tuple[VarEncoding | None, ...]]:
    """Per level, the layout of what is written beside the gridded variables, as topozarr plans it: data
    variables over one spatial dim (chunked and sharded like a gridded one along the dim they have) and
    1-D coordinates along a spatial dim (1-D chunks, unsharded, none when one chunk holds them).

    :param ds: the source dataset.
    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    :param factors: each level's factor relative to level 0.
    :param names: the variables to lay out (see :func:`side_names`).
    :param chunks_per_shard: chunks per shard along each spatial dim (None: unsharded).
    :param target_chunk_bytes: the chunk size to aim at.
    :param source_chunks: the source's chunk per dim that layouts snap to, or None.
    """
    out: dict[str, tuple[VarEncoding | None, ...]] = {}
    for name in names:
        da = ds[name]
        if name in ds.data_vars:
            out[name] = tuple(level_layouts(da, x_dim, y_dim, factors, chunks_per_shard, target_chunk_bytes,
                                            source_chunks)[1])
            continue
        dtype = da.dtype if da.dtype.kind == "f" else np.dtype("f8")  # coarse coordinates are window means
        out[name] = tuple(coordinate_encoding(da.size // f, (da.dtype if f == 1 else dtype).itemsize,
                                              target_chunk_bytes) for f in factors)
    return out


def side_names(ds: xr.Dataset, x_dim: str, y_dim: str) -> list[str]:
    """Data variables over exactly one spatial dim, then 1-D coordinates along a spatial dim.

    :param ds: the source dataset.
    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    """
    spatial = {x_dim, y_dim}
    names = [str(n) for n, da in ds.data_vars.items() if len(spatial & set(da.dims)) == 1]
    return names + [str(n) for n, da in ds.coords.items() if da.ndim == 1 and da.dims[0] in spatial]


def check_dtype(da: xr.DataArray, name: str) -> None:
    """Refuse a variable whose dtype the kernels do not support (TypeError saying how to cast it).

    :param da: the variable.
    :param name: its name, for the message.
    """
    if da.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"variable {name!r} has unsupported dtype {da.dtype}; supported: "
            f"{', '.join(str(d) for d in SUPPORTED_DTYPES)} (cast it first, e.g. ds[{name!r}].astype('float32'))"
        )


def recommend_encodings(ds: xr.Dataset, x_dim: str, y_dim: str, chunks_per_shard: int | None,
                        target_chunk_bytes: int) -> dict[str, VarEncoding]:
    """Level-0 layout of a flat dataset: gridded variables, variables over one spatial dim and long 1-D
    coordinates (see :mod:`topozarr_core.spec.chunking`). Only the dims are checked: an encoding needs no CRS, no uniform (or
    even 2-pixel) grid and no particular dtype (a bool mask gets one too), only the sizes.

    :param ds: the dataset.
    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    :param chunks_per_shard: chunks per shard along each spatial dim (None: unsharded).
    :param target_chunk_bytes: the chunk size to aim at.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"recommend_encoding needs an xarray Dataset, got {type(ds).__name__}")
    if x_dim == y_dim:
        raise ValueError(f"x_dim and y_dim must differ, both are {x_dim!r}")
    for role, dim in (("x_dim", x_dim), ("y_dim", y_dim)):
        if dim not in ds.dims:
            raise ValueError(f"{role}={dim!r} is not a dimension of the dataset; "
                             f"dimensions are {sorted(map(str, ds.dims))}")
    validate_chunks_per_shard(chunks_per_shard)
    if isinstance(target_chunk_bytes, bool) or not isinstance(target_chunk_bytes, int) or target_chunk_bytes <= 0:
        raise ValueError(f"target_chunk_bytes must be a positive int, got {target_chunk_bytes!r}")
    gridded, grid_coords, _ = _gridded_names(ds, x_dim, y_dim)
    if not gridded:
        raise ValueError(f"no data variable has both {y_dim!r} and {x_dim!r}; nothing to recommend an encoding for")
    source_chunks = layout_source_chunks(ds, x_dim, y_dim)
    out = {}
    for name in gridded + grid_coords:
        da = ds[name]
        empty = [dim for dim, n in da.sizes.items() if n == 0]
        if empty:
            raise ValueError(f"variable {name!r} has a zero-length {empty[0]!r} dimension: nothing to encode")
        out[name] = level_layouts(da, x_dim, y_dim, (1,), chunks_per_shard, target_chunk_bytes, source_chunks)[1][0]
    side = side_layouts(ds, x_dim, y_dim, (1,), side_names(ds, x_dim, y_dim), chunks_per_shard, target_chunk_bytes,
                        source_chunks)
    out.update({name: layouts[0] for name, layouts in side.items() if layouts[0] is not None})
    return out


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
    levels: int | Literal["auto"] | None,
    factors: list[int] | None,
    x_dim: str,
    y_dim: str,
    method: str,
    crs: Any,
    layer_hints: dict[str, ZarrLayerVarConfig] | None,
    chunks_per_shard: int | None,
    target_chunk_bytes: int,
    min_dim: int = DEFAULT_MIN_DIM,
    pack: bool = True,
) -> PyramidSpec:
    """Check the inputs and plan the pyramid: the work behind :func:`~topozarr_core.pyramid.create_pyramid`.

    Every check runs here, before anything is written; the parameters are ``create_pyramid``'s.

    :param ds: the source dataset (a DataArray becomes a one-variable dataset).
    :param levels: the number of levels (factors ``1, 2, 4, ...``), ``"auto"`` (see :func:`auto_levels`) or
        None; exactly one of ``levels`` and ``factors`` is given.
    :param factors: each level's factor relative to level 0, instead of ``levels``.
    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    :param method: the reduction method.
    :param crs: an explicit CRS, or None (the dataset's).
    :param layer_hints: per-variable ``zarr-layer`` hints, or None.
    :param chunks_per_shard: chunks per shard along each spatial dim (None: unsharded).
    :param target_chunk_bytes: the chunk size to aim at.
    :param min_dim: the smallest side ``levels="auto"`` keeps.
    :param pack: keep CF-packed integer variables packed.
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "data")
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"create_pyramid needs an xarray Dataset, got {type(ds).__name__}")
    check_storable(ds)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    auto = isinstance(levels, str) and levels == "auto"
    if isinstance(levels, str) and not auto:
        raise ValueError(f"levels must be an int or 'auto', got {short(levels)}")
    if auto and factors is not None:
        raise ValueError("pass exactly one of levels=N, levels='auto' or factors=[1, ...]")
    min_dim = check_min_dim(min_dim)
    fs = None if auto else resolve_factors(levels, factors)
    validate_chunks_per_shard(chunks_per_shard)
    if isinstance(target_chunk_bytes, bool) or not isinstance(target_chunk_bytes, int) or target_chunk_bytes <= 0:
        raise ValueError(f"target_chunk_bytes must be a positive int, got {target_chunk_bytes!r}")
    if not isinstance(pack, (bool, np.bool_)):
        raise TypeError(f"pack must be True or False, got {short(pack)}")
    if not ds.data_vars:
        raise ValueError("the dataset has no data variables: nothing to build a pyramid from")
    grid = spatial_grid(ds, x_dim, y_dim)
    if fs is None:
        fs = resolve_factors(auto_levels(grid.y.size, grid.x.size, min_dim), None)
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
    layout_chunks = layout_source_chunks(ds, x_dim, y_dim)
    for name in gridded + grid_coords:
        da = ds[name]
        check_dtype(da, name)
        is_coord = name in grid_coords
        var_method = method if not is_coord else ("mean" if da.dtype.kind == "f" else "nearest")
        packing = None if is_coord else source_packing(da, var_method, pack)
        dtype = np.dtype(packing.dtype) if packing else da.dtype  # what level 0 stores
        fill = packing.fill_value if packing else nodata_value(da)
        if var_method == "majority" and dtype.kind in "iu" and fill is None:
            raise ValueError(
                f"method='majority' on integer variable {name!r} needs a _FillValue attribute to mark "
                f"windows without a majority; set ds[{name!r}].attrs['_FillValue'] or use method='mode'"
            )
        source_chunks[name] = _source_chunks(da)
        shapes, encodings = level_layouts(da, x_dim, y_dim, fs, chunks_per_shard, target_chunk_bytes, layout_chunks,
                                          itemsize=dtype.itemsize)
        specs.append(
            VarSpec(
                name=name,
                dims=tuple(map(str, da.dims)),
                dtype=dtype.str,
                out_dtype=np.dtype(output_dtype(var_method, dtype)).str,
                method=var_method,
                fill_value=fill,
                shapes=tuple(shapes),
                encodings=tuple(encodings),
                track_missing=var_method == "mean" and (dtype.kind == "f" or fill is not None),
                is_coord=is_coord,
                packing=packing,
            )
        )
    side = side_layouts(ds, x_dim, y_dim, fs, side_names(ds, x_dim, y_dim), chunks_per_shard, target_chunk_bytes,
                        layout_chunks)
    side_fills: dict[str, float | int] = {}
    for name in side:  # data variables over one spatial dim are reduced with the method too (see one_axis)
        da = ds[name]
        if name in ds.data_vars and da.dtype in SUPPORTED_DTYPES:
            fill = nodata_value(da)
            if method == "majority" and da.dtype.kind in "iu" and fill is None:
                raise ValueError(f"method='majority' on integer variable {name!r} needs a _FillValue attribute to "
                                 f"mark windows without a majority; set ds[{name!r}].attrs['_FillValue'] or use "
                                 "method='mode'")
            if fill is not None:
                side_fills[name] = np.asarray(fill).astype(da.dtype).item()
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
        source_attrs=dict(ds.attrs),
        pack=bool(pack),
        side_encodings=side,
        side_dims={name: tuple(map(str, ds[name].dims)) for name in side},
        side_fills=side_fills,
    )


__all__ = ["PyramidSpec", "build_spec", "resolve_factors", "auto_levels", "recommend_encodings", "nodata_value",
           "CoarseningMethod",
           "DEFAULT_MIN_DIM", "DEFAULT_TARGET_CHUNK_BYTES", "VarEncoding"]
