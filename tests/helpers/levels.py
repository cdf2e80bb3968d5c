"""Reading levels back, shared by tests/contract/test_topozarr_contract_data.py and its flow half."""

from __future__ import annotations

import numpy as np
import zarr


def read_level(path, lvl: int, var: str = "air") -> np.ndarray:
    return zarr.open_array(str(path), path=f"{lvl}/{var}", mode="r")[...]


def root_nodes(path) -> list[str]:
    return sorted(zarr.open_group(str(path), mode="r").keys())


# -- no scratch data in a published pyramid; means stay exact --------------------------------------


def assert_exact_means(path, ds, factors):
    for lvl, f in enumerate(factors):
        got = read_level(path, lvl)
        ref = ds.air.values if f == 1 else ds.air.coarsen(lat=f, lon=f, boundary="trim").mean().values
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-4)
        assert np.array_equal(np.isnan(got), np.isnan(ref))
