"""In-memory copies of levels >= 1, so a level is computed from RAM instead of re-read from the store.

When every region of level L-1 starts on a multiple of the step to level L, each L-1 region also
reduces its own output into level L here ("precomputed"); level L's regions then only encode
and write. The reduction chains: when level L-1 is itself precomputed by the regions of level P
and those are aligned to the whole factor from P to L, the level-P regions reduce on down to L
("producer" P), so every precomputed level is ready once level P is written and the coarse
levels are encoded in parallel instead of one after another. Level 0 is never kept: it is read
once from the source.

Two ways of keeping a level:

* **blocks** (precomputed levels nobody reads at arbitrary windows): one buffer per region of the
  level, allocated when its first producer writes into it and handed over (dropped from here)
  when the region itself is written. With the executor's feeding order only a few blocks per level
  are alive at once: memory stays at about workers x a few regions whatever the raster size, and
  freed blocks are reused by the allocator instead of faulting in fresh pages.
* **whole** (a level whose next level is not precomputed and reduces from arbitrary windows of it):
  one array for the whole level, dropped when the next level is written.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from topozarr_core.layout.paths import missing_dtype
from topozarr_core.plan.graph import RegionIndex
from topozarr_core.plan.regions import Box, RegionPlan
from topozarr_core.spec.variables import VarSpec

Pair = tuple[np.ndarray, np.ndarray | None]

#: Written blocks kept for reuse, per shape and dtype.
SPARE_PER_SHAPE = 4
#: Blocks per (level, variable) assumed alive at once when sizing the cache (feeding order keeps
#: it to about the regions in flight).
BLOCKS_ALIVE = 8


def missing_fill(spec: VarSpec) -> float | int:
    """The value a reduction writes where every input pixel is missing: the nodata value, else NaN or 0.

    :param spec: the variable's spec.
    """
    if spec.fill_value is not None:
        return spec.fill_value
    return np.nan if np.dtype(spec.out_dtype).kind == "f" else 0


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def _box(slices: tuple[slice, ...]) -> Box:
    return tuple((int(s.start), int(s.stop)) for s in slices)


@dataclass
class LevelCache:
    """The levels of one write kept in RAM, so a coarser level reads them instead of the store.

    Whole levels (``data``, ``missing``) where the next level reads arbitrary windows; per-region blocks
    (``blocks``) where the regions line up, reduced into by the producers and handed over to the one
    region that writes them.
    """
    plan: RegionPlan
    #: whole kept levels: (level, var) -> array of the level (and its missing counts)
    data: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    missing: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    precomputed: set[int] = field(default_factory=set)
    #: precomputed level -> the level whose regions reduce into it (L-1 unless chained further up)
    producer: dict[int, int] = field(default_factory=dict)
    #: levels kept per region: (level, var) -> the level's region boxes
    block_index: dict[tuple[int, str], RegionIndex] = field(default_factory=dict)
    blocks: dict[tuple[int, str, Box], Pair] = field(default_factory=dict)
    #: the most blocks alive at once, and the block arrays allocated (not recycled): what bounds memory
    peak_blocks: int = 0
    new_arrays: int = 0
    #: written blocks' arrays kept for the next blocks of the same shape and dtype (see recycle)
    _spare: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_plan(cls, plan: RegionPlan) -> LevelCache:
        """The cache of one run of ``plan`` (one tile's, or a whole pyramid's in ``Pyramid.write``)."""
        cache = cls(plan)
        layout = _layout(plan)
        cache.precomputed, cache.producer = layout.precomputed, layout.producer
        for lvl in layout.whole:
            for spec in plan.variables:
                # np.empty, not np.full: every pixel is written (by a producer or the level's own
                # regions) before anything reads it, and filling 100s of MB up front is serial time.
                cache.data[(lvl, spec.name)] = np.empty(spec.shapes[lvl], dtype=spec.out_dtype)
                if spec.track_missing:
                    cache.missing[(lvl, spec.name)] = np.zeros(spec.shapes[lvl], dtype=missing_dtype(plan.factors[lvl]))
        for lvl in layout.blocks:
            for spec in plan.variables:
                boxes = [r.box for r in layout.planned[lvl].regions if r.var == spec.name]
                cache.block_index[(lvl, spec.name)] = RegionIndex.of(boxes)
        return cache

    # -- reading --------------------------------------------------------------------------------
    def has(self, level: int, var: str) -> bool:
        """Whether any window of the level can be read here (a whole kept level).

        :param level: the level index.
        :param var: the variable's name.
        """
        return (level, var) in self.data

    def get(self, level: int, var: str, slices: tuple[slice, ...]) -> Pair:
        """A window of a whole level, or a region's block (handed over: dropped from the cache).

        :param level: the level index.
        :param var: the variable's name.
        :param slices: the window, in the level's indices.
        """
        if (level, var) in self.block_index:
            with self._lock:
                block = self.blocks.pop((level, var, _box(slices)), None)
            if block is None:
                raise KeyError(f"level {level} {var!r} {_box(slices)}: no block (its producers have not run)")
            return block
        miss = self.missing.get((level, var))
        return self.data[(level, var)][slices], (None if miss is None else miss[slices])

    # -- writing --------------------------------------------------------------------------------
    def views(self, level: int, var: str, slices: tuple[slice, ...]) -> Pair | None:
        """Writable views of a window of a kept level (a reduction writes straight into them), or
        None when the level is not kept or the window spans several blocks (then use :meth:`put`).

        :param level: the level index.
        :param var: the variable's name.
        :param slices: the window, in the level's indices.
        """
        if (level, var) in self.block_index:
            window = _box(slices)
            boxes = self.block_index[(level, var)].overlapping_boxes(window)
            if len(boxes) != 1 or any(a < lo or b > hi for (a, b), (lo, hi) in zip(window, boxes[0])):
                return None
            data, miss = self._block(level, var, boxes[0])
            local = tuple(slice(a - lo, b - lo) for (a, b), (lo, _) in zip(window, boxes[0]))
            return data[local], (None if miss is None else miss[local])
        if (level, var) not in self.data:
            return None
        miss = self.missing.get((level, var))
        return self.data[(level, var)][slices], (None if miss is None else miss[slices])

    def put(self, level: int, var: str, slices: tuple[slice, ...], values: np.ndarray,
            missing: np.ndarray | None) -> None:
        """Store a reduced window of a kept level (into the blocks it overlaps, or the whole level).

        :param level: the level index.
        :param var: the variable's name.
        :param slices: the window, in the level's indices.
        :param values: the window's values.
        :param missing: the window's missing counts, or None (not tracked).
        """
        if (level, var) in self.block_index:
            window = _box(slices)
            for box in self.block_index[(level, var)].overlapping_boxes(window):
                part = tuple((max(a, lo), min(b, hi)) for (a, b), (lo, hi) in zip(window, box))
                src = tuple(slice(p - a, q - a) for (p, q), (a, _) in zip(part, window))
                dst = tuple(slice(p - lo, q - lo) for (p, q), (lo, _) in zip(part, box))
                data, miss = self._block(level, var, box)
                data[dst] = values[src]
                if missing is not None and miss is not None:
                    miss[dst] = missing[src]
            return
        if (level, var) not in self.data:
            return
        self.data[(level, var)][slices] = values  # disjoint windows: no lock needed
        if missing is not None and (level, var) in self.missing:
            self.missing[(level, var)][slices] = missing

    def _block(self, level: int, var: str, box: Box) -> Pair:
        """The block of one region, allocated by the first producer that writes into it."""
        key = (level, var, box)
        with self._lock:
            block = self.blocks.get(key)
            if block is None:
                spec = self.plan.var(var)
                shape = tuple(b - a for a, b in box)
                # np.empty even for counts: the producers write every pixel of the block, and large
                # np.zeros would map fresh zero pages for every block instead of reusing freed ones
                miss = self._empty(shape, missing_dtype(self.plan.factors[level])) if spec.track_missing else None
                block = self.blocks[key] = (self._empty(shape, spec.out_dtype), miss)
                self.peak_blocks = max(self.peak_blocks, len(self.blocks))
            return block

    def is_block(self, level: int, var: str) -> bool:
        """Whether the level is kept as per-region blocks.

        :param level: the level index.
        :param var: the variable's name.
        """
        return (level, var) in self.block_index

    def recycle(self, *arrays: np.ndarray | None) -> None:
        """Take back a written block's arrays for the next blocks of the same shape.

        Reusing them instead of allocating anew matters more than it looks: fresh memory has to be
        faulted in and zeroed page by page (on some VMs at ~2 ms per MB), a reused buffer does not.
        Only call once nothing else references the arrays.
        """
        with self._lock:
            for arr in arrays:
                if arr is None or arr.base is not None:
                    continue  # views belong to someone else
                spare = self._spare.setdefault((arr.shape, arr.dtype.str), [])
                if len(spare) < SPARE_PER_SHAPE:
                    spare.append(arr)

    def _empty(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A block array: a recycled one of this shape and dtype, else a new one (lock held)."""
        spare = self._spare.get((tuple(shape), np.dtype(dtype).str))
        if spare:
            return spare.pop()
        self.new_arrays += 1
        return np.empty(shape, dtype=dtype)

    def sources(self) -> dict[int, int]:
        """Precomputed level -> the level whose regions feed it (its inputs, for a dependency graph)."""
        return {lvl: self.producer.get(lvl, lvl - 1) for lvl in self.precomputed}

    def release(self, level: int) -> None:
        """Drop a level once no region needs it any more."""
        with self._lock:
            for key in [k for k in self.data if k[0] == level]:
                self.data.pop(key, None)
                self.missing.pop(key, None)
            for key in [k for k in self.blocks if k[0] == level]:
                self.blocks.pop(key, None)
            shapes = {tuple(b - a for a, b in box) for (lvl, var), index in self.block_index.items()
                      if lvl == level for box in index.by_box}
            for key in [k for k in self._spare if k[0] in shapes]:
                self._spare.pop(key, None)

    def chain(self, level: int) -> list[int]:
        """The precomputed levels the regions of ``level`` reduce into, finest first."""
        out = []
        nxt = level + 1
        while self.producer.get(nxt, nxt - 1 if nxt in self.precomputed else None) == level:
            out.append(nxt)
            nxt += 1
        return out

    @staticmethod
    def nbytes_needed(plan: RegionPlan) -> int:
        """Memory the cache of ``plan`` may hold: whole levels in full, block levels a few blocks
        per variable (``BLOCKS_ALIVE`` of their largest region, at most the whole level)."""
        layout = _layout(plan)
        total = 0
        for spec in plan.variables:
            for lvl in layout.whole + layout.blocks:
                item = np.dtype(spec.out_dtype).itemsize
                item += np.dtype(missing_dtype(plan.factors[lvl])).itemsize if spec.track_missing else 0
                n = int(np.prod(spec.shapes[lvl]))
                if lvl in layout.blocks:
                    largest = max((int(np.prod(r.shape())) for r in layout.planned[lvl].regions
                                   if r.var == spec.name), default=0)
                    n = min(n, BLOCKS_ALIVE * largest)
                total += n * item
        return total


@dataclass(frozen=True)
class _Layout:
    planned: dict
    precomputed: set[int]
    producer: dict[int, int]
    whole: list[int]  # levels kept whole
    blocks: list[int]  # levels kept per region


def _layout(plan: RegionPlan) -> _Layout:
    """Which levels are precomputed (and by which level's regions), and how each kept level is kept."""
    planned = {lp.level: lp for lp in plan.levels}
    precomputed: set[int] = set()
    producer: dict[int, int] = {}
    for lvl in sorted(planned):
        if lvl >= 1 and lvl - 1 in planned and aligned(plan, planned[lvl - 1], planned[lvl].step):
            precomputed.add(lvl)
            producer[lvl] = lvl - 1
            up = producer.get(lvl - 1)
            if up is not None and aligned(plan, planned[up], plan.factors[lvl] // plan.factors[up]):
                producer[lvl] = up
    whole, blocks = [], []
    for lvl in sorted(planned):
        if lvl == 0:
            continue
        if lvl + 1 in planned and lvl + 1 not in precomputed:
            whole.append(lvl)  # the next level reduces from arbitrary windows of it
        elif lvl in precomputed:
            blocks.append(lvl)
    return _Layout(planned, precomputed, producer, whole, blocks)


def aligned(plan: RegionPlan, prev, step: int) -> bool:
    """Whether every region of ``prev`` starts on a multiple of ``step`` along y and x, so it reduces into whole windows.

    :param plan: the region plan.
    :param prev: the :class:`~topozarr_core.plan.regions.LevelPlan` of the finer level.
    :param step: the factor from that level to the next.
    """
    for region in prev.regions:
        spec = plan.var(region.var)
        yi, xi = spec.axes(plan.y_dim, plan.x_dim)
        if region.box[yi][0] % step or region.box[xi][0] % step:
            return False
    return True
