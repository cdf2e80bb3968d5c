"""What every tier needs, and nothing that needs the orchestration stack (no prefect, no topozarr_flows):
the core tier (tests/core) runs in a venv without them (`make test-core`).

* Prefect's isolation (PREFECT_HOME etc. in a temp dir) is set by importing tests.helpers.services
  first, before anything imports prefect.
* The helper modules with fixtures are registered as plugins, so every tier can use them.
* Each test gets the marker of its tier (its folder below tests/): core, contract, flows, e2e, browser, repo;
  select a tier by path (``pytest tests/core``) or by marker (``pytest -m "core or contract"``).
"""

from __future__ import annotations

import os
from pathlib import Path

import tests.helpers.services  # noqa: F401  (first: Prefect's settings are read when prefect is imported)

os.environ.setdefault("TOPOZARR_RETRY_DELAY", "0")  # task retries back off instantly in tests

import pytest  # noqa: E402

pytest_plugins = [
    "tests.helpers.services",
    "tests.helpers.rasters",
    "tests.helpers.inputs",
    "tests.helpers.targets",
    "tests.helpers.updates",
    "tests.helpers.s3_proxy",
]

TESTS = Path(__file__).resolve().parent
TIERS = ("core", "contract", "flows", "e2e", "browser", "repo")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the first folder of its path below tests/."""
    for item in items:
        try:
            tier = Path(item.path).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
