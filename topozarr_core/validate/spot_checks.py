"""Spot checks of a written level's values against a reference computed straight from the source.

A few tiny random windows of a level are read back and compared with ``xarray.coarsen`` of level 0
(``nearest``: a strided pick; ``mode``/``majority``: the level-to-level kernel at level 1), an
independent reference: not the kernels and level-to-level chain that wrote them. Used by
:mod:`topozarr_core.validate.pyramid`; pure library, no Prefect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
import zarr

from topozarr_core.kernels.reduce import block_reduce
from topozarr_core.spec.packing import stored_values
from topozarr_core.spec.variables import VarSpec
from topozarr_core.text import clip

if TYPE_CHECKING:  # pragma: no cover
    from topozarr_core.pyramid import Pyramid

#: Largest spot-check window edge, in output pixels of the checked level.
WINDOW_EDGE = 3
#: Cap on level-0 pixels (per non-spatial index) read for one window; high levels get smaller windows.
MAX_SOURCE_PIXELS = 1 << 22
#: Methods whose levels >= 2 are computed level to level by design (not a function of level 0 alone).
LEVEL_TO_LEVEL_METHODS = ("mode", "majority")



def _window(rng: np.random.Generator, shape: tuple[int, ...], yi: int, xi: int, factor: int
            ) -> tuple[slice, ...] | None:
    """A random window of up to WINDOW_EDGE x WINDOW_EDGE output pixels (one index on other dims)."""
    if any(n == 0 for n in shape):
        return None
    h, w = min(WINDOW_EDGE, shape[yi]), min(WINDOW_EDGE, shape[xi])
    while h * w * factor * factor > MAX_SOURCE_PIXELS and (h > 1 or w > 1):
        if h >= w:
            h -= 1
        else:
            w -= 1
    out = []
    for axis, n in enumerate(shape):
        size = h if axis == yi else w if axis == xi else 1
        start = int(rng.integers(0, n - size + 1))
        out.append(slice(start, start + size))
    return tuple(out)


def _describe(v: VarSpec, window: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{d}={s.start}:{s.stop}" for d, s in zip(v.dims, window)) + "]"


def _fill_missing(red: xr.DataArray, v: VarSpec, out_dtype: np.dtype) -> xr.DataArray:
    if v.fill_value is not None:
        return red.fillna(v.fill_value)
    return red if out_dtype.kind == "f" else red.fillna(0)


def _reference(pyramid: Pyramid, v: VarSpec, level: int, window: tuple[slice, ...]
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """(expected values, per-pixel absolute tolerance scale or None) of one output window."""
    spec = pyramid.spec
    f = spec.factors[level]
    yi, xi = v.axes(spec.y_dim, spec.x_dim)
    src_window = {
        d: (slice(s.start * f, s.stop * f) if i in (yi, xi) else s) for i, (d, s) in enumerate(zip(v.dims, window))
    }
    src = pyramid.ds[v.name].isel(src_window).transpose(*v.dims).load()
    src = src.copy(data=stored_values(v, np.asarray(src.values)))
    out_dtype = np.dtype(v.level_dtype(level))
    if level == 0:
        return src.values, None
    if v.method == "nearest":
        return src.isel({spec.y_dim: slice(0, None, f), spec.x_dim: slice(0, None, f)}).values.astype(out_dtype), None
    if v.method in LEVEL_TO_LEVEL_METHODS:
        moved = np.moveaxis(src.values, (yi, xi), (-2, -1))
        out, _ = block_reduce(np.ascontiguousarray(moved), f, v.method, v.fill_value)
        return np.moveaxis(out, (-2, -1), (yi, xi)).astype(out_dtype), None
    # mean / max / min / sum: straight xarray.coarsen of level 0, as the lazy path does.
    masked = src if v.fill_value is None else src.where(src != v.fill_value)
    windows = {spec.y_dim: f, spec.x_dim: f}
    red = getattr(masked.coarsen(windows, boundary="trim"), v.method)()
    if v.method != "sum":
        red = _fill_missing(red, v, out_dtype)
    values = red.values
    if out_dtype.kind in "iu" and values.dtype.kind == "f":
        values = np.rint(values)
    scale = None
    if v.method in ("mean", "sum") and out_dtype.kind == "f":
        # Float means/sums accumulate rounding that is relative to the magnitudes summed, not to the
        # (possibly cancelled) result: allow rtol * the same reduction of |values| as absolute slack.
        scale = np.nan_to_num(getattr(abs(masked).coarsen(windows, boundary="trim"), v.method)().values)
    return values.astype(out_dtype), scale


def _compare(got: np.ndarray, ref: np.ndarray, scale: np.ndarray | None, v: VarSpec, level: int,
             rtol: float) -> str | None:
    """None when the window matches, else a description of the difference."""
    if got.shape != ref.shape:
        return f"read shape {got.shape}, reference shape {ref.shape}"
    if got.dtype.kind == "f" or ref.dtype.kind == "f":
        if got.dtype == np.float16:  # each level is rounded to float16 (~1e-3) before the next is built
            rtol = max(rtol, 4 * float(np.finfo(np.float16).eps))
        g, r = got.astype("f8"), ref.astype("f8")
        if level == 0:
            bad = ~((g == r) | (np.isnan(g) & np.isnan(r)))
        else:
            atol = 0.0 if scale is None else rtol * scale
            bad = ~np.isclose(g, r, rtol=rtol, atol=atol, equal_nan=True)
    else:
        # Integers compare exactly, except integer "mean" at levels >= 2: those levels are built
        # from the previous, already rounded level, so they may differ from a direct rounded mean
        # of level 0 by one unit.
        if v.method == "mean" and level >= 2:
            bad = np.abs(got.astype("i8") - ref.astype("i8")) > 1  # mean keeps the (<= int64) source dtype
        else:
            bad = got != ref
    if not bad.any():
        return None
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{int(bad.sum())}/{bad.size} pixels differ, e.g. at window index {first}: "
            f"written {got[first].item()!r}, expected {ref[first].item()!r}")


def spot_check(pyramid: Pyramid, arr: zarr.Array, v: VarSpec, level: int, rng: np.random.Generator,
                samples: int, rtol: float) -> tuple[int, list[str]]:
    """(windows compared, one line per problem) for ``samples`` random windows of one level array.

    :param pyramid: the pyramid as planned (its source is the reference).
    :param arr: the written level array.
    :param v: the variable's spec.
    :param level: the level index.
    :param rng: the generator of the windows.
    :param samples: how many windows.
    :param rtol: the relative tolerance.
    """
    spec = pyramid.spec
    yi, xi = v.axes(spec.y_dim, spec.x_dim)
    f = spec.factors[level]
    checked, problems = 0, []
    for _ in range(samples):
        window = _window(rng, tuple(v.shapes[level]), yi, xi, f)
        if window is None:
            break
        where = f"level {level} {v.name!r} window {_describe(v, window)}"
        try:
            got = np.asarray(arr[window])
            ref, scale = _reference(pyramid, v, level, window)
        except Exception as err:  # noqa: BLE001 -- a window that cannot be checked is a finding, not a crash
            problems.append(f"{where}: could not be checked ({type(err).__name__}: {clip(str(err), 200)})")
            continue
        checked += 1
        diff = _compare(got, ref, scale, v, level, rtol)
        if diff is not None:
            method = "source" if level == 0 else f"{v.method} of the source, factor {f}"
            problems.append(f"{where}: written values differ from the {method}: {diff}")
    return checked, problems
