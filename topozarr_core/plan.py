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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .chunking import VarEncoding
from .packing import Packing

Box = tuple[tuple[int, int], ...]  # (start, stop) per dim, in the variable's dim order


@dataclass(frozen=True)
class VarSpec:
    """A gridded variable (data or coordinate) written region by region."""

    name: str
    dims: tuple[str, ...]
    dtype: str  # source dtype
    out_dtype: str  # written dtype (sum of ints widens)
    method: str
    fill_value: float | int | None  # missing marker besides NaN; None = NaN only (or none for ints)
    shapes: tuple[tuple[int, ...], ...]  # per level
    encodings: tuple[VarEncoding, ...]  # per level
    track_missing: bool  # mean over data that can be missing: keep per-pixel missing counts
    is_coord: bool = False
    #: CF packing kept from the source (``dtype`` is then the packed integer dtype; see packing)
    packing: Packing | None = None

    def level_dtype(self, level: int) -> str:
        """Level 0 keeps the source dtype; coarser levels use the method's output dtype."""
        return self.dtype if level == 0 else self.out_dtype

    def axes(self, y_dim: str, x_dim: str) -> tuple[int, int]:
        return self.dims.index(y_dim), self.dims.index(x_dim)


@dataclass(frozen=True)
class Region:
    level: int
    var: str
    box: Box

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.box)

    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.box)


@dataclass(frozen=True)
class RegionBatch:
    level: int
    index: int
    regions: tuple[Region, ...]

    @property
    def key(self) -> str:
        return f"L{self.level}-B{self.index:05d}"


@dataclass(frozen=True)
class LevelPlan:
    level: int
    factor: int  # cumulative factor from level 0
    step: int  # factor relative to the previous level (1 for level 0)
    batches: tuple[RegionBatch, ...]

    @property
    def n_regions(self) -> int:
        return sum(len(b.regions) for b in self.batches)


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
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(name)

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


def _shard_grid(shape: tuple[int, ...], unit: tuple[int, ...]) -> list[Box]:
    """Boxes of ``unit`` size tiling ``shape`` (the last box along a dim is clipped)."""
    boxes: list[Box] = [()]
    for size, u in zip(shape, unit):
        starts = range(0, size, u) if size > 0 else []
        boxes = [b + ((s, min(s + u, size)),) for b in boxes for s in starts]
    return boxes


def _write_unit(enc: VarEncoding) -> tuple[int, ...]:
    return enc.shards if enc.shards is not None else enc.chunks


def level0_unit(
    spec: VarSpec, source_chunks: tuple[int, ...] | None, max_region_bytes: int
) -> tuple[int, ...]:
    """Level-0 region size: whole shards, widened per dim to cover whole source chunks when the
    widened region stays within ``max_region_bytes``."""
    unit = list(_write_unit(spec.encodings[0]))
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
    return tuple(unit)


def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def auto_regions_per_batch(n_regions: int, target_batches: int, region_bytes: int = 0, min_batch_bytes: int = 0) -> int:
    """Regions per batch for about ``target_batches`` batches, but at least ``min_batch_bytes`` of output per
    batch: a batch run as a task has a fixed cost (state changes, a concurrency slot), which must stay
    small against its work."""
    per = max(1, math.ceil(n_regions / max(1, target_batches)))
    if min_batch_bytes > 0 and region_bytes > 0:
        per = max(per, min(n_regions, math.ceil(min_batch_bytes / region_bytes)))
    return per


def mean_region_bytes(regions: list[Region], variables: list[VarSpec]) -> int:
    """Average output bytes of ``regions`` (what one region writes, before compression)."""
    if not regions:
        return 0
    by_name = {v.name: v for v in variables}
    total = sum(math.prod(r.shape()) * _itemsize(by_name[r.var].level_dtype(r.level)) for r in regions)
    return total // len(regions)


def build_region_plan(
    *,
    x_dim: str,
    y_dim: str,
    factors: list[int],
    variables: list[VarSpec],
    source_chunks: dict[str, tuple[int, ...] | None],
    max_region_bytes: int,
    levels: list[int] | None = None,
    regions_per_batch: int | None = None,
    target_batches_per_level: int = 32,
    min_batch_bytes: int = 0,
) -> RegionPlan:
    """Shard-aligned regions for every variable at every requested level, grouped in batches (of
    ``regions_per_batch`` regions, or sized by ``target_batches_per_level`` and ``min_batch_bytes``)."""
    wanted = list(range(len(factors))) if levels is None else sorted(levels)
    level_plans = []
    for lvl in wanted:
        regions: list[Region] = []
        for spec in variables:
            unit = (
                level0_unit(spec, source_chunks.get(spec.name), max_region_bytes)
                if lvl == 0
                else _write_unit(spec.encodings[lvl])
            )
            regions.extend(Region(lvl, spec.name, box) for box in _shard_grid(spec.shapes[lvl], unit))
        per = regions_per_batch or auto_regions_per_batch(len(regions), target_batches_per_level,
                                                          mean_region_bytes(regions, variables), min_batch_bytes)
        batches = tuple(
            RegionBatch(lvl, i, tuple(regions[s : s + per]))
            for i, s in enumerate(range(0, len(regions), per))
        )
        step = factors[lvl] // factors[lvl - 1] if lvl > 0 else 1
        level_plans.append(LevelPlan(lvl, factors[lvl], step, batches))
    return RegionPlan(
        x_dim=x_dim,
        y_dim=y_dim,
        factors=tuple(factors),
        variables=tuple(variables),
        levels=tuple(level_plans),
    )


def cap_batches(plan: RegionPlan, max_batches: int) -> RegionPlan:
    """``plan`` with its regions regrouped so it has at most ``max_batches`` batches in all (at least one
    per level): each level gets a share of the budget proportional to its regions. Regions and their
    order are unchanged, so any executor writes exactly the same chunks."""
    total = sum(len(lp.batches) for lp in plan.levels)
    if total <= max_batches:
        return plan
    n_regions = [lp.n_regions for lp in plan.levels]
    spare = max(0, max_batches - len(plan.levels))
    shares = [1 + spare * n // max(1, sum(n_regions)) for n in n_regions]
    levels = []
    for lp, share in zip(plan.levels, shares):
        regions = [r for b in lp.batches for r in b.regions]
        per = auto_regions_per_batch(len(regions), share)
        batches = tuple(RegionBatch(lp.level, i, tuple(regions[s: s + per]))
                        for i, s in enumerate(range(0, len(regions), per)))
        levels.append(replace(lp, batches=batches))
    return replace(plan, levels=tuple(levels))


def restrict_plan(
    plan: RegionPlan,
    dim: str,
    start: int,
    stop: int | None = None,
    whole: frozenset[tuple[int, str]] | set[tuple[int, str]] = frozenset(),
    regions_per_batch: int | None = None,
    target_batches_per_level: int = 32,
    clip: bool = True,
    min_batch_bytes: int = 0,
) -> RegionPlan:
    """The part of ``plan`` to rewrite when entries ``start:stop`` along ``dim`` change.

    Keeps the regions of variables having ``dim`` whose box along ``dim`` meets ``[start, stop)``,
    and every region of the ``(level, variable)`` pairs in ``whole``. With ``clip`` (default) the
    kept boxes are cut to ``[start, stop)`` along ``dim``: a region then writes part of its shards,
    which zarr does as read-modify-write of each shard (old inner chunks kept as encoded bytes).
    That stays race-free because regions still never share a shard: each clipped box lies inside
    its original box, and original boxes cover disjoint sets of whole shards. Without ``clip`` the
    whole shards are recomputed. Regions are regrouped in batches; levels without regions are dropped.
    """
    stop = math.inf if stop is None else stop
    level_plans = []
    for lp in plan.levels:
        regions: list[Region] = []
        for batch in lp.batches:
            for region in batch.regions:
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
        if not regions:
            continue
        per = regions_per_batch or auto_regions_per_batch(len(regions), target_batches_per_level,
                                                          mean_region_bytes(regions, list(plan.variables)),
                                                          min_batch_bytes)
        batches = tuple(
            RegionBatch(lp.level, i, tuple(regions[s : s + per]))
            for i, s in enumerate(range(0, len(regions), per))
        )
        level_plans.append(LevelPlan(lp.level, lp.factor, lp.step, batches))
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
