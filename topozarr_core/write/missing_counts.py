"""Where a level's per-pixel missing counts come from when the next level is reduced from the store.

The counts (how many level-0 pixels behind each pixel are missing) make means of means exact.
They are scratch data of one write (``paths.MISSING_GROUP``, deleted when the pyramid is
published), so a write trusts stored counts only for the regions its own plan writes; anywhere
else (a ``mode="a"`` rewrite of coarse levels only, an update relaying out a level over old
entries) they are recomputed from level 0, which is what they count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from topozarr_core.kernels.reduce import block_reduce, missing_mask
from topozarr_core.layout.paths import data_path, keeps_scratch_counts, missing_dtype, missing_path
from topozarr_core.plan.regions import RegionPlan
from topozarr_core.spec.variables import VarSpec

OpenArray = Callable[[str, str], Any]  # (path, mode) -> zarr.Array


def counts_written_here(plan: RegionPlan, level: int, var: str, slices: tuple[slice, ...]) -> bool:
    """Whether this write stores the scratch counts of ``level`` over ``slices``: its own regions of
    that level, or the tiles of an earlier stage (``plan.extra["handoff"]``, see :mod:`topozarr_core.plan.tiles`).

    :param plan: the region plan.
    :param level: the level index.
    :param var: the variable's name.
    :param slices: the window, in the level's indices.
    """
    if not keeps_scratch_counts(len(plan.factors), level):
        return False
    if level not in {lp.level for lp in plan.levels} and level not in plan.extra.get("handoff", ()):
        return False
    restricted = plan.extra.get("restricted")
    if restricted is None:
        return True
    if [level, var] in [list(p) for p in restricted["whole"]]:
        return True
    spec = plan.var(var)
    if restricted["dim"] not in spec.dims:
        return False
    s = slices[spec.dims.index(restricted["dim"])]
    stop = restricted["stop"]
    return s.start >= restricted["start"] and (stop is None or s.stop <= stop)


def counts_from_level0(open_array: OpenArray, plan: RegionPlan, spec: VarSpec, level: int,
                       slices: tuple[slice, ...]) -> np.ndarray:
    """The missing counts of a window of ``level``: missing level-0 pixels per window of its factor.

    :param open_array: opens the target's arrays.
    :param plan: the region plan.
    :param spec: the variable's spec.
    :param level: the level index.
    :param slices: the window, in the level's indices.
    """
    f = plan.factors[level]
    yi, xi = spec.axes(plan.y_dim, plan.x_dim)
    window = tuple(slice(s.start * f, s.stop * f) if i in (yi, xi) else s for i, s in enumerate(slices))
    values = np.asarray(open_array(data_path(0, spec.name), "r")[window])
    mask = np.moveaxis(missing_mask(values, spec.fill_value).astype(np.uint8), (yi, xi), (-2, -1))
    counts, _ = block_reduce(mask, f, "sum", None)
    return np.moveaxis(counts, (-2, -1), (yi, xi)).astype(missing_dtype(f))


def previous_counts(open_array: OpenArray, plan: RegionPlan, spec: VarSpec, level: int,
                    slices: tuple[slice, ...]) -> np.ndarray:
    """Counts of a window of ``level`` (>= 1) for reducing the next level from the store.

    :param open_array: opens the target's arrays.
    :param plan: the region plan.
    :param spec: the variable's spec.
    :param level: the level index.
    :param slices: the window, in the level's indices.
    """
    if counts_written_here(plan, level, spec.name, slices):
        return np.asarray(open_array(missing_path(level, spec.name), "r")[slices])
    return counts_from_level0(open_array, plan, spec, level, slices)


def store_counts(plan: RegionPlan, cache: Any, level: int, var: str) -> bool:
    """Whether a written region's counts must go to the store: a later stage reads ``level`` back
    (``plan.extra["handoff"]``), or a next level of this plan reads it from the store (not from the
    in-memory cache).

    :param plan: the region plan.
    :param cache: the write's level cache, or None.
    :param level: the level index.
    :param var: the variable's name.
    """
    if not keeps_scratch_counts(len(plan.factors), level):
        return False
    if level in plan.extra.get("handoff", ()):
        return True
    if level + 1 not in {lp.level for lp in plan.levels}:
        return False
    if cache is None:
        return True
    return not (level + 1 in cache.precomputed or cache.has(level, var))


__all__ = ["counts_written_here", "counts_from_level0", "previous_counts", "store_counts"]
