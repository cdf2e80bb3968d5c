"""A corpus of bad inputs. Each case must fail with a clear message (an expected fragment, no
backend debug dumps) before anything is written, and must leave existing data untouched.

Cases run through the flow (``build_pyramid(params)``), the deployment's parameter schema, the CLI
or ``open_source``. Where a target exists, its files (names, sizes, mtimes, bytes) are compared
before/after; an Icechunk repository is compared the same way (a new branch would show as files).
tests/test_planning.py has a further 25 ``create_pyramid`` cases without Prefect.
"""

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
