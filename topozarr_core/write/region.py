"""Write one region: the only region logic in the project.

Every executor runs tiles (:mod:`topozarr_core.plan.tiles`), and a tile runs its regions through
:func:`topozarr_core.write.executor.run_plan`, which calls :func:`write_region` for each: the thread pool of
``Pyramid.write``, the Prefect tile tasks and Dask workers differ only in how they obtain the
source and the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
import zarr

from topozarr_core.kernels.reduce import block_reduce, output_dtype
from topozarr_core.layout.paths import data_path, missing_path
from topozarr_core.plan.regions import Region, RegionPlan
from topozarr_core.spec.packing import stored_values
from topozarr_core.spec.variables import VarSpec
from topozarr_core.write.level_cache import LevelCache
from topozarr_core.write.missing_counts import previous_counts, store_counts


@dataclass
class WriteContext:
    """Runtime handles for writing regions; built once per process (or per task)."""

    plan: RegionPlan
    source: xr.Dataset | None  # needed for level 0 only
    store: Any  # anything zarr can open
    cache: LevelCache | None = None
    open_array: Any = None  # callable(store, path, mode) -> zarr.Array; lets io="rust" scope its pipeline
    timer: Any = None  # a stats.RegionTimer when the caller asked for per-level timings
    _arrays: dict[tuple[str, str], zarr.Array] = field(default_factory=dict)

    def array(self, path: str, mode: str = "r+") -> zarr.Array:
        """The target's array at ``path``, opened once per mode and kept.

        :param path: the array's path.
        :param mode: the zarr open mode.
        """
        key = (path, mode)
        arr = self._arrays.get(key)
        if arr is None:
            opener = self.open_array or _open_array
            arr = self._arrays[key] = opener(self.store, path, mode)
        return arr


def _open_array(store: Any, path: str, mode: str) -> zarr.Array:
    return zarr.open_array(store=store, path=path, mode=mode, zarr_format=3)


def _to_spatial_last(a: np.ndarray, yi: int, xi: int) -> np.ndarray:
    return np.moveaxis(a, (yi, xi), (-2, -1))


def _from_spatial_last(a: np.ndarray, yi: int, xi: int) -> np.ndarray:
    return np.moveaxis(a, (-2, -1), (yi, xi))


def _read_source(ctx: WriteContext, spec: VarSpec, region: Region) -> np.ndarray:
    if ctx.source is None:
        raise RuntimeError("level 0 regions need the source dataset")
    da = ctx.source[spec.name]
    window = da.isel({d: s for d, s in zip(spec.dims, region.slices())}).transpose(*spec.dims)
    # a dask-backed source computes in this thread: the executor's threads are the parallelism (the
    # scheduler is chosen per call, not in dask's process-wide config, which concurrent tiles share)
    return stored_values(spec, np.asarray(window.compute(scheduler="synchronous").values))


def _prev_box(plan: RegionPlan, spec: VarSpec, region: Region, step: int) -> tuple[slice, ...]:
    yi, xi = spec.axes(plan.y_dim, plan.x_dim)
    return tuple(
        slice(a * step, b * step) if i in (yi, xi) else slice(a, b) for i, (a, b) in enumerate(region.box)
    )


def reduce_values(spec: VarSpec, axes: tuple[int, int], data: np.ndarray, missing: np.ndarray | None,
                  step: int, prev_factor: int,
                  into: tuple[np.ndarray, np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One level's values from a window of the level before: reduced by ``step`` along the spatial axes
    (``axes``: their positions, y then x), in the variable's own axis order. What every level of every
    write path is computed with (regions here, the lazy levels of ``Pyramid.as_datatree``), so they agree
    bit for bit.

    :param spec: the variable.
    :param data: the previous level's values (level 0: the stored source values).
    :param missing: per pixel of ``data``, the level-0 pixels behind it that are missing (None at level 0).
    :param step: the factor from the previous level to this one.
    :param prev_factor: the previous level's cumulative factor (level-0 pixels per pixel along each axis).
    :param into: (data, missing) views to write the result into (a level cache's window), so the
        reduction needs no temporaries (only when :func:`_writes_into` says so).
    :returns: the values and, for variables that keep them, their missing counts.
    """
    yi, xi = axes
    out = out_missing = None
    if into is not None:
        out = _to_spatial_last(into[0], yi, xi)
        out_missing = None if into[1] is None else _to_spatial_last(into[1], yi, xi)
    out, out_missing = block_reduce(
        _to_spatial_last(data, yi, xi),
        step,
        spec.method,
        # a coarse sum marks no pixel missing (an empty window sums to 0): a sum that happens to equal
        # the fill value is data
        spec.fill_value if spec.method != "sum" or prev_factor == 1 else None,
        missing=None if missing is None else _to_spatial_last(missing, yi, xi),
        weight=prev_factor * prev_factor,
        out=out,
        out_missing=out_missing,
    )
    out = _from_spatial_last(out, yi, xi).astype(spec.out_dtype, copy=False)
    if out_missing is not None:
        out_missing = _from_spatial_last(out_missing, yi, xi)
    return out, (out_missing if spec.track_missing else None)


def _writes_into(spec: VarSpec, data: np.ndarray, into: tuple[np.ndarray, np.ndarray | None]) -> bool:
    """Whether :func:`reduce_values` can write straight into ``into``: it has the kernel's output dtype
    and a place for the missing counts when they are kept."""
    return np.dtype(spec.out_dtype) == output_dtype(spec.method, data.dtype) and (
        into[1] is not None or not spec.track_missing
    )


def _reduce_to_cache(ctx: WriteContext, spec: VarSpec, level: int, slices: tuple[slice, ...],
                     data: np.ndarray, missing: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Reduce level ``level - 1`` values into level ``level``, kept in the cache when it is kept."""
    plan, cache = ctx.plan, ctx.cache
    step = plan.factors[level] // plan.factors[level - 1]
    views = cache.views(level, spec.name, slices) if cache is not None else None
    direct = views is not None and _writes_into(spec, data, views)
    out, out_missing = reduce_values(spec, spec.axes(plan.y_dim, plan.x_dim), data, missing, step,
                                     plan.factors[level - 1], into=views if direct else None)
    if cache is not None and not direct:
        cache.put(level, spec.name, slices, out, out_missing)  # no-op for a level not kept
    return out, out_missing


def _compute(ctx: WriteContext, spec: VarSpec, region: Region) -> tuple[np.ndarray, np.ndarray | None]:
    """The values (and missing counts) of one region."""
    plan, lvl = ctx.plan, region.level
    t0 = time.perf_counter()
    if lvl == 0:
        values = _read_source(ctx, spec, region)
        _timed(ctx, lvl, read_s=time.perf_counter() - t0)
        return values, None
    cache = ctx.cache
    if cache is not None and lvl in cache.precomputed:
        kept = cache.get(lvl, spec.name, region.slices())
        _timed(ctx, lvl, read_s=time.perf_counter() - t0)
        return kept
    step = plan.factors[lvl] // plan.factors[lvl - 1]
    prev = _prev_box(plan, spec, region, step)
    if cache is not None and cache.has(lvl - 1, spec.name):
        data, missing = cache.get(lvl - 1, spec.name, prev)
    else:
        data = ctx.array(data_path(lvl - 1, spec.name), "r")[prev]
        missing = None
        if spec.track_missing and lvl - 1 >= 1:
            missing = previous_counts(ctx.array, plan, spec, lvl - 1, prev)
    data = np.asarray(data)
    t1 = time.perf_counter()
    reduced = _reduce_to_cache(ctx, spec, lvl, region.slices(), data, missing)
    _timed(ctx, lvl, read_s=t1 - t0, reduce_s=time.perf_counter() - t1)
    return reduced


def _timed(ctx: WriteContext, level: int, **seconds: float) -> None:
    if ctx.timer is not None:
        ctx.timer.add(level, **seconds)


def _coarser_window(plan: RegionPlan, spec: VarSpec, box: tuple[tuple[int, int], ...], shape: tuple[int, ...],
                    step: int) -> tuple[slice, ...]:
    """The next level's window fed by an aligned window ``box`` (of values shaped ``shape``)."""
    yi, xi = spec.axes(plan.y_dim, plan.x_dim)
    return tuple(
        slice(a // step, a // step + shape[i] // step) if i in (yi, xi) else slice(a, b)
        for i, (a, b) in enumerate(box)
    )


def write_region(ctx: WriteContext, region: Region) -> int:
    """Compute, write and (when cached) pre-reduce one region. Returns bytes written.

    :param ctx: the write's handles.
    :param region: the region.
    """
    spec = ctx.plan.var(region.var)
    out, out_missing = _compute(ctx, spec, region)
    nbytes = int(out.nbytes)
    slices = region.slices()
    t0 = time.perf_counter()
    ctx.array(data_path(region.level, spec.name))[slices] = out
    if out_missing is not None and store_counts(ctx.plan, ctx.cache, region.level, spec.name):
        ctx.array(missing_path(region.level, spec.name))[slices] = out_missing
    t1 = time.perf_counter()
    if ctx.cache is not None:
        # reduce this region on down into every level it precomputes (see LevelCache.chain)
        data, missing, box = out, out_missing, region.box
        for nxt in ctx.cache.chain(region.level):
            step = ctx.plan.factors[nxt] // ctx.plan.factors[nxt - 1]
            window = _coarser_window(ctx.plan, spec, box, data.shape, step)
            data, missing = _reduce_to_cache(ctx, spec, nxt, window, data, missing)
            box = tuple((s.start, s.stop) for s in window)
        if ctx.cache.is_block(region.level, spec.name):
            ctx.cache.recycle(out, out_missing)  # written and reduced: the buffers serve the next block
    if ctx.timer is not None:  # the reductions ahead into cached levels count at this level, as in topozarr
        ctx.timer.add(region.level, regions=1, nbytes=nbytes, write_s=t1 - t0, reduce_s=time.perf_counter() - t1)
    return nbytes
