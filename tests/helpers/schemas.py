"""The convention schemas (multiscales, spatial, geo-proj) and offline validation against them."""

from __future__ import annotations

import json
from pathlib import Path

# The convention schemas live in ../shared/specs (beside the checkout, also in CI); the package carries a
# verbatim copy (topozarr_core/validate/schemas, compared with the original by
# tests/core/validate/test_validate.py), used only when that folder is absent.
REPO = Path(__file__).resolve().parents[2]
SHARED_SPECS = REPO.parent / "shared" / "specs" / "zarr-conventions"
PACKAGED_SPECS = REPO / "topozarr_core" / "validate" / "schemas"
SPECS = SHARED_SPECS if SHARED_SPECS.exists() else PACKAGED_SPECS


def load_schema(name: str) -> dict:
    """The JSON schema of convention ``name`` (a folder of SPECS)."""
    return json.loads((SPECS / name / "schema.json").read_text())


def validate_conventions(doc: dict, names=("multiscales", "spatial", "geo-proj")) -> None:
    """Validate a zarr.json document against the convention schemas (offline)."""
    import jsonschema

    for name in names:
        schema = load_schema(name)
        jsonschema.Draft7Validator(schema).validate(doc)
