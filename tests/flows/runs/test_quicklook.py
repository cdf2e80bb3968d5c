"""The build and update flows record the quicklook PNG as an image artifact, and a failed quicklook
only warns (the PNG itself: tests/core/viewer/test_quicklook.py; the artifact in the Prefect UI:
tests/browser/test_quicklook_in_the_prefect_ui.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.png import assert_pixels, decode_png
from tests.helpers.quicklook_runs import flow_source, png_of, quicklook_artifacts
from tests.helpers.rasters import coarsen_reference
from topozarr_core.viewer import colormaps


def _zoomed(values: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(values, k, axis=0), k, axis=1)


@pytest.mark.parametrize("target_format", ["zarr", "icechunk"])
def test_build_and_update_flows_record_the_quicklook(prefect_harness, tmp_path, target_format):
    from topozarr_flows import BuildParams, UpdateParams, build_pyramid, update_pyramid

    ds2, src2 = flow_source(tmp_path, nt=2)
    _, src3 = flow_source(tmp_path, nt=3)
    target = str(tmp_path / ("p.zarr" if target_format == "zarr" else "repo"))
    common = dict(target=target, target_format=target_format)
    state = build_pyramid(BuildParams(source=src2, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326", **common),
                          return_state=True)
    assert state.is_completed()
    with prefect_harness.client() as c:
        (art,) = quicklook_artifacts(c, state.state_details.flow_run_id)
    # the 32x24 coarsest level, enlarged 8x so that the UI (natural size) shows 256x192 px
    assert "air level 2 time[0]: 256x192 px, each cell 8x8 px, colormap viridis" in art.description
    assert art.task_run_id is None, "a flow-run artifact: listed with the run's own artifacts"
    ref = coarsen_reference(ds2.isel(time=0), "air", 4, "mean")
    lo, hi = np.percentile(ref[np.isfinite(ref)], [2, 98])
    assert_pixels(decode_png(png_of(art)), _zoomed(ref, 8), colormaps.lut("viridis"), (lo, hi))

    state = update_pyramid(UpdateParams(source=src3, **common), return_state=True)
    assert state.is_completed()
    with prefect_harness.client() as c:
        (art,) = quicklook_artifacts(c, state.state_details.flow_run_id)
    assert decode_png(png_of(art)).shape == (192, 256, 4)


def test_a_failed_quicklook_warns_and_the_run_completes(prefect_harness, tmp_path, monkeypatch, caplog):
    import topozarr_flows.runs.artifacts
    from topozarr_flows import BuildParams, build_pyramid

    def broken(*a, **k):
        raise ValueError("quicklook: the level has no variable along both 'lat' and 'lon'")

    monkeypatch.setattr(topozarr_flows.runs.artifacts, "render_quicklook", broken)
    _, src = flow_source(tmp_path)
    state = build_pyramid(BuildParams(source=src, target=str(tmp_path / "p.zarr"), levels=2, x_dim="lon",
                                      y_dim="lat", crs="EPSG:4326"), return_state=True)
    assert state.is_completed()
    assert any("no quicklook: ValueError: quicklook: the level has no variable" in r.getMessage()
               for r in caplog.records)
    with prefect_harness.client() as c:
        assert quicklook_artifacts(c, state.state_details.flow_run_id) == []
