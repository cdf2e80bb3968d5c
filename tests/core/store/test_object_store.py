"""Pyramid.write to object storage: obstore-backed zarr ObjectStore and s3:// URLs against a real
S3-compatible server on loopback (moto)."""

from __future__ import annotations

import numpy as np
import xarray as xr
import zarr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import coarsen_reference, make_raster
from tests.helpers.schemas import validate_conventions
from topozarr_core import create_pyramid


def test_write_to_obstore_objectstore(s3_server, s3_prefix, tmp_path):
    ds = make_raster(ny=500, nx=600, nt=2, nan_fraction=0.05)
    p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat")
    p.write(s3_server.zarr_store(s3_prefix), mode="w")
    store = s3_server.zarr_store(s3_prefix, read_only=True)
    for lvl, f in enumerate(p.factors):
        got = xr.open_zarr(store, group=str(lvl), zarr_format=3, consolidated=False).air.values
        np.testing.assert_allclose(got, coarsen_reference(ds, "air", f, "mean"), rtol=1e-6, equal_nan=True)
    root = zarr.open_group(store, mode="r")
    validate_conventions({"zarr_format": 3, "node_type": "group", "attributes": dict(root.attrs)})
    p.write(tmp_path / "local.zarr")
    assert_same_pyramid(store, str(tmp_path / "local.zarr"))


def test_write_to_s3_url_with_env_credentials(s3_env, s3_prefix):
    ds = make_raster(ny=256, nx=256)
    p = create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat")
    p.write(f"s3://{s3_env.bucket}/{s3_prefix}/air.zarr", mode="w-")
    keys = {o["Key"] for o in s3_env.boto3_client().list_objects_v2(Bucket=s3_env.bucket, Prefix=s3_prefix)["Contents"]}
    assert f"{s3_prefix}/air.zarr/zarr.json" in keys and f"{s3_prefix}/air.zarr/1/air/zarr.json" in keys
    got = zarr.open_array(s3_env.zarr_store(f"{s3_prefix}/air.zarr", read_only=True), path="1/air")[:]
    np.testing.assert_allclose(got, coarsen_reference(ds, "air", 2, "mean"), rtol=1e-6)
