"""Spot checks of a written level's values against a reference computed straight from the source.

A few tiny random windows of a level are read back and compared with ``xarray.coarsen`` of level 0
(``nearest``: a strided pick; ``mode``/``majority``: the level-to-level kernel at level 1), an
independent reference: not the kernels and level-to-level chain that wrote them. Used by
:mod:`topozarr_core.validate.pyramid`; pure library, no Prefect.

The windows of a level depend on the seed, the level and the plan only (:func:`level_windows`), and
their references on the source only, so :class:`SpotReferences` can compute the references while the
pyramid is still being written: a check after the write then only reads the windows back. Why: the
references are most of a check's time (0.27 of 0.38 s for the 7 levels of a 1 GB build), and a
flow's checks ran after its last tile, on the run's critical path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
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


def checked_variables(pyramid: Pyramid, level: int) -> list[VarSpec]:
    """The variables whose values are spot-checked at ``level`` (not coordinates; ``mode``/``majority``
    only at level 1, their levels above are built from the previous level by design).

    :param pyramid: the pyramid as planned.
    :param level: the level index.
    """
    return [v for v in pyramid.spec.variables
            if not v.is_coord and not (v.method in LEVEL_TO_LEVEL_METHODS and level >= 2)]


def level_windows(pyramid: Pyramid, level: int, samples: int, seed: int) -> dict[str, list[tuple[slice, ...]]]:
    """The spot-check windows of ``level``: up to ``samples`` per checked variable, by variable name.
    A function of the seed, the level and the plan only (not of what was written).

    :param pyramid: the pyramid as planned.
    :param level: the level index.
    :param samples: windows per variable.
    :param seed: the seed of the windows' generator.
    """
    spec = pyramid.spec
    rng = np.random.default_rng([seed, level])
    out: dict[str, list[tuple[slice, ...]]] = {}
    for v in checked_variables(pyramid, level):
        yi, xi = v.axes(spec.y_dim, spec.x_dim)
        windows = out.setdefault(v.name, [])
        for _ in range(samples):
            window = _window(rng, tuple(v.shapes[level]), yi, xi, spec.factors[level])
            if window is None:
                break
            windows.append(window)
    return out


def _key(name: str, level: int, window: tuple[slice, ...]) -> tuple:
    return name, level, tuple((s.start, s.stop) for s in window)


class SpotReferences:
    """The reference values of spot-check windows, computed ahead from the source (thread-safe).

    A window whose reference is not here is computed when checked, as without this cache; a
    reference that could not be computed is not kept (the check computes it again and reports why).
    Valid for one source as planned: a flow keeps one per run attempt.
    """

    def __init__(self) -> None:
        self._values: dict[tuple, tuple[np.ndarray, np.ndarray | None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def prepare(self, pyramid: Pyramid, samples_per_level: int = 4, seed: int = 0,
                levels: Iterable[int] | None = None) -> int:
        """Compute the references of the windows :func:`level_windows` gives (reads the source only).

        :param pyramid: the pyramid as planned.
        :param samples_per_level: windows per level and variable, as the checks will use.
        :param seed: the seed, as the checks will use.
        :param levels: the levels (default: all).
        :returns: how many references are held now.
        """
        by_name = {v.name: v for v in pyramid.spec.variables}
        for level in range(pyramid.levels) if levels is None else levels:
            for name, windows in level_windows(pyramid, level, samples_per_level, seed).items():
                for window in windows:
                    key = _key(name, level, window)
                    if key in self._values:
                        continue
                    try:
                        value = _reference(pyramid, by_name[name], level, window)
                    except Exception:  # noqa: BLE001 -- computed again by the check, which reports it
                        continue
                    with self._lock:
                        self._values[key] = value
        return len(self)

    def reference(self, pyramid: Pyramid, v: VarSpec, level: int, window: tuple[slice, ...]
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """The reference of one window: the one prepared, else computed now.

        :param pyramid: the pyramid as planned (its source is the reference).
        :param v: the variable's spec.
        :param level: the level index.
        :param window: the window (:func:`level_windows`).
        """
        with self._lock:
            found = self._values.get(_key(v.name, level, window))
        return found if found is not None else _reference(pyramid, v, level, window)


def spot_check(pyramid: Pyramid, arr: zarr.Array, v: VarSpec, level: int, windows: list[tuple[slice, ...]],
               rtol: float, references: SpotReferences | None = None) -> tuple[int, list[str]]:
    """(windows compared, one line per problem) for some windows of one level array.

    :param pyramid: the pyramid as planned (its source is the reference).
    :param arr: the written level array.
    :param v: the variable's spec.
    :param level: the level index.
    :param windows: the windows (:func:`level_windows`).
    :param rtol: the relative tolerance.
    :param references: references computed ahead (else each is computed here).
    """
    f = pyramid.spec.factors[level]
    checked, problems = 0, []
    for window in windows:
        where = f"level {level} {v.name!r} window {_describe(v, window)}"
        try:
            got = np.asarray(arr[window])
            ref, scale = (references.reference(pyramid, v, level, window) if references is not None
                          else _reference(pyramid, v, level, window))
        except Exception as err:  # noqa: BLE001 -- a window that cannot be checked is a finding, not a crash
            problems.append(f"{where}: could not be checked ({type(err).__name__}: {clip(str(err), 200)})")
            continue
        checked += 1
        diff = _compare(got, ref, scale, v, level, rtol)
        if diff is not None:
            method = "source" if level == 0 else f"{v.method} of the source, factor {f}"
            problems.append(f"{where}: written values differ from the {method}: {diff}")
    return checked, problems
