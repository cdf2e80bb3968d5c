"""Integer variables without a ``_FillValue`` have no nodata: their real zeros must stay values in
every reader. Zarr v3 makes every array carry a ``fill_value``; zarr-layer masks cells equal to it
and GDAL reports it as the band's nodata, so it must not be a value the data uses. Such arrays get
netCDF's default fill value for their dtype (``levels.NO_NODATA_FILL``) and no ``_FillValue``
attribute (xarray masks nothing). Integers with a ``_FillValue`` keep it as their zarr fill value
(``tests/contract/test_topozarr_contract_data.py``).

Readers: zarr-python and xarray (values, bit for bit), GDAL through the rasterio wheel (nodata and
values of an unsharded level), and zarr-layer in the browser (``tests/browser/test_browser.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid

rasterio = pytest.importorskip("rasterio")

KW = dict(x_dim="lon", y_dim="lat")


def _dem(dtype: str) -> xr.Dataset:
    """Values 0..4 with whole 64x64 blocks of zeros (sea level / class 0), no nodata declared."""
    ds = make_raster(ny=256, nx=256, dtype="float32")
    values = (np.arange(256 * 256).reshape(256, 256) // 7 % 5).astype(dtype)
    values[:64, :64] = 0  # a whole level-0 chunk of real zeros
    ds["air"] = (("lat", "lon"), values, {"units": "m"})
    assert "_FillValue" not in ds["air"].attrs and "_FillValue" not in ds["air"].encoding
    return ds


@pytest.mark.parametrize("dtype, fill", [("int16", -32767), ("uint8", 255), ("int32", -2147483647)])
def test_zeros_are_values_in_zarr_xarray_and_gdal(tmp_path, dtype, fill):
    ds = _dem(dtype)
    root = tmp_path / "dem.zarr"
    pyramid = create_pyramid(ds, levels=3, method="mode", chunks_per_shard=None, **KW)
    assert pyramid.encoding["/0"]["air"]["fill_value"] == fill  # what the seed's to_zarr(encoding=) writes
    assert pyramid.fill_values["air"] is None  # no nodata declared
    pyramid.write(root)
    for lvl in range(3):
        doc = json.loads((root / str(lvl) / "air" / "zarr.json").read_text())
        assert (doc["data_type"], doc["fill_value"]) == (dtype, fill)
        assert "_FillValue" not in doc["attributes"]
    level0 = zarr.open_array(str(root), path="0/air", mode="r")[:]
    assert level0.tobytes() == ds["air"].values.tobytes()  # bit for bit, the zero chunk included
    decoded = xr.open_zarr(root, group="0", consolidated=False)["air"]
    assert decoded.dtype == np.dtype(dtype) and int((decoded.values == 0).sum()) == int((ds["air"].values == 0).sum())
    with rasterio.open(f'ZARR:"{root}":/0/air') as src:
        assert src.nodata == fill  # not 0: GDAL would call every sea-level cell nodata
        masked = src.read(1, masked=True)
    assert not masked.mask.any() and (masked.data == ds["air"].values).all()


def test_sum_levels_use_the_fill_of_their_own_dtype(tmp_path):
    ds = _dem("int16")
    root = tmp_path / "sum.zarr"
    create_pyramid(ds, levels=2, method="sum", chunks_per_shard=None, **KW).write(root)
    fills = [json.loads((root / str(lvl) / "air" / "zarr.json").read_text())["fill_value"] for lvl in range(2)]
    assert fills == [-32767, -9223372036854775806]  # int16 at level 0, int64 sums above


def test_declared_nodata_stays_the_fill_value(tmp_path):
    ds = _dem("int16")
    ds["air"].attrs["_FillValue"] = -9999
    root = tmp_path / "nodata.zarr"
    create_pyramid(ds, levels=2, method="mode", chunks_per_shard=None, **KW).write(root)
    doc = json.loads((root / "0" / "air" / "zarr.json").read_text())
    assert doc["fill_value"] == -9999 and doc["attributes"]["_FillValue"] == -9999
    with rasterio.open(f'ZARR:"{root}":/0/air') as src:
        assert src.nodata == -9999
