"""Large blocks are reused during a write in a process whose environment fixed malloc's thresholds
(as Dask's workers do), and given back afterwards (topozarr_core/write/allocator.py).

Measured through the page faults of a loop that allocates, touches and frees 16 MiB (a region's
size): every iteration faults its 4096 pages in again when each free returns the block to the
kernel; a reused block faults once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from topozarr_core.write.allocator import active_writes, glibc_malloc, thresholds_fixed

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import json, resource, sys
import numpy as np
from topozarr_core.write.allocator import large_blocks_reused

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        a = np.empty(4 * 2**20, dtype="f4")
        a.fill(1.0)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"before": faults()}
with large_blocks_reused() as raised:
    out["raised"] = raised
    out["during"] = faults()
out["after"] = faults()
print(json.dumps(out))
"""


def _probe(env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(glibc_malloc() is None, reason="glibc's malloc only")
def test_fixed_thresholds_are_raised_during_a_write_and_restored_after():
    got = _probe({"MALLOC_TRIM_THRESHOLD_": "65536"})  # Dask's nanny default
    plain = _probe({})
    assert got["raised"] is True
    # (fault counts per block depend on the kernel's page sizes: compared with each other, not with pages)
    assert got["before"] > 5 * max(plain["before"], 20), (got, plain)  # every block faulted in again
    assert got["during"] < got["before"] / 5, got  # reused
    assert got["after"] > got["before"] / 2, got  # the environment's setting is back


@pytest.mark.skipif(glibc_malloc() is None, reason="glibc's malloc only")
def test_nothing_changes_where_the_environment_left_malloc_alone():
    got = _probe({})
    assert got["raised"] is False
    fixed = _probe({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert got["before"] < fixed["before"] / 5, (got, fixed)  # glibc's dynamic threshold reuses blocks itself


def test_thresholds_fixed_by_any_of_the_variables():
    assert thresholds_fixed({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert thresholds_fixed({"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert not thresholds_fixed({"PATH": "/bin"})


@pytest.mark.skipif(glibc_malloc() is None, reason="glibc's malloc only")
def test_every_write_runs_its_regions_inside_the_reuse(tmp_path, monkeypatch):
    from tests.helpers.rasters import make_raster
    from topozarr_core import create_pyramid
    from topozarr_core.write import executor

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    seen, real = [], executor.write_region

    def recording(ctx, region):
        seen.append(active_writes())
        return real(ctx, region)

    monkeypatch.setattr(executor, "write_region", recording)
    create_pyramid(make_raster(), levels=2, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr")
    assert seen and min(seen) >= 1, seen
    assert active_writes() == 0  # given back at the end
