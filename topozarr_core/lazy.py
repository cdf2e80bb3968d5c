"""Lazy per-level data via ``xarray.coarsen``: the Dask-friendly path of ``Pyramid.as_datatree``."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .kernels import block_reduce
from .packing import stored_values
from .plan import VarSpec
from .planning import PyramidSpec


def _mask_fill(da: xr.DataArray, fill) -> xr.DataArray:
    return da if fill is None else da.where(da != fill)


def coarsened(src: xr.Dataset, spec: PyramidSpec, v: VarSpec, level: int):
    """Level-``level`` values of variable ``v`` as a lazy dask array (coarsen of level 0)."""
    f = spec.factors[level]
    da = src[v.name].variable
    if v.packing is not None:  # reduced on the packed integers, as write() does (see packing)
        da = da.copy(data=da.data.map_blocks(lambda block: stored_values(v, block), dtype=np.dtype(v.dtype)))
    if f == 1:
        return da.data.astype(v.dtype)
    windows = {spec.x_dim: f, spec.y_dim: f}
    arr = xr.DataArray(da)
    out_dtype = np.dtype(v.level_dtype(level))
    if v.method in ("mean", "max", "min", "sum"):
        masked = _mask_fill(arr, v.fill_value)
        red = getattr(masked.coarsen(windows, boundary="trim"), v.method)()
        if v.method != "sum":
            missing = v.fill_value if v.fill_value is not None else (np.nan if out_dtype.kind == "f" else 0)
            red = red.fillna(missing)
        if out_dtype.kind in "iu":
            red = red.round()
        return red.astype(out_dtype).data

    def reduce(block: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
        # coarsen.reduce hands windows as extra axes; move them to the front of the kernel's view.
        return _window_reduce(block, axis, v)

    return arr.coarsen(windows, boundary="trim").reduce(reduce).astype(out_dtype).data


def _window_reduce(block: np.ndarray, axis: tuple[int, ...], v: VarSpec) -> np.ndarray:
    """nearest/mode/majority on coarsen's (..., n1, f1, ..., n2, f2) windows via the compiled kernel.

    Window axes come right after their coarse axes; the kernel is symmetric in the two spatial
    axes, so they are taken in array order.
    """
    w1, w2 = sorted(axis)
    c1, c2 = w1 - 1, w2 - 1
    n1, f1, n2, f2 = block.shape[c1], block.shape[w1], block.shape[c2], block.shape[w2]
    moved = np.moveaxis(block, (c1, w1, c2, w2), (-4, -3, -2, -1))
    lead = moved.shape[:-4]
    flat = moved.reshape(lead + (n1 * f1, n2 * f2))
    out, _ = block_reduce(np.ascontiguousarray(flat), f1, v.method, v.fill_value)
    kept = [i for i in range(block.ndim) if i not in (w1, w2)]
    order = [d for d in kept if d not in (c1, c2)] + [c1, c2]
    return np.moveaxis(out, list(range(out.ndim)), [kept.index(d) for d in order])
