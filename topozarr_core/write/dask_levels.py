"""Lazy levels for Dask: the data of ``Pyramid.as_datatree``, built tile by tile as the tile plan says.

The dask blocks of every level are the windows of the tiles of :meth:`Pyramid.tile_plan` at that level
(:mod:`topozarr_core.plan.tiles`, the work plan every executor runs): a first-stage block of level 0 is
a tile's window of the source, reduced block by block through the levels of its stage; a later stage's
blocks are windows of the level it starts from. So a dask task does what a tile does in the flow: it
reads its window once and writes whole shards of each level (a tile covers whole shards of its levels,
so no two tasks write into one shard), and the graph has a few tasks per tile instead of a few per shard.

Each level is reduced from the level before with :func:`topozarr_core.write.region.reduce_values`, the
function every write path uses, so ``as_datatree().to_zarr(..., encoding=pyramid.encoding)`` writes what
``Pyramid.write`` writes, bit for bit. Means carry the level's missing counts as a second array, so they
stay exact next to missing data. ``DataTree.to_zarr`` stores all levels in one dask computation, so a
level's blocks are computed once and feed the next level: the source is read once, not once per level.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import dask.array as dsa
import numpy as np
import xarray as xr

from topozarr_core.layout.paths import missing_dtype
from topozarr_core.plan.tiles import Tile, TilePlan
from topozarr_core.spec.packing import stored_values
from topozarr_core.spec.pyramid_spec import PyramidSpec
from topozarr_core.spec.variables import VarSpec
from topozarr_core.write.allocator import TASK_LINGER_SECONDS, large_blocks_reused
from topozarr_core.write.region import reduce_values

Chunks = tuple[tuple[int, ...], ...]


def _reduce(v: VarSpec, axes: tuple[int, int], step: int, prev_factor: int,
            *blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A block of the next level from a block of the level before (and its missing counts).

    Why the reuse: Dask's workers fix malloc's thresholds (``MALLOC_TRIM_THRESHOLD_``), so every large
    block of the reads, reductions and stores of a tile would start on fresh pages; measured on the
    1 GB benchmark, the seed's lines took 1.9x as long on such workers."""
    with large_blocks_reused(linger=TASK_LINGER_SECONDS):
        return reduce_values(v, axes, blocks[0], blocks[1] if len(blocks) > 1 else None, step, prev_factor)


def _values(v: VarSpec, axes: tuple[int, int], step: int, prev_factor: int, *blocks: np.ndarray) -> np.ndarray:
    """The values of :func:`_reduce` alone (a level whose counts no level needs)."""
    return _reduce(v, axes, step, prev_factor, *blocks)[0]


def stage_tiles(plan: TilePlan, v: VarSpec, stage: int) -> list[Tile]:
    """The tiles of ``stage`` that hold variable ``v`` (a grid over its dims).

    :param plan: the tile plan.
    :param v: the variable.
    :param stage: the stage number.
    """
    return [t for t in plan.tiles if t.stage == stage and v.name in t.variables]


def stage_chunks(plan: TilePlan, v: VarSpec, tiles: Sequence[Tile], level: int) -> Chunks:
    """The dask chunks of ``level`` of variable ``v`` that one stage's ``tiles`` cut it into: per dim,
    the sizes of the tiles' windows at that level (the tiles of a stage form a grid).

    :param plan: the tile plan.
    :param v: the variable.
    :param tiles: the tiles of one stage that hold ``v``.
    :param level: a level the stage reads or writes.
    """
    windows = [plan.window_at(t.window, v, level) for t in tiles]
    return tuple(tuple(b - a for a, b in sorted({w[d] for w in windows})) for d in range(len(v.dims)))


def level_arrays(src: xr.Dataset, spec: PyramidSpec, v: VarSpec, plan: TilePlan) -> list[dsa.Array]:
    """Every level of variable ``v`` of ``src`` (a dask-backed dataset) as a lazy dask array whose blocks
    are the windows of ``plan``'s tiles at that level, level 0 first.

    :param src: the source dataset, dask-backed.
    :param spec: the pyramid's spec.
    :param v: the variable's spec.
    :param plan: the pyramid's tile plan (every level, not restricted).
    """
    axes = v.axes(spec.y_dim, spec.x_dim)
    data = src[v.name].data
    if v.packing is not None:  # levels reduce the packed integers, as write() does (see packing)
        data = data.map_blocks(lambda block: stored_values(v, block), dtype=np.dtype(v.dtype))
    levels: dict[int, dsa.Array] = {}
    counts: dict[int, dsa.Array] = {}
    last = len(spec.factors) - 1
    for stage in plan.stages:
        tiles = stage_tiles(plan, v, stage)
        if not tiles:
            continue
        first = tiles[0]
        if first.reads is None:  # level 0: the source's windows, as stored
            level = dsa.asarray(data).astype(v.dtype).rechunk(stage_chunks(plan, v, tiles, 0))
            levels[0], made = level, first.levels[1:]
            missing = None
        else:
            chunks = stage_chunks(plan, v, tiles, first.reads)
            level = levels[first.reads].rechunk(chunks)
            missing = counts[first.reads].rechunk(chunks) if first.reads in counts else None
            made = first.levels
        for lvl in made:
            inputs = [level] + ([] if missing is None else [missing])
            out_chunks = stage_chunks(plan, v, tiles, lvl)
            how = (v, axes, spec.factors[lvl] // spec.factors[lvl - 1], spec.factors[lvl - 1])
            out_dtype, ndim = np.dtype(v.out_dtype), level.ndim
            # token, not name: the keys also hash the inputs, so two pyramids' levels in one graph never collide
            token = f"topozarr-{v.name}-level{lvl}"
            if v.track_missing and lvl < last:  # one reduction gives both: a block of (values, counts) pairs
                pair = dsa.map_blocks(functools.partial(_reduce, *how), *inputs, chunks=out_chunks,
                                      meta=np.empty((0,) * ndim, object), token=f"{token}-pair")
                level = pair.map_blocks(operator.itemgetter(0), meta=np.empty((0,) * ndim, out_dtype), token=token)
                counts_dtype = np.dtype(missing_dtype(spec.factors[lvl]))
                missing = pair.map_blocks(operator.itemgetter(1), meta=np.empty((0,) * ndim, counts_dtype),
                                          token=f"topozarr-{v.name}-missing{lvl}")
                counts[lvl] = missing
            else:
                level = dsa.map_blocks(functools.partial(_values, *how), *inputs, chunks=out_chunks,
                                       meta=np.empty((0,) * ndim, out_dtype), token=token)
                missing = None
            levels[lvl] = level
    return [levels[lvl] for lvl in range(len(spec.factors))]


__all__ = ["level_arrays", "stage_chunks", "stage_tiles"]
