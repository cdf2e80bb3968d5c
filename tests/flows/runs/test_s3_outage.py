"""Flow runs ride out object-store outages, and a long outage fails the run in bounded time and its
retry completes it. The cuttable proxy in front of moto is tests/helpers/s3_proxy.py; the core half
(retry settings, what is retried, giving up in one line) is tests/core/store/test_s3_outage.py."""

from __future__ import annotations

import time

import pytest
import xarray as xr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.s3_proxy import FIRST_CHUNK_PUT, OUTAGE, outage_raster
from topozarr_core import create_pyramid

KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI"


@pytest.mark.timeout(240)
def test_flow_rides_out_outage(prefect_harness, proxy, s3_env, s3_prefix, tmp_path):
    """build_pyramid to an s3:// URL; new connections are reset for 32 s (what obstore alone does not retry)."""
    from topozarr_flows import BuildParams, build_pyramid

    src = tmp_path / "src.nc"
    outage_raster().drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    params = BuildParams(source=str(src), target=f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr", levels=2, x_dim="lon",
                         y_dim="lat", crs="EPSG:4326", concurrency_limit="s3-outage-writes", default_concurrency=8,
                         max_task_runs=6, validate_samples=1)
    proxy.cut_on(FIRST_CHUNK_PUT, OUTAGE, how="reset")
    t0 = time.monotonic()
    result = build_pyramid(params)
    took = time.monotonic() - t0
    assert proxy.cuts == 1 and proxy.restored_at is not None, "the outage never started"
    assert proxy.rejected > 0 and took >= OUTAGE
    assert [r["level"] for r in result["levels"]] == [0, 1] and result["spot_checks"] > 0
    clean = create_pyramid(xr.open_dataset(src, engine="h5netcdf"), levels=2, x_dim="lon", y_dim="lat",
                           crs="EPSG:4326")
    clean.write(tmp_path / "clean.zarr")
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "clean.zarr"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["initialise-target", "tiles"])
def test_a_long_outage_fails_the_flow_run_in_bounded_time_and_retry_completes_it(prefect_harness, proxy, s3_env,
                                                                                  s3_prefix, tmp_path, monkeypatch,
                                                                                  where):
    """The endpoint goes away for good at the first chunk PUT of initialise-target (a coordinate) or of the
    tiles (the data). The run ends Failed, with one line, within TOPOZARR_S3_RETRY_TIMEOUT plus slack
    (README), however many tiles are left: a task that failed with ObjectStoreUnavailable is not retried
    (the core already retried for the whole timeout), and the tiles after it fail at once. Measured before:
    initialise-target's 4 attempts took 4 x the timeout; each write task too, wave after wave. Once the
    endpoint is back, retrying the run completes it."""
    from topozarr_flows import BuildParams, build_pyramid
    from topozarr_flows.ops.retry import retry_here

    limit = 6
    monkeypatch.setenv("TOPOZARR_S3_RETRY_TIMEOUT", str(limit))
    src = tmp_path / "src.nc"
    outage_raster().drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    params = BuildParams(source=str(src), target=f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr", levels=3, x_dim="lon",
                         y_dim="lat", crs="EPSG:4326", chunks_per_shard=1, max_tile_bytes=100_000,
                         concurrency_limit="s3-long-outage", default_concurrency=2, validate_samples=1)
    proxy.cut_on(FIRST_CHUNK_PUT if where == "initialise-target" else rb"PUT /[^ \r\n]*/p\.zarr/0/air/c/", None,
                 how="refuse")
    t0 = time.monotonic()
    state = build_pyramid(params, return_state=True)
    took = time.monotonic() - t0
    assert proxy.cuts == 1 and state.is_failed(), state
    message = state.message or ""
    assert "\n" not in message and "ObjectStoreUnavailable" in message, message
    assert f"TOPOZARR_S3_RETRY_TIMEOUT={limit} s" in message, message
    assert took < limit + 10, took  # the README's bound: the retry timeout plus slack

    proxy.restore()
    retried = retry_here(state.state_details.flow_run_id)
    assert retried.is_completed(), retried
    clean = create_pyramid(xr.open_dataset(src, engine="h5netcdf"), levels=3, x_dim="lon", y_dim="lat",
                           crs="EPSG:4326", chunks_per_shard=1)
    clean.write(tmp_path / "clean.zarr")
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "clean.zarr"))
