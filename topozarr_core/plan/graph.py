"""Which regions of level L-1 a region of level L waits for: the plan as a dependency graph.

A level-L region reads (or, with precompute, receives) the level-(L-1) pixels under its box, so
it can run as soon as the level-(L-1) regions overlapping that window are written, not when the
whole level is. An executor that follows these edges starts coarse levels while finer ones are
still running and never leaves a core idle at a level boundary.

Regions of one (level, variable) tile a product grid (one list of intervals per dim, as built
by :func:`topozarr_core.plan.regions.build_region_plan` and kept by :func:`topozarr_core.plan.regions.restrict_plan`), so the regions a
box overlaps are found per dim by bisection, not by comparing every pair.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

from topozarr_core.plan.regions import Box, Region, RegionPlan


@dataclass(frozen=True)
class RegionGraph:
    """Regions in plan order, with edges from each region to the next-level regions that wait for it."""

    regions: tuple[Region, ...]
    waits_for: tuple[int, ...]  # per region: how many regions it waits for
    unblocks: tuple[tuple[int, ...], ...]  # per region: indices of regions waiting for it


class RegionIndex:
    """Regions of one (level, variable): per-dim sorted intervals and box -> region index."""

    def __init__(self) -> None:
        self.by_box: dict[Box, int] = {}
        self.intervals: list[list[tuple[int, int]]] = []
        self.starts: list[list[int]] = []

    @classmethod
    def of(cls, boxes: list[Box]) -> RegionIndex:
        """An index of ``boxes`` (region ``i`` is ``boxes[i]``), frozen and ready for lookups.

        :param boxes: the regions' boxes of one (level, variable), a product grid.
        """
        index = cls()
        for i, box in enumerate(boxes):
            index.add(box, i)
        index.freeze()
        return index

    def add(self, box: Box, index: int) -> None:
        """Record that ``box`` is region number ``index``; call :meth:`freeze` after the last one.

        :param box: the region's box.
        :param index: the region's index in the plan.
        """
        self.by_box[box] = index

    def freeze(self) -> None:
        """Build the per-dim sorted intervals from the boxes added so far."""
        ndim = len(next(iter(self.by_box))) if self.by_box else 0
        self.intervals = [sorted({box[d] for box in self.by_box}) for d in range(ndim)]
        self.starts = [[a for a, _ in iv] for iv in self.intervals]

    def overlapping_boxes(self, window: Box) -> list[Box]:
        """Boxes of the regions that meet ``window``."""
        return [box for box in self._candidates(window) if box in self.by_box]

    def overlapping(self, window: Box) -> list[int]:
        """Indices of the regions that meet ``window``."""
        return [self.by_box[box] for box in self.overlapping_boxes(window)]

    def _candidates(self, window: Box) -> list[Box]:
        per_dim = []
        for intervals, starts, (lo, hi) in zip(self.intervals, self.starts, window):
            i = max(0, bisect.bisect_right(starts, lo) - 1)
            hits = []
            while i < len(intervals) and intervals[i][0] < hi:
                a, b = intervals[i]
                if b > lo:
                    hits.append((a, b))
                i += 1
            if not hits:
                return []
            per_dim.append(hits)
        return [tuple(box) for box in itertools.product(*per_dim)]


def region_graph(plan: RegionPlan, sources: dict[int, int] | None = None) -> RegionGraph:
    """The dependency graph of ``plan``: level-L regions wait for the regions under them of level
    ``sources[L]`` (default L-1; a level cache's producer when it precomputes L, see
    :class:`topozarr_core.write.level_cache.LevelCache`).

    Regions of the plan's first level (and of levels whose source level is not in the plan, which
    read it from the target) wait for nothing.
    """
    regions: list[Region] = [r for lp in plan.levels for r in lp.regions]
    index: dict[tuple[int, str], RegionIndex] = {}
    for i, region in enumerate(regions):
        index.setdefault((region.level, region.var), RegionIndex()).add(region.box, i)
    for li in index.values():
        li.freeze()
    planned = [lp.level for lp in plan.levels]
    fed_by: dict[int, list[int]] = {}  # source level -> levels waiting for its regions
    for lvl in planned:
        src = (sources or {}).get(lvl, lvl - 1)
        fed_by.setdefault(src, []).append(lvl)
    waits = [0] * len(regions)
    unblocks: list[list[int]] = [[] for _ in regions]
    for i, region in enumerate(regions):
        spec = plan.var(region.var)
        yi, xi = spec.axes(plan.y_dim, plan.x_dim)
        for lvl in fed_by.get(region.level, ()):
            nxt = index.get((lvl, region.var))
            if nxt is None:
                continue
            step = plan.factors[lvl] // plan.factors[region.level]
            window = tuple(
                (a // step, -(-b // step)) if d in (yi, xi) else (a, b) for d, (a, b) in enumerate(region.box)
            )
            for j in nxt.overlapping(window):
                unblocks[i].append(j)
                waits[j] += 1
    return RegionGraph(tuple(regions), tuple(waits), tuple(tuple(u) for u in unblocks))
