"""The target contract in the flow and the CLI: unsafe targets, the source as target and unstorable
attributes fail the run in planning, before anything changes; ``--overwrite-foreign`` is the CLI's
opt-in (the core half: tests/core/publish/test_target_contract.py)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from tests.helpers.inputs import assert_clear, tree_state
from tests.helpers.targets import TARGET_KW
from topozarr_flows import BuildParams, build_pyramid

# -- every input check before the first delete ------------------------------------------------------------

def _nc_with_bad_attr(ds: xr.Dataset, path: Path, kind: str) -> str:
    ds.drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    with h5py.File(path, "a") as f:
        if kind == "bytes-array":
            f["air"].attrs["flags"] = np.array([b"a", b"b"])
        else:
            f["air"].attrs["cplx"] = np.complex128(1 + 2j)
    return str(path)


@pytest.mark.parametrize("kind", ["bytes-array", "complex"])
def test_unstorable_netcdf_attribute_fails_in_planning_in_the_flow(prefect_harness, ds, pyramid_dir, tmp_path, kind):
    src = _nc_with_bad_attr(ds, tmp_path / f"{kind}.nc", kind)
    before = tree_state(pyramid_dir)
    state = build_pyramid(BuildParams(source=src, target=str(pyramid_dir), crs="EPSG:4326", **TARGET_KW), return_state=True)
    assert state.is_failed()
    msg = str(state.result(raise_on_failure=False))
    assert "attribute" in msg and "'air'" in msg, msg
    assert_clear(msg)
    assert tree_state(pyramid_dir) == before


@pytest.mark.parametrize("target", ["/", "~", "../../../../../../etc", "."])
def test_flow_refuses_unsafe_targets_in_planning(prefect_harness, ds, tmp_path, target):
    src = tmp_path / "src.nc"
    ds.drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    state = build_pyramid(BuildParams(source=str(src), target=target, crs="EPSG:4326", overwrite_foreign=True, **TARGET_KW),
                          return_state=True)
    assert state.is_failed()
    msg = str(state.result(raise_on_failure=False))
    assert "UnsafeTarget" in msg or "never written there" in msg, msg


def test_flow_refuses_the_source_as_target(prefect_harness, zarr_source):
    before = tree_state(zarr_source.parent)
    state = build_pyramid(BuildParams(source=str(zarr_source), target=str(zarr_source), crs="EPSG:4326", **TARGET_KW), return_state=True)
    assert state.is_failed()
    assert "is the source" in str(state.result(raise_on_failure=False))
    assert tree_state(zarr_source.parent) == before


def test_cli_overwrite_foreign_flag(prefect_harness, ds, tmp_path, capsys):
    from topozarr_flows.ops.cli import main

    src = tmp_path / "src.nc"
    ds.drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    target = tmp_path / "d"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    args = ["build", str(src), str(target), "--levels", "2", "--x-dim", "lon", "--y-dim", "lat", "--crs", "EPSG:4326"]
    assert main(args) == 2  # refused: one line (tests/flows/ops/test_cli_refusals.py), nothing written
    assert "ForeignTarget" in capsys.readouterr().err
    assert (target / "notes.txt").read_text() == "keep"
    assert main(args + ["--overwrite-foreign"]) == 0
    assert not (target / "notes.txt").exists() and (target / "1" / "air" / "zarr.json").exists()
