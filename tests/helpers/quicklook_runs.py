"""The quicklook artifacts of flow runs: a grown source, the run's artifacts, the PNG inside."""

from __future__ import annotations

import base64

from tests.helpers.rasters import make_raster

# -- the flows' artifact --------------------------------------------------------------------------

def flow_source(tmp_path, nt=2):
    """The first ``nt`` steps of one 3-step raster (a grown source is an update of a shorter one)."""
    ds = make_raster(ny=96, nx=128, nt=3, nan_fraction=0.05).isel(time=slice(0, nt))
    path = tmp_path / f"src{nt}.nc"
    ds.drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    return ds, str(path)


def quicklook_artifacts(client, flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    return client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=["pyramid-quicklook"])))


def png_of(artifact) -> bytes:
    prefix = "data:image/png;base64,"
    assert artifact.type == "image" and artifact.data.startswith(prefix)
    return base64.b64decode(artifact.data[len(prefix):])
