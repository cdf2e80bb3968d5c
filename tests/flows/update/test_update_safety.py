"""Safety of incremental updates in the flow: a changed history is refused, a failed validation
leaves the root unpublished (never republished first), a concurrent writer's lease refuses the update,
and ``verify_samples`` must be a count (the core half: tests/core/update/test_update_safety.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import zarr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.inputs import tree_state
from tests.helpers.update_safety import (
    build_for_safety,
    changed_history,
    reader_view,
    root_attrs,
    safety_raster,
    write_source,
)
from topozarr_core import plan_update
from topozarr_core.publish.root_doc import STATUS_KEY
from topozarr_core.store.lease import lease_for


def test_verify_samples_must_be_a_count(tmp_path):
    ds = safety_raster(3)
    build_for_safety(ds.isel(time=slice(0, 2)), tmp_path / "p.zarr")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="verify_samples"):
            plan_update(ds, tmp_path / "p.zarr", verify_samples=bad)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="verify_samples"):
        _update_params("a.nc", "b.zarr", verify_samples=-1)


# -- flows -----------------------------------------------------------------------------------------


def _update_params(src, target, **kw):
    from topozarr_flows import UpdateParams

    return UpdateParams(source=str(src), target=str(target), concurrency_limit="update-safety-writes",
                        default_concurrency=8, **kw)


def test_flow_refuses_changed_history(prefect_harness, tmp_path):
    from topozarr_flows import update_pyramid as update_flow

    ds, changed = changed_history()
    path, src = tmp_path / "p.zarr", tmp_path / "changed.zarr"
    build_for_safety(ds.isel(time=slice(0, 2)), path, chunks_per_shard=1)
    write_source(changed, src)
    before = tree_state(path)
    state = update_flow(_update_params(src, path), return_state=True)
    assert state.is_failed()
    assert "rewrote history: 'air' at index 0" in str(state.result(raise_on_failure=False))
    assert tree_state(path) == before


def test_flow_validation_failure_leaves_the_root_unpublished(prefect_harness, tmp_path, monkeypatch):
    import topozarr_flows.update.flow as flow_mod

    ds = safety_raster(7)
    path, src = tmp_path / "p.zarr", tmp_path / "src.zarr"
    source = write_source(ds, src)
    build_for_safety(source.isel(time=slice(0, 4)), path, crs="EPSG:4326")
    real = flow_mod.validate_pyramid
    at_validation: list[dict] = []

    def failing(pyramid, store, **kw):
        at_validation.append(root_attrs(path))
        assert "multiscales" in kw["root_attrs"]  # checked against the root about to be published
        report = real(pyramid, store, **kw)
        return dataclasses.replace(report, mismatches=["level 0 'air': injected mismatch"])

    monkeypatch.setattr(flow_mod, "validate_pyramid", failing)
    state = flow_mod.update_pyramid(_update_params(src, path), return_state=True)
    assert state.is_failed() and "injected mismatch" in str(state.result(raise_on_failure=False))
    assert len(at_validation) == 1 and "multiscales" not in at_validation[0]  # not republished before validation
    attrs = root_attrs(path)
    assert "multiscales" not in attrs and attrs[STATUS_KEY] == "updating"  # and not after a failed one
    assert reader_view(path) == "unpublished"
    assert not (path / "topozarr.lease.json").exists()  # the run released its lease

    monkeypatch.undo()
    result = flow_mod.update_pyramid(_update_params(src, path))  # a new run resumes and publishes
    assert result["changed"] and result["resumed"] and result["old_length"] == 4
    build_for_safety(source, tmp_path / "full.zarr", crs="EPSG:4326")
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))


def test_flow_update_is_refused_while_another_writer_holds_the_lease(prefect_harness, tmp_path):
    from topozarr_flows import update_pyramid as update_flow

    ds = safety_raster(6)
    path, src = tmp_path / "p.zarr", tmp_path / "src.zarr"
    source = write_source(ds, src)
    build_for_safety(source.isel(time=slice(0, 3)), path, crs="EPSG:4326")
    with lease_for(zarr.storage.LocalStore(str(path)), owner="another-run"):
        before = tree_state(path)
        state = update_flow(_update_params(src, path), return_state=True)
        assert state.is_failed()
        assert "being written by another-run" in str(state.result(raise_on_failure=False))
        assert tree_state(path) == before
    assert np.array_equal(zarr.open_array(path, path="0/time", mode="r").shape, (3,))  # untouched
