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
import time
from pathlib import Path

import pytest

from topozarr_core.write.allocator import active_writes, glibc_malloc, thresholds_fixed, thresholds_raised

ROOT = Path(__file__).resolve().parents[3]

#: the page faults of allocating, touching and freeing 16 MiB twenty times, through malloc itself: numpy
#: asks for transparent huge pages on large arrays, which the kernel grants or not, so a fresh block
#: would fault 8 times or 4096
FAULTS = """
import ctypes, json, resource, time
from topozarr_core.write.allocator import large_blocks_reused, thresholds_raised

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        block = libc.malloc(16 * 2**20)
        ctypes.memset(block, 1, 16 * 2**20)
        libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""

PROBE = FAULTS + """
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


LINGER_PROBE = FAULTS + """
out = {"before": faults()}
with large_blocks_reused(linger=1.0):
    pass
out["lingering"] = thresholds_raised()
out["between"] = faults()  # another task's allocations, between two uses of one computation
time.sleep(0.5)
with large_blocks_reused(linger=1.0):  # a use within the linger keeps the thresholds raised
    pass
time.sleep(0.7)  # 1.2 s after the first use, 0.7 s after the second
out["kept"] = thresholds_raised()
time.sleep(0.8)
out["given_back"] = not thresholds_raised()
out["after"] = faults()
print(json.dumps(out))
"""


@pytest.mark.skipif(glibc_malloc() is None, reason="glibc's malloc only")
def test_reuse_lingers_between_the_tasks_of_one_computation_then_gives_memory_back():
    """A Dask worker's tasks are short and other tasks' allocations come between them: the thresholds
    stay raised for ``linger`` seconds after a use, a use within that time keeps them raised, and the
    environment's setting is back once the computation has been idle that long."""
    done = subprocess.run([sys.executable, "-c", LINGER_PROBE], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
                                            "MALLOC_TRIM_THRESHOLD_": "65536"})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["lingering"] and got["kept"] and got["given_back"], got
    assert got["between"] < got["before"] / 5, got  # reused between the uses
    assert got["after"] > got["before"] / 2, got  # given back


@pytest.mark.skipif(glibc_malloc() is None, reason="glibc's malloc only")
def test_the_lazy_levels_reduce_inside_the_reuse(monkeypatch):
    """``as_datatree``'s reductions run with large blocks reused where the environment fixed malloc's
    thresholds (Dask's workers): they took the seed's lines to 1.9x their time there."""
    from tests.helpers.rasters import make_raster
    from topozarr_core import create_pyramid
    from topozarr_core.write import dask_levels

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    for _ in range(50):  # an earlier test's write may still linger: start from given-back thresholds
        if not thresholds_raised():
            break
        time.sleep(0.1)
    assert not thresholds_raised()
    seen, real = [], dask_levels.reduce_values

    def recording(*args, **kwargs):
        seen.append(thresholds_raised())
        return real(*args, **kwargs)

    monkeypatch.setattr(dask_levels, "reduce_values", recording)
    ds = make_raster(256, 256, nan_fraction=0.05).chunk({"lat": 64, "lon": 64})
    tree = create_pyramid(ds, levels=4, x_dim="lon", y_dim="lat").as_datatree()
    for node in tree.subtree:
        for var in node.data_vars.values():
            var.load(scheduler="sync")
    assert seen and all(seen), seen
