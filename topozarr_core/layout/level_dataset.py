"""Build the xarray Dataset of one level (coordinates, attributes, encodings).

Used with different data: as a lazy *template* (dask zeros chunked by the write unit,
``Pyramid.level_templates``), as the one-block placeholder whose metadata initialises the target
before region writes (:func:`staging_data`), and as the lazy levels of ``Pyramid.as_datatree``. All
therefore produce identical metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr

from topozarr_core.kernels.one_axis import reduce_along
from topozarr_core.kernels.reduce import SUPPORTED_DTYPES
from topozarr_core.layout.conventions import level_attributes
from topozarr_core.spec.grid import Axis, level_centres
from topozarr_core.spec.packing import packing_attrs
from topozarr_core.spec.pyramid_spec import PyramidSpec, nodata_value
from topozarr_core.spec.variables import VarSpec

#: Encoding keys kept from the source for carried variables and coordinates (CF time encoding).
_KEEP_ENCODING = ("units", "calendar", "dtype")
DROP_ATTRS = ("_FillValue", "coordinates", "grid_mapping", "missing_value")

GriddedData = Callable[[VarSpec, int], Any]

#: The zarr ``fill_value`` of an integer array without nodata (no ``_FillValue``): netCDF's default
#: fill value for the dtype (``NC_FILL_*``, what the netCDF library writes into cells never written).
#: Why not zarr's default 0: Zarr v3 gives every array a fill value, zarr-layer masks the cells equal
#: to it and GDAL reports it as the band's nodata, so with 0 every real zero (sea level, class 0)
#: vanished there. xarray masks nothing either way (it reads ``_FillValue``, which stays unset).
#: The value is fixed when an array is created and never changed: chunks equal to it in full are
#: left unwritten, so changing it later would change their values.
NO_NODATA_FILL = {
    "int8": -127, "uint8": 255, "int16": -32767, "uint16": 65535, "int32": -2147483647,
    "uint32": 4294967295, "int64": -9223372036854775806, "uint64": 18446744073709551614,
}


def crs_coord_name(ds: xr.Dataset) -> str:
    """Name of the CF grid-mapping scalar written to every level (reuses xproj's if present).

    :param ds: the source dataset.
    """
    for name, index in ds.xindexes.items():
        if type(index).__name__ == "CRSIndex":
            return str(name)
    for name in ("spatial_ref", "crs"):
        if name in ds.variables and ds[name].ndim == 0:
            return name
    return "spatial_ref"


def _coarsen_1d(values: np.ndarray, axis: int, f: int) -> np.ndarray:
    """Window means (numeric) or window-first values along one axis, trimmed."""
    n = values.shape[axis] // f
    trimmed = np.take(values, np.arange(n * f), axis=axis)
    if f == 1:
        return trimmed
    if np.issubdtype(values.dtype, np.number) and values.dtype.kind != "m":
        shape = list(trimmed.shape)
        shape[axis : axis + 1] = [n, f]
        return trimmed.reshape(shape).mean(axis=axis + 1).astype(values.dtype if values.dtype.kind == "f" else "f8")
    return np.take(trimmed, np.arange(0, n * f, f), axis=axis)


def _carried(var: xr.Variable, spec: PyramidSpec, level: int) -> xr.Variable:
    """A variable without both spatial dims: copied, or coarsened along its one spatial dim (level by
    level, as topozarr coarsens its coordinates)."""
    values = np.asarray(var.values)
    for d in (spec.x_dim, spec.y_dim):
        if d in var.dims:
            for prev, f in zip(spec.factors[:level], spec.factors[1 : level + 1]):
                values = _coarsen_1d(values, var.dims.index(d), f // prev)
    out = xr.Variable(var.dims, values, attrs={k: v for k, v in var.attrs.items() if k not in DROP_ATTRS})
    out.encoding = {k: v for k, v in var.encoding.items() if k in _KEEP_ENCODING}
    return out


def _along_one_axis(ds: xr.Dataset, name: str, spec: PyramidSpec, level: int) -> xr.Variable:
    """A data variable over one spatial dim at ``level``: reduced along it with the pyramid's method in its
    own dtype (a sum widens), nodata kept, as topozarr does (see :mod:`topozarr_core.kernels.one_axis`). A dtype the kernel
    does not take (dates, text) is carried as before (window means, or the first value)."""
    var = ds[name].variable
    if var.dtype not in SUPPORTED_DTYPES:
        return _carried(var, spec, level)
    fill = nodata_value(ds[name])
    (dim,) = [d for d in var.dims if d in (spec.x_dim, spec.y_dim)]
    values = reduce_along(np.asarray(var.values), var.dims.index(dim), spec.factors[: level + 1], spec.method, fill)
    out = xr.Variable(var.dims, values, attrs={k: v for k, v in var.attrs.items() if k not in DROP_ATTRS})
    out.encoding = {k: v for k, v in var.encoding.items() if k in _KEEP_ENCODING and k != "dtype"}
    if fill is not None:
        out.encoding["_FillValue"] = out.encoding["fill_value"] = np.asarray(fill).astype(values.dtype).item()
    return out


def axis_centres(ds: xr.Dataset, spec: PyramidSpec, axis: Axis, level: int) -> np.ndarray:
    """A level's x or y coordinate (level 0: the source's, bit for bit; see ``grid.level_centres``).

    :param ds: the source dataset.
    :param spec: the pyramid's spec.
    :param axis: the x or y axis of ``spec.grid``.
    :param level: the level index.
    """
    return level_centres(ds, axis, spec.factors[: level + 1])


def gridded_encoding(spec_var: VarSpec, level: int) -> dict[str, Any]:
    """The ``to_zarr`` encoding of a gridded variable at one level: its chunks/shards/codecs, dtype and fill value.

    The zarr ``fill_value`` is the nodata value when there is one; float data without one gets NaN, other
    dtypes none (or the ``NO_NODATA_FILL`` value of their dtype).

    :param spec_var: the variable's spec.
    :param level: the level index.
    """
    enc = spec_var.encodings[level].to_xarray()
    dtype = np.dtype(spec_var.level_dtype(level))
    if spec_var.fill_value is not None:
        enc["_FillValue"] = np.asarray(spec_var.fill_value).astype(dtype).item()
        enc["fill_value"] = enc["_FillValue"]  # the zarr fill_value is the nodata value (readers mask by it)
    elif dtype.kind == "f":
        enc["_FillValue"] = np.nan
    else:
        enc["_FillValue"] = None
        if dtype.name in NO_NODATA_FILL:
            enc["fill_value"] = NO_NODATA_FILL[dtype.name]
    enc["dtype"] = dtype
    return enc


def level_dataset(ds: xr.Dataset, spec: PyramidSpec, level: int, data: GriddedData) -> tuple[xr.Dataset, dict]:
    """The level-``level`` Dataset and its to_zarr encoding. ``data(var, level)`` gives gridded values.

    :param ds: the source dataset.
    :param spec: the pyramid's spec.
    :param level: the level index.
    :param data: gives the gridded values of a variable at a level (real data or a placeholder).
    """
    f = spec.factors[level]
    grid = spec.grid
    crs_name = crs_coord_name(ds)
    coords: dict[str, xr.Variable] = {}
    for axis in (grid.y, grid.x):
        src = ds[axis.name].variable
        coords[axis.name] = xr.Variable((axis.name,), axis_centres(ds, spec, axis, level),
                                        attrs={k: v for k, v in src.attrs.items() if k not in DROP_ATTRS})
    gridded = {v.name: v for v in spec.variables}
    for name, var in ds.coords.variables.items():
        if name in coords or name in gridded or name == crs_name:
            continue
        coords[str(name)] = _carried(var, spec, level)
    encoding: dict[str, dict] = {}
    wkt = spec.crs.to_wkt()
    coords[crs_name] = xr.Variable((), np.int64(0), attrs={"crs_wkt": wkt, "spatial_ref": wkt})

    data_vars: dict[str, xr.Variable] = {}
    for v in spec.variables:
        src = ds[v.name].variable
        attrs = {**{k: val for k, val in src.attrs.items() if k not in DROP_ATTRS}, **packing_attrs(v)}
        if not v.is_coord:
            attrs["grid_mapping"] = crs_name
        var = xr.Variable(v.dims, data(v, level), attrs=attrs)
        (coords if v.is_coord else data_vars)[v.name] = var
        encoding[v.name] = gridded_encoding(v, level)
    for name in spec.carried:
        one_axis = name in spec.side_dims  # a data variable over one spatial dim
        data_vars[name] = _along_one_axis(ds, name, spec, level) if one_axis else _carried(ds[name].variable, spec,
                                                                                           level)
    for name, layouts in spec.side_encodings.items():  # topozarr's chunks of long coordinates, 1-D profiles
        if layouts[level] is not None:
            var = coords.get(name, data_vars.get(name))
            encoding[name] = {**(var.encoding if var is not None else {}), **layouts[level].to_xarray()}
    out = xr.Dataset(data_vars, coords=coords, attrs=level_attributes(grid, spec.crs, f, spec.source_attrs))
    return out, encoding


def template_data(v: VarSpec, level: int) -> dsa.Array:
    """Lazy placeholder whose dask chunks match the shards, so xarray accepts it for region writes.

    :param v: the variable's spec.
    :param level: the level index.
    """
    enc = v.encodings[level]
    unit = enc.shards if enc.shards is not None else enc.chunks
    return dsa.zeros(v.shapes[level], dtype=v.level_dtype(level), chunks=unit)


def staging_data(v: VarSpec, level: int) -> dsa.Array:
    """Lazy placeholder in one dask chunk: what staging a level's documents needs (xarray writes
    metadata only, ``compute=False``).

    Why not :func:`template_data`: xarray builds the dask graph of the discarded write, one task per
    block, so shard-sized blocks cost about 0.3 s per staged level of a 4 GB raster, paid twice
    before the first tile (check, then initialise). One block aligns with any chunking.

    :param v: the variable's spec.
    :param level: the level index.
    """
    return dsa.zeros(v.shapes[level], dtype=v.level_dtype(level), chunks=v.shapes[level])
