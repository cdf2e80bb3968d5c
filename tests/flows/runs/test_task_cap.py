"""``max_task_runs`` is a hard cap on the write tasks (tiles) of a run, even with tiny tiles asked for."""

from __future__ import annotations

import numpy as np
import xarray as xr
import zarr

from topozarr_flows import BuildParams
from topozarr_flows.runs.job import load_job


def _huge_source(path) -> str:
    """A 40000 x 40000 float32 Zarr source holding only metadata (no chunk is written: planning only)."""
    root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    arr = root.create_array("air", shape=(40000, 40000), chunks=(1000, 1000), dtype="f4",
                            dimension_names=("lat", "lon"), fill_value=np.nan)
    arr.attrs["units"] = "K"
    for name, n, lo, hi in (("lat", 40000, 60.0, -60.0), ("lon", 40000, -100.0, 100.0)):
        root.create_array(name, shape=(n,), dtype="f8", dimension_names=(name,))[:] = np.linspace(lo, hi, n)
    return str(path)


def test_max_task_runs_is_a_hard_cap(tmp_path, caplog):
    src = _huge_source(tmp_path / "huge.zarr")
    assert "air" in xr.open_zarr(src, chunks=None, consolidated=False)
    params = BuildParams(source=src, target=str(tmp_path / "p.zarr"), levels=6, x_dim="lon", y_dim="lat",
                         crs="EPSG:4326", chunks_per_shard=1, max_tile_bytes=100_000, max_task_runs=300)
    job = load_job(params)
    uncapped = job.pyramid.tile_plan(max_region_bytes=params.max_region_bytes, max_tile_bytes=100_000)
    assert len(uncapped.tiles) > 5_000  # what the tile size alone gives
    assert len(job.plan.stages) <= len(job.plan.tiles) <= params.max_task_runs
    # every shard of every level is still written, by one tile: the capped tiles cover the uncapped ones
    for level in job.plan.levels:
        capped = [t for t in job.plan.tiles if level in t.levels]
        assert capped
        spans = [t.window for t in capped]
        area = sum((b0 - a0) * (b1 - a1) for (a0, b0), (a1, b1) in spans)
        assert area == 40000 * 40000  # disjoint windows covering the level-0 extent
    small = load_job(params.model_copy(update={"max_task_runs": 10}))
    assert len(small.plan.tiles) <= max(10, len(small.plan.stages))
