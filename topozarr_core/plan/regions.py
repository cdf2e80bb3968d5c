"""The region plan: plain, picklable data that every executor (thread pool, Prefect, Dask) runs.

A region is one shard-aligned box of one variable at one level, in that level's index space.
No two regions of a level touch the same shard, so regions can be written concurrently with no
read-modify-write races. Level 0 regions may span several shards so that they cover whole
source chunks (each source chunk is then read once).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from topozarr_core.spec.chunking import VarEncoding
from topozarr_core.spec.variables import VarSpec, find_var

Box = tuple[tuple[int, int], ...]  # (start, stop) per dim, in the variable's dim order


@dataclass(frozen=True)
class Region:
    """One unit of work: the ``box`` (per dim ``(start, stop)``, in the level's indices) of variable ``var`` at ``level``."""
    level: int
    var: str
    box: Box

    def slices(self) -> tuple[slice, ...]:
        """The box as slices, to index an array."""
        return tuple(slice(a, b) for a, b in self.box)

    def shape(self) -> tuple[int, ...]:
        """The box's shape."""
        return tuple(b - a for a, b in self.box)


@dataclass(frozen=True)
class LevelPlan:
    """The regions of one level, with its ``factor`` (cumulative from level 0) and ``step`` (from the previous level)."""
    level: int
    factor: int  # cumulative factor from level 0
    step: int  # factor relative to the previous level (1 for level 0)
    regions: tuple[Region, ...]

    @property
    def n_regions(self) -> int:
        """The number of regions of this level."""
        return len(self.regions)


@dataclass(frozen=True)
class RegionPlan:
    """Everything a worker needs to write any region, besides the source and the target."""

    x_dim: str
    y_dim: str
    factors: tuple[int, ...]
    variables: tuple[VarSpec, ...]
    levels: tuple[LevelPlan, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def var(self, name: str) -> VarSpec:
        """The spec of variable ``name``; KeyError when the plan has none.

        :param name: the variable's name.
        """
        return find_var(self.variables, name)

    def fingerprint(self) -> str:
        """Stable hash of the plan: cache keys and resume checks use it.

        Computed once per plan object: every task's cache key asks for it, and hashing a plan
        serialises all of its regions.
        """
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            blob = json.dumps(asdict(self), sort_keys=True, default=str).encode()
            cached = hashlib.sha256(blob).hexdigest()[:16]
            object.__setattr__(self, "_fingerprint", cached)  # not a field: equality and asdict ignore it
        return cached


# -- building -----------------------------------------------------------------------------------


def _grid_boxes(shape: tuple[int, ...], unit: tuple[int, ...], window: Box | None = None) -> list[Box]:
    """Boxes of ``unit`` size tiling ``shape`` from the origin (the last box along a dim is clipped),
    limited to ``window`` (boxes meeting it, cut to it) when given."""
    boxes: list[Box] = [()]
    for d, (size, u) in enumerate(zip(shape, unit)):
        lo, hi = (0, size) if window is None else (max(0, window[d][0]), min(size, window[d][1]))
        first = (lo // u) * u
        cells = [(max(s, lo), min(s + u, hi)) for s in range(first, hi, u)] if hi > lo else []
        boxes = [b + (c,) for b in boxes for c in cells]
    return boxes


def write_unit(enc: VarEncoding) -> tuple[int, ...]:
    """What one region writes at most: a shard (or a chunk when unsharded).

    :param enc: the array's encoding at that level.
    """
    return enc.shards if enc.shards is not None else enc.chunks


def level0_unit(
    spec: VarSpec, source_chunks: tuple[int, ...] | None, max_region_bytes: int, spatial: tuple[int, int]
) -> tuple[int, ...]:
    """Level-0 region size: whole shards, widened per dim to cover whole source chunks when the
    widened region stays within ``max_region_bytes``; a region of one shard of a chunked source grows
    while smaller than :data:`MIN_REGION_BYTES`.

    :param spec: the variable's spec.
    :param source_chunks: the source's chunk shape of that variable, or None (not chunked).
    :param max_region_bytes: the largest region a widening may make.
    :param spatial: the positions of the y and x dims in the variable's dims (a region grows along them only).
    """
    unit = list(write_unit(spec.encodings[0]))
    if not source_chunks:
        return tuple(unit)
    itemsize = max(1, _itemsize(spec.dtype))
    shape = spec.shapes[0]
    for i, (u, c) in enumerate(zip(list(unit), source_chunks)):
        if not c or c == u:
            continue
        lcm = math.lcm(u, c)
        candidate = list(unit)
        candidate[i] = min(lcm, max(shape[i], 1))
        if math.prod(candidate) * itemsize <= max_region_bytes:
            unit = candidate
    if tuple(unit) != write_unit(spec.encodings[0]):
        return tuple(unit)  # widened to whole source chunks: already a region of several shards
    return _grown(unit, spec.shapes[0], itemsize, max_region_bytes, spatial)


#: Level-0 regions of one shard grow while smaller than this (doubling along y and x in turn): a region
#: costs a fixed overhead (a source read, a task of the pool, a write call), so small shards (topozarr's
#: 512-px shards of 256-px chunks hold 1 MB of float32) are written several at a time.
MIN_REGION_BYTES = 16 * 2**20


def _grown(unit: list[int], shape: tuple[int, ...], itemsize: int, max_region_bytes: int,
           spatial: tuple[int, int]) -> tuple[int, ...]:
    """``unit`` doubled along the ``spatial`` axes in turn while it is smaller than :data:`MIN_REGION_BYTES`,
    the doubled one within ``max_region_bytes``, and the axis not yet the whole array (doubling keeps it a
    whole number of the shards and source chunks it covers, and lined up with the coarser levels' shards
    of the usual power-of-two layouts)."""
    unit = list(unit)
    grown = True
    while grown:
        grown = False
        for i in spatial:
            nbytes = math.prod(unit) * itemsize
            if nbytes < MIN_REGION_BYTES and unit[i] < shape[i] and 2 * nbytes <= max_region_bytes:
                unit[i] *= 2
                grown = True
    return tuple(unit)


def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def level_regions(spec: VarSpec, level: int, source_chunks: tuple[int, ...] | None, max_region_bytes: int,
                  window: Box | None = None, *, spatial: tuple[int, int]) -> list[Region]:
    """The regions of one variable at one level, in plan order, optionally only inside ``window``
    (in that level's index space; a window aligned to the level's shards keeps every region whole).

    :param spec: the variable's spec.
    :param level: the level index.
    :param source_chunks: the source's chunk shape of that variable (widens level-0 regions), or None.
    :param max_region_bytes: the largest level-0 region a widening may make.
    :param window: a box in the level's indices, or None (the whole array).
    :param spatial: the positions of the y and x dims in the variable's dims.
    """
    if level == 0:
        unit = level0_unit(spec, source_chunks, max_region_bytes, spatial)
    else:  # whole shards, several at a time while small (as level 0's): a region's cost is mostly fixed
        itemsize = max(1, _itemsize(spec.level_dtype(level)))
        unit = _grown(list(write_unit(spec.encodings[level])), spec.shapes[level], itemsize, max_region_bytes,
                      spatial)
    return [Region(level, spec.name, box) for box in _grid_boxes(spec.shapes[level], unit, window)]


def build_region_plan(
    *,
    x_dim: str,
    y_dim: str,
    factors: list[int],
    variables: list[VarSpec],
    source_chunks: dict[str, tuple[int, ...] | None],
    max_region_bytes: int,
    levels: list[int] | None = None,
    windows: dict[tuple[int, str], list[Box]] | None = None,
    extra: dict[str, Any] | None = None,
) -> RegionPlan:
    """Shard-aligned regions for every variable at every requested level (all of a level, or, with
    ``windows``, only those inside the windows given for its ``(level, variable)``; windows aligned
    to the level's shards, as tiles' are, keep every region whole and never split one).

    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    :param factors: each level's factor relative to level 0.
    :param variables: the gridded variables' specs.
    :param source_chunks: per variable, the source's chunk shape (or None).
    :param max_region_bytes: the largest level-0 region a widening to whole source chunks may make.
    :param levels: the levels to plan (default all).
    :param windows: per ``(level, variable)``, the boxes to cover; None: everything.
    :param extra: free-form data the plan carries for the executor (``handoff``, ``restricted``).
    """
    wanted = list(range(len(factors))) if levels is None else sorted(levels)
    level_plans = []
    for lvl in wanted:
        regions: list[Region] = []
        for spec in variables:
            spatial = spec.axes(y_dim, x_dim)
            if windows is None:
                regions.extend(level_regions(spec, lvl, source_chunks.get(spec.name), max_region_bytes,
                                             spatial=spatial))
                continue
            for window in windows.get((lvl, spec.name), ()):
                regions.extend(level_regions(spec, lvl, source_chunks.get(spec.name), max_region_bytes, window,
                                             spatial=spatial))
        step = factors[lvl] // factors[lvl - 1] if lvl > 0 else 1
        if regions:
            level_plans.append(LevelPlan(lvl, factors[lvl], step, tuple(regions)))
    return RegionPlan(
        x_dim=x_dim,
        y_dim=y_dim,
        factors=tuple(factors),
        variables=tuple(variables),
        levels=tuple(level_plans),
        extra=dict(extra or {}),
    )


def restrict_plan(
    plan: RegionPlan,
    dim: str,
    start: int,
    stop: int | None = None,
    whole: frozenset[tuple[int, str]] | set[tuple[int, str]] = frozenset(),
    clip: bool = True,
) -> RegionPlan:
    """The part of ``plan`` to rewrite when entries ``start:stop`` along ``dim`` change.

    Keeps the regions of variables having ``dim`` whose box along ``dim`` meets ``[start, stop)``,
    and every region of the ``(level, variable)`` pairs in ``whole``. With ``clip`` (default) the
    kept boxes are cut to ``[start, stop)`` along ``dim``: a region then writes part of its shards,
    which zarr does as read-modify-write of each shard (old inner chunks kept as encoded bytes).
    That stays race-free because regions still never share a shard: each clipped box lies inside
    its original box, and original boxes cover disjoint sets of whole shards. Without ``clip`` the
    whole shards are recomputed. Levels without regions are dropped.
    """
    stop = math.inf if stop is None else stop
    level_plans = []
    for lp in plan.levels:
        regions: list[Region] = []
        for region in lp.regions:
            spec = plan.var(region.var)
            if (lp.level, region.var) in whole:
                regions.append(region)
            elif dim in spec.dims:
                i = spec.dims.index(dim)
                a, b = region.box[i]
                if b > start and a < stop:
                    if clip:
                        box = list(region.box)
                        box[i] = (max(a, int(start)), int(min(b, stop)))
                        region = Region(region.level, region.var, tuple(box))
                    regions.append(region)
        if regions:
            level_plans.append(LevelPlan(lp.level, lp.factor, lp.step, tuple(regions)))
    return RegionPlan(
        x_dim=plan.x_dim,
        y_dim=plan.y_dim,
        factors=plan.factors,
        variables=plan.variables,
        levels=tuple(level_plans),
        extra={**plan.extra, "restricted": {"dim": dim, "start": int(start),
                                            "stop": None if stop == math.inf else int(stop),
                                            "whole": sorted([lvl, var] for lvl, var in whole),
                                            "clip": clip}},
    )
