"""Compare two zarr hierarchies: every group's and array's metadata, and every decoded array."""

from __future__ import annotations

import numpy as np
import zarr

from topozarr_core.layout.conventions import comparable as _normal


def snapshot(store) -> dict[str, tuple[dict, np.ndarray | None]]:
    """{path: (metadata dict, values)} for every node below the root."""
    root = zarr.open_group(store, mode="r", zarr_format=3)
    out: dict[str, tuple[dict, np.ndarray | None]] = {"": (root.metadata.to_dict(), None)}
    for path, node in root.members(max_depth=None):
        if isinstance(node, zarr.Array):
            out[path] = (node.metadata.to_dict(), node[...])
        else:
            out[path] = (node.metadata.to_dict(), None)
    return out


def assert_same_pyramid(a, b, ignore_root_attrs: tuple[str, ...] = ()) -> None:
    sa, sb = snapshot(a), snapshot(b)
    assert sorted(sa) == sorted(sb), f"different nodes: {sorted(set(sa) ^ set(sb))}"
    for path in sa:
        ma, va = sa[path]
        mb, vb = sb[path]
        if path == "" and ignore_root_attrs:
            for k in ignore_root_attrs:
                ma.get("attributes", {}).pop(k, None)
                mb.get("attributes", {}).pop(k, None)
        assert _normal(ma) == _normal(mb), f"metadata differs at {path!r}"
        if va is not None:
            np.testing.assert_array_equal(va, vb, err_msg=f"values differ at {path!r}")
