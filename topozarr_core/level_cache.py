"""In-memory copies of levels >= 1, so a level is computed from RAM instead of re-read from the store.

When every region of level L-1 starts on a multiple of the step to level L, each L-1 region also
reduces its own output into level L here ("precomputed"); level L's regions then only encode
and write. Level 0 is never kept: it is read once from the source.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .paths import missing_dtype
from .plan import RegionPlan, VarSpec


def _missing_fill(spec: VarSpec) -> float | int:
    if spec.fill_value is not None:
        return spec.fill_value
    return np.nan if np.dtype(spec.out_dtype).kind == "f" else 0


@dataclass
class LevelCache:
    plan: RegionPlan
    data: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    missing: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    precomputed: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_plan(cls, plan: RegionPlan) -> "LevelCache":
        cache = cls(plan)
        planned = {lp.level: lp for lp in plan.levels}
        for lvl in planned:
            if lvl == 0:
                continue
            if lvl - 1 in planned and _aligned(plan, planned[lvl - 1], planned[lvl].step):
                cache.precomputed.add(lvl)
            for spec in plan.variables:
                shape = spec.shapes[lvl]
                cache.data[(lvl, spec.name)] = np.full(shape, _missing_fill(spec), dtype=spec.out_dtype)
                if spec.track_missing:
                    cache.missing[(lvl, spec.name)] = np.zeros(shape, dtype=missing_dtype(plan.factors[lvl]))
        return cache

    def has(self, level: int, var: str) -> bool:
        return (level, var) in self.data

    def get(self, level: int, var: str, slices: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        miss = self.missing.get((level, var))
        return self.data[(level, var)][slices], (None if miss is None else miss[slices])

    def put(self, level: int, var: str, slices: tuple[slice, ...], values: np.ndarray,
            missing: np.ndarray | None) -> None:
        if (level, var) not in self.data:
            return
        self.data[(level, var)][slices] = values  # disjoint windows: no lock needed
        if missing is not None and (level, var) in self.missing:
            self.missing[(level, var)][slices] = missing

    def release(self, level: int) -> None:
        """Drop a level once the next one no longer needs it."""
        with self._lock:
            for key in [k for k in self.data if k[0] == level]:
                self.data.pop(key, None)
                self.missing.pop(key, None)

    @staticmethod
    def nbytes_needed(plan: RegionPlan) -> int:
        total = 0
        for spec in plan.variables:
            for lvl in range(1, len(plan.factors)):
                n = int(np.prod(spec.shapes[lvl]))
                miss = np.dtype(missing_dtype(plan.factors[lvl])).itemsize if spec.track_missing else 0
                total += n * (np.dtype(spec.out_dtype).itemsize + miss)
        return total


def _aligned(plan: RegionPlan, prev, step: int) -> bool:
    for batch in prev.batches:
        for region in batch.regions:
            spec = plan.var(region.var)
            yi, xi = spec.axes(plan.y_dim, plan.x_dim)
            if region.box[yi][0] % step or region.box[xi][0] % step:
                return False
    return True
