"""The tile plan run as plain Dask tasks, without Prefect: what ``bench_flow.py``'s ``tiles dask`` phase
submits to the workers (a module of its own so that worker processes import it by name and keep its
cache between tasks).

Each worker opens the source and plans once per source (as a flow's tasks do, once per process and
run), then writes one tile per task with the function a flow's tile task calls
(:func:`topozarr_core.write.executor.write_tile_in_task`).
"""

from __future__ import annotations

from typing import Any

_JOBS: dict[tuple, tuple[Any, Any]] = {}


def plan_for(src: str, levels: int, crs: str, tile_bytes: int) -> tuple[Any, Any]:
    """The opened source and its tile plan, built once per process.

    :param src: the source URL or path.
    :param levels: the pyramid's levels.
    :param crs: its CRS.
    :param tile_bytes: ``max_tile_bytes`` of the plan.
    """
    key = (src, levels, crs, tile_bytes)
    if key not in _JOBS:
        from topozarr_core import create_pyramid
        from topozarr_core.store.sources import open_source

        ds = open_source(src)
        _JOBS[key] = (ds, create_pyramid(ds, levels=levels, crs=crs).tile_plan(max_tile_bytes=tile_bytes))
    return _JOBS[key]


def write_tile(src: str, levels: int, crs: str, tile_bytes: int, key: str, target: str) -> int:
    """Write tile ``key`` into ``target`` (already initialised); returns the bytes written.

    :param src: the source URL or path.
    :param levels: the pyramid's levels.
    :param crs: its CRS.
    :param tile_bytes: ``max_tile_bytes`` of the plan.
    :param key: the tile's key.
    :param target: the target URL or path.
    """
    from topozarr_core.store.targets import resolve_store
    from topozarr_core.write.executor import write_tile_in_task

    ds, plan = plan_for(src, levels, crs, tile_bytes)
    return write_tile_in_task(plan, plan.tile(key), source=ds, store=resolve_store(target)).bytes_written
