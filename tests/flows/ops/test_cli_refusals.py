"""``topozarr-flows build`` ends a refused run with one clear line and exit code 2, no Python tracebacks.

Measured before: a target whose lease another writer holds ended the command with two tracebacks of
``TargetBusy`` (Prefect's log of the flow's exception, then the same exception raised out of ``main``).
The command runs as a subprocess against the test harness's API, as an operator runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid
from topozarr_core.store.lease import acquire

CLI = str(Path(sys.executable).with_name("topozarr-flows"))
ARGS = ["--levels", "2", "--x-dim", "lon", "--y-dim", "lat", "--crs", "EPSG:4326"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli-src") / "src.nc"
    make_raster(ny=64, nx=64).drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    return str(path)


def _build(prefect_harness, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": prefect_harness.api_url}
    return subprocess.run([CLI, "build", *args], capture_output=True, text=True, env=env, timeout=300)


def _refused(done: subprocess.CompletedProcess, *fragments: str) -> str:
    shown = done.stdout + done.stderr
    assert done.returncode == 2, shown
    assert "Traceback" not in shown, shown
    # the last line that is no Prefect log record (an ephemeral server logs its stop after it)
    last = [line for line in done.stderr.strip().splitlines() if not re.match(r"\d\d:\d\d:\d\d\.\d+ \| ", line)][-1]
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    assert len(last) < 700, last
    return last


def test_a_busy_target_is_one_line_and_exit_2(prefect_harness, source, tmp_path):
    target = tmp_path / "p.zarr"
    create_pyramid(make_raster(ny=64, nx=64), levels=2, x_dim="lon", y_dim="lat").write(target)
    lease = acquire(zarr.storage.LocalStore(str(target)), owner="another-run")
    try:
        _refused(_build(prefect_harness, source, str(target), *ARGS), "TargetBusy", "being written by another-run")
    finally:
        lease.release()


def test_a_foreign_target_and_a_missing_source_are_one_line_and_exit_2(prefect_harness, source, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    _refused(_build(prefect_harness, source, str(foreign), *ARGS), "ForeignTarget", "notes.txt")
    assert (foreign / "notes.txt").read_text() == "keep"
    _refused(_build(prefect_harness, str(tmp_path / "none.nc"), str(tmp_path / "p.zarr"), *ARGS), "does not exist")
