"""Bad sources at the core: ``open_source`` refuses unopenable Icechunk sources and a source in a
missing bucket with one clear line (no backend dumps). The flow, deployment and CLI cases, with the
target compared before/after: tests/flows/build/test_bad_inputs.py; 25 ``create_pyramid`` cases:
tests/core/spec/test_planning.py."""

from __future__ import annotations

import pytest

from tests.helpers.inputs import assert_clear
from topozarr_core.store.sources import SourceError, open_source

ICECHUNK_SOURCE_CASES = [
    ("icechunk-no-repo", "icechunk://{d}/no-repo", "does not exist"),
    ("icechunk-no-branch", "icechunk://{repo}?branch=dev", "branch 'dev' does not exist in the Icechunk"),
    ("icechunk-empty-url", "icechunk://", "names no repository"),
]


@pytest.mark.parametrize("name,url,match", ICECHUNK_SOURCE_CASES, ids=[c[0] for c in ICECHUNK_SOURCE_CASES])
def test_unopenable_icechunk_sources(src, tmp_path, name, url, match):
    url = url.format(d=tmp_path, repo=src["icechunk_repo"])
    with pytest.raises(SourceError, match=match) as exc:
        open_source(url)
    assert_clear(str(exc.value))
    assert not (tmp_path / "no-repo").exists()  # opening a source never creates anything


def test_source_in_missing_bucket(s3_env):
    with pytest.raises(SourceError, match="does not exist|NoSuchBucket") as exc:
        open_source("s3://no-such-bucket-topozarr/src.zarr")
    assert_clear(str(exc.value))


@pytest.mark.parametrize("consolidated", [False, True])
def test_local_zarr_source_opens_without_a_warning(tmp_path, consolidated):
    """A local Zarr v3 source opens quietly whether or not it has consolidated metadata (xarray's
    guess warns on every store without it), and reads the same values either way."""
    import warnings

    import numpy as np
    import xarray as xr

    from topozarr_core.store.sources import has_consolidated_metadata

    ds = xr.Dataset({"t": (("y", "x"), np.arange(12.0).reshape(3, 4))})
    path = tmp_path / "src.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=consolidated)
    assert has_consolidated_metadata(path) is consolidated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = open_source(str(path))
    np.testing.assert_array_equal(got["t"].values, ds["t"].values)
