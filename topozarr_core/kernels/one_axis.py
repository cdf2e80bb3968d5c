"""Coarsening a data variable over one spatial dim (a per-column profile ``(time, x)``, a ``(y,)`` weight).

topozarr coarsens such a variable along the spatial dim it has, with the pyramid's method, keeping its
dtype. The 2-D kernel (:func:`topozarr_core.kernels.reduce.block_reduce`) does the work, so fill values, integer rounding,
widened integer sums and mode/majority ties behave exactly as for gridded variables: each value is
repeated ``step`` times along a new last axis, which turns a window of ``step`` values into a
``step x step`` window holding each of them ``step`` times. Means, extrema, the first value, modes and
majorities are unchanged by the repetition; a sum (and a mean's missing counts) are ``step`` times
the one-axis result and are divided back exactly. Levels are built one step at a time from the level
before; means carry the missing counts, so they stay exact next to missing data.
"""

from __future__ import annotations

import numpy as np

from topozarr_core.kernels.reduce import block_reduce


def reduce_along(values: np.ndarray, axis: int, factors: tuple[int, ...] | list[int], method: str,
                 fill_value: float | int | None) -> np.ndarray:
    """``values`` coarsened along ``axis`` through the cumulative ``factors`` (level 0 first).

    Parameters: ``values`` the level-0 array; ``axis`` the index of its spatial dim; ``factors`` the
    cumulative factors up to the level wanted; ``method`` one of :data:`topozarr_core.kernels.reduce.METHODS`;
    ``fill_value`` its nodata value besides NaN (None: none).
    """
    x = np.moveaxis(np.asarray(values), axis, -1)
    missing = None
    for prev, f in zip(factors, factors[1:]):
        step = f // prev
        n = x.shape[-1] // step
        x = x[..., : n * step]
        repeated = np.repeat(x[..., None], step, axis=-1)
        counts = None if missing is None else np.repeat(missing[..., : n * step, None], step, axis=-1)
        out, out_missing = block_reduce(repeated, step, method, fill_value, missing=counts, weight=prev)
        x = out[..., 0]
        if method == "sum":
            x = x // step if x.dtype.kind in "iu" else x / x.dtype.type(step)
        missing = None if out_missing is None else out_missing[..., 0] // step
    return np.moveaxis(x, -1, axis)


__all__ = ["reduce_along"]
