"""``max_task_runs`` is a hard cap on the write tasks of a run, even with ``regions_per_batch=1``."""

from __future__ import annotations

import numpy as np
import xarray as xr
import zarr

from flows.job import load_job
from flows.params import BuildParams


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
                         crs="EPSG:4326", chunks_per_shard=1, regions_per_batch=1)
    job = load_job(params)
    batches = sum(len(lp.batches) for lp in job.plan.levels)
    assert job.asked_batches > 1000  # what regions_per_batch=1 alone gives
    assert len(job.plan.levels) <= batches <= params.max_task_runs
    assert all(lp.batches for lp in job.plan.levels)
    # every region is still planned exactly once, in the same order
    uncapped = job.pyramid.region_plan(max_region_bytes=params.max_region_bytes, regions_per_batch=1)
    for capped_level, full_level in zip(job.plan.levels, uncapped.levels):
        assert [r for b in capped_level.batches for r in b.regions] == [r for b in full_level.batches
                                                                         for r in b.regions]
    small = load_job(params.model_copy(update={"max_task_runs": 10}))
    assert sum(len(lp.batches) for lp in small.plan.levels) <= 10
