"""The in-memory levels of an update: a :class:`~topozarr_core.write.level_cache.LevelCache` limited to
the update's window along the append dimension.

Used by :meth:`topozarr_core.update.pyramid_update.PyramidUpdate.write` (the local executor) so that levels >= 1
are reduced from level L-1's new entries in RAM instead of being read back from the store.
"""

from __future__ import annotations

import numpy as np

from topozarr_core.layout.paths import missing_dtype
from topozarr_core.plan.regions import RegionPlan
from topozarr_core.write.level_cache import LevelCache, aligned, missing_fill


class WindowCache(LevelCache):
    """A :class:`LevelCache` holding only the update's window ``[start, stop)`` along the append dim.

    As in a build that keeps levels in memory, each region of level L-1 reduces its own output into
    level L here ("precomputed"), so level L only encodes and writes instead of reading level L-1
    back. Used for the levels whose regions all lie in the window (not those being relaid out,
    which read the store). ``has`` is always False: levels that are not precomputed read the store.
    """

    dim: str = ""
    start: int = 0

    @classmethod
    def for_update(cls, plan: RegionPlan, dim: str, start: int, stop: int,
                   whole: set[tuple[int, str]]) -> WindowCache | None:
        """The cache of an update's region plan, or None when no level can be reduced in memory.

        :param plan: the update's region plan.
        :param dim: the append dim.
        :param start: the window's start along ``dim``.
        :param stop: the window's stop along ``dim``.
        :param whole: the ``(level, variable)`` arrays rewritten whole (read from the store instead).
        """
        cache = cls(plan)
        cache.dim, cache.start = dim, int(start)
        cache.precomputed.update(cls.kept_levels(plan, dim, whole))
        for lvl in sorted(cache.precomputed):
            for spec in plan.variables:
                if dim not in spec.dims:
                    continue
                shape = list(spec.shapes[lvl])
                shape[spec.dims.index(dim)] = stop - start
                cache.data[(lvl, spec.name)] = np.full(shape, missing_fill(spec), dtype=spec.out_dtype)
                if spec.track_missing:
                    cache.missing[(lvl, spec.name)] = np.zeros(shape, dtype=missing_dtype(plan.factors[lvl]))
        return cache if cache.precomputed else None

    @staticmethod
    def kept_levels(plan: RegionPlan, dim: str, whole: set[tuple[int, str]]) -> set[int]:
        """The levels an update reduces in memory (:meth:`for_update`): each level >= 1 whose level below is
        also written, aligned with it, not rewritten whole, and whose regions all have the append dim.

        :param plan: the update's region plan.
        :param dim: the append dim.
        :param whole: the ``(level, variable)`` arrays rewritten whole.
        """
        planned = {lp.level: lp for lp in plan.levels}
        whole_levels = {lvl for lvl, _ in whole}
        return {lvl for lvl, lp in planned.items()
                if lvl > 0 and lvl - 1 in planned and lvl not in whole_levels
                and aligned(plan, planned[lvl - 1], lp.step)
                and all(dim in plan.var(r.var).dims for r in lp.regions)}

    def has(self, level: int, var: str) -> bool:
        """Always False: no level is kept whole (see the class docstring).

        :param level: the level index.
        :param var: the variable's name.
        """
        return False

    def views(self, level: int, var: str, slices: tuple[slice, ...]) -> None:
        """Regions may reach outside the window: reductions compute, then :meth:`put` keeps the window.

        :param level: the level index.
        :param var: the variable's name.
        :param slices: the window, in the level's indices.
        """
        return None

    def _local(self, var: str, slices: tuple[slice, ...]) -> tuple[tuple[slice, ...], slice]:
        """``slices`` in window coordinates, and the part of a value array (along dim) inside the window."""
        spec = self.plan.var(var)
        i = spec.dims.index(self.dim)
        s = slices[i]
        lo = max(s.start, self.start)
        local = list(slices)
        local[i] = slice(lo - self.start, s.stop - self.start)
        return tuple(local), slice(lo - s.start, s.stop - s.start)

    def get(self, level: int, var: str, slices: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`LevelCache.get` with ``slices`` moved into the window's coordinates.

        :param level: the level index.
        :param var: the variable's name.
        :param slices: the window, in the level's indices.
        """
        local, _ = self._local(var, slices)
        return super().get(level, var, local)

    def put(self, level: int, var: str, slices: tuple[slice, ...], values: np.ndarray,
            missing: np.ndarray | None) -> None:
        """:meth:`LevelCache.put` keeping only the part inside the window (nothing for a level not kept).

        :param level: the level index.
        :param var: the variable's name.
        :param slices: the window, in the level's indices.
        :param values: the window's values.
        :param missing: the window's missing counts, or None.
        """
        if (level, var) not in self.data:
            return
        local, part = self._local(var, slices)
        i = self.plan.var(var).dims.index(self.dim)
        if part.stop <= part.start:
            return
        take = tuple(part if k == i else slice(None) for k in range(values.ndim))
        super().put(level, var, local, values[take], None if missing is None else missing[take])

    @classmethod
    def nbytes_for(cls, plan: RegionPlan, dim: str, window: int, whole: set[tuple[int, str]]) -> int:
        """Bytes :meth:`for_update` allocates for a window of ``window`` entries along ``dim``: the kept levels'
        values and missing counts, exactly.

        :param plan: the update's region plan.
        :param dim: the append dim.
        :param window: the window's length along ``dim`` (the same at every level: the dim is not spatial).
        :param whole: the ``(level, variable)`` arrays rewritten whole.
        """
        total = 0
        for lvl in cls.kept_levels(plan, dim, whole):
            for spec in plan.variables:
                if dim not in spec.dims:
                    continue
                shape = list(spec.shapes[lvl])
                shape[spec.dims.index(dim)] = window
                n = int(np.prod(shape))
                miss = np.dtype(missing_dtype(plan.factors[lvl])).itemsize if spec.track_missing else 0
                total += n * (np.dtype(spec.out_dtype).itemsize + miss)
        return total


__all__ = ["WindowCache"]
