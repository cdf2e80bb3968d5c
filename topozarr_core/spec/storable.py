"""Can this dataset be stored as Zarr v3 at all? Checked at planning time, before any target is touched.

Why here and not where xarray writes: xarray finds a bad attribute or name only while it writes a
level, long after a ``mode="w"`` write would have replaced what was at the target, and then says
``Invalid attribute in Dataset.attrs.`` without naming the variable. These checks name the
variable and the attribute, and run in ``create_pyramid`` (so in every executor and in the flows'
planning task).
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from numbers import Number
from typing import Any

import numpy as np
import xarray as xr

from topozarr_core.text import short

#: Names that would collide with the documents of the group holding them.
RESERVED_NAMES = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")
_VALID_ATTR_TYPES = (str, Number, np.ndarray, np.number, np.bool_, list, tuple, bool)


def check_node_name(name: Hashable, what: str = "variable") -> None:
    """A Zarr v3 node name: a non-empty string without '/', not only dots, not starting with '__'.

    :param name: the node's name.
    :param what: what the message calls it (``"variable"``, ``"coordinate"``).
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} name {short(name)} must be a string to be stored in Zarr")
    problem = None
    if not name:
        problem = "is empty"
    elif "/" in name:
        problem = "contains '/' (it would be stored as nested groups)"
    elif set(name) == {"."}:
        problem = "is made only of dots"
    elif name.startswith("__"):
        problem = "starts with '__' (reserved by Zarr)"
    elif name in RESERVED_NAMES:
        problem = "is the name of a Zarr metadata document"
    if problem:
        raise ValueError(f"{what} name {short(name)} {problem}: it is not a valid Zarr node name; rename it "
                         "(ds.rename(...)) before building the pyramid")


def check_attrs(attrs: dict, owner: str) -> None:
    """Every attribute JSON-storable the way xarray's Zarr backend stores it (numpy values as lists).

    :param attrs: the attributes.
    :param owner: what the message calls their owner, e.g. ``"the dataset"``.
    """
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{owner} has an attribute named {short(key)}: attribute names must be non-empty strings")
        reason = _unstorable(value)
        if reason:
            raise ValueError(f"attribute {key!r} of {owner} cannot be stored in Zarr ({reason}): "
                             f"{short(value)}; convert it (e.g. to str or a list of numbers) or drop it")


def _unstorable(value: Any) -> str | None:
    if not isinstance(value, _VALID_ATTR_TYPES):
        return f"a {type(value).__name__}"
    if isinstance(value, np.ndarray) and value.dtype.kind not in "biufU":
        return f"an array of dtype {value.dtype}"
    encoded = value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
    return _json_problem(encoded)


def _json_problem(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        return next((p for p in map(_json_problem, value) if p), None)
    if isinstance(value, complex):
        return "a complex number"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, float) and not math.isfinite(value):
        return None  # zarr stores NaN / Infinity as strings
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return f"a {type(value).__name__}"
    return None


def check_storable(ds: xr.Dataset) -> None:
    """Names and attributes of everything a pyramid level would store.

    :param ds: the dataset.
    """
    check_attrs(ds.attrs, "the dataset")
    for name, var in ds.variables.items():
        what = "coordinate" if name in ds.coords else "variable"
        check_node_name(name, what)
        check_attrs(var.attrs, f"{what} {name!r}")


__all__ = ["check_storable", "check_node_name", "check_attrs", "short"]
