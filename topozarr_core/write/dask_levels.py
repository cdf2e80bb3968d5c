"""Lazy levels for Dask: the data of ``Pyramid.as_datatree``, each level built from the level before.

Level L of a variable is a dask array chunked by that level's write unit (its shards), each block
reduced from the level-(L-1) window under it with :func:`topozarr_core.write.region.reduce_values`, the function every
write path uses, so ``as_datatree().to_zarr(..., encoding=pyramid.encoding)`` writes what
``Pyramid.write`` writes, bit for bit. Means carry the level's missing counts as a second array, so they
stay exact next to missing data. ``DataTree.to_zarr`` stores all levels in one dask computation, so a
level's blocks are computed once and feed the next level: the source is read once, not once per level.
"""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import xarray as xr

from topozarr_core.layout.paths import missing_dtype
from topozarr_core.plan.regions import write_unit
from topozarr_core.spec.packing import stored_values
from topozarr_core.spec.pyramid_spec import PyramidSpec
from topozarr_core.spec.variables import VarSpec
from topozarr_core.write.region import reduce_values


def level_arrays(src: xr.Dataset, spec: PyramidSpec, v: VarSpec) -> list[dsa.Array]:
    """Every level of variable ``v`` of ``src`` (a dask-backed dataset) as a lazy dask array chunked by
    the level's write unit, level 0 first.

    :param src: the source dataset, dask-backed.
    :param spec: the pyramid's spec.
    :param v: the variable's spec.
    """
    axes = v.axes(spec.y_dim, spec.x_dim)
    data = src[v.name].data
    if v.packing is not None:  # levels reduce the packed integers, as write() does (see packing)
        data = data.map_blocks(lambda block: stored_values(v, block), dtype=np.dtype(v.dtype))
    level = dsa.asarray(data).astype(v.dtype).rechunk(write_unit(v.encodings[0]))
    levels, counts = [level], None
    for lvl in range(1, len(spec.factors)):
        step = spec.factors[lvl] // spec.factors[lvl - 1]
        prev_factor = spec.factors[lvl - 1]
        unit = write_unit(v.encodings[lvl])
        window = tuple(u * step if d in axes else u for d, u in enumerate(unit))
        inputs = [level.rechunk(window)] + ([] if counts is None else [counts.rechunk(window)])
        out_chunks = tuple(tuple(c // step for c in cs) if d in axes else cs
                           for d, cs in enumerate(inputs[0].chunks))

        def reduce(*blocks: np.ndarray, keep_counts: bool = False, step: int = step,
                   prev_factor: int = prev_factor) -> np.ndarray:
            values, missing = reduce_values(v, axes, blocks[0], blocks[1] if len(blocks) > 1 else None, step,
                                            prev_factor)
            return missing if keep_counts else values

        # token, not name: the keys also hash the inputs, so two pyramids' levels in one graph never collide
        level = dsa.map_blocks(reduce, *inputs, dtype=np.dtype(v.out_dtype), chunks=out_chunks,
                               token=f"topozarr-{v.name}-level{lvl}")
        levels.append(level)
        if v.track_missing and lvl < len(spec.factors) - 1:
            counts = dsa.map_blocks(reduce, *inputs, keep_counts=True, dtype=np.dtype(missing_dtype(spec.factors[lvl])),
                                    chunks=out_chunks, token=f"topozarr-{v.name}-missing{lvl}")
    return levels


__all__ = ["level_arrays"]
