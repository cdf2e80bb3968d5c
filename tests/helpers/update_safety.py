"""Builders and reader views for the update-safety tests (tests/core/update/test_update_safety.py and
its flow half)."""

from __future__ import annotations

import json
from pathlib import Path

import xarray as xr

from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid
from topozarr_core.publish.root_doc import STATUS_KEY

SAFETY_KW = dict(x_dim="lon", y_dim="lat", levels=3)


def safety_raster(nt: int, **kw) -> xr.Dataset:
    return make_raster(ny=200, nx=240, nt=nt, nan_fraction=0.05, **kw)


def build_for_safety(ds, target, **kw) -> None:
    create_pyramid(ds, **{**SAFETY_KW, **kw}).write(target)


def write_source(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """``ds`` as a Zarr source a flow or a child process opens (without CRS: the pyramid's is used)."""
    ds.drop_vars("spatial_ref").to_zarr(path, zarr_format=3, consolidated=False)
    return open_source_zarr(path)


def open_source_zarr(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, chunks=None, consolidated=False)


def root_attrs(path) -> dict:
    return json.loads((Path(path) / "zarr.json").read_text())["attributes"]


def time_lengths(path, dim: str = "time") -> set[int]:
    """The lengths along ``dim`` of every array of every level that has it (documents only)."""
    out = set()
    for doc_path in Path(path).glob("**/zarr.json"):
        doc = json.loads(doc_path.read_text())
        if doc.get("node_type") == "array" and dim in (doc.get("dimension_names") or []):
            out.add(doc["shape"][doc["dimension_names"].index(dim)])
    return out


def reader_view(path) -> str:
    """What a reader following the protocol sees: "unpublished", or "published" after checking that
    every level opens in xarray (no conflicting sizes) with one length along time."""
    attrs = root_attrs(path)
    if "multiscales" not in attrs:
        assert attrs.get(STATUS_KEY) == "updating", attrs.get(STATUS_KEY)
        return "unpublished"
    assert STATUS_KEY not in attrs
    lengths = {xr.open_zarr(path, group=entry["asset"], consolidated=False).sizes["time"]
               for entry in attrs["multiscales"]["layout"]}
    assert len(lengths) == 1 and time_lengths(path) == lengths, (lengths, time_lengths(path))
    return "published"


# -- changed history --------------------------------------------------------------------------------


def changed_history(n_old: int = 2, n_new: int = 4) -> tuple[xr.Dataset, xr.Dataset]:
    """The issue's repro: a source of ``n_new`` steps whose first ``n_old`` steps changed."""
    ds = safety_raster(n_new)
    changed = ds.copy()
    air = ds.air.values.copy()
    air[:n_old] += 1.0
    changed["air"] = (ds.air.dims, air, ds.air.attrs)
    return ds, changed
