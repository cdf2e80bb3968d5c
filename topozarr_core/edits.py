"""``pyramid.encoding`` as an editable plan: build it from a spec, check a user's edits, apply them.

topozarr tells its users to edit ``pyramid.encoding`` before writing to override the recommended
chunks and shards. Here an edit is checked as a whole before anything is written (one-line
errors naming the level, the variable and the key), then applied to the spec's per-level
:class:`~.chunking.VarEncoding`, so every consumer of the spec (target checks, level documents,
region plan, validation) sees the same layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from numbers import Integral
from typing import Any

import numpy as np

from .chunking import VarEncoding
from .planning import PyramidSpec
from .storable import short

#: The keys of a variable's entry an edit may change.
EDITABLE_KEYS = ("chunks", "shards")


def level_key(level: int) -> str:
    """The group path ``DataTree.to_zarr`` expects for a level: ``"/0"``, ``"/1"``, ..."""
    return f"/{level}"


def planned_encoding(spec: PyramidSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """A fresh, mutable copy of the recommended encoding: ``{"/<level>": {var: {"chunks", "shards", ...}}}``.

    Besides the editable chunks and shards, each entry carries what the written arrays need and an edit
    may not change: the dtype and the nodata value (``_FillValue``, and the zarr ``fill_value`` for
    integer nodata), so the seed's ``as_datatree().to_zarr(..., encoding=pyramid.encoding)`` writes the
    same arrays as :meth:`Pyramid.write` (xarray replaces a variable's encoding by the one passed)."""
    return {
        level_key(lvl): {v.name: {**_plain_entry(v.encodings[lvl].to_xarray()), **fixed_encoding(v, lvl)}
                         for v in spec.variables}
        for lvl in range(len(spec.factors))
    }


def fixed_encoding(var: Any, level: int) -> dict[str, Any]:
    """The non-editable part of a variable's encoding at ``level`` (dtype, nodata)."""
    from .levels import gridded_encoding  # levels imports the planning modules this one builds on

    return {k: v for k, v in gridded_encoding(var, level).items() if k in FIXED_KEYS}


#: The keys of an entry that are planned, shown, and must stay as planned.
FIXED_KEYS = ("dtype", "_FillValue", "fill_value")


def _same(a: Any, b: Any) -> bool:
    """Equal as encoding values: NaN equals NaN, dtypes compare by kind and size, sequences as tuples."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, np.dtype) or isinstance(b, np.dtype):
        try:
            return np.dtype(a) == np.dtype(b)
        except TypeError:
            return False
    return _plain_entry({"v": a}) == _plain_entry({"v": b})


def _plain_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in entry.items()}


def encoding_key(encoding: Any) -> str:
    """A canonical text of an encoding (to notice whether it changed since it was last applied)."""
    return json.dumps(encoding, sort_keys=True, default=repr)


def apply_encoding(spec: PyramidSpec, encoding: Any) -> PyramidSpec:
    """``spec`` with the chunks/shards of ``encoding``; raises ValueError/TypeError on a bad edit."""
    if not isinstance(encoding, Mapping):
        raise TypeError(f"pyramid.encoding must be a dict keyed '/0', '/1', ..., got {type(encoding).__name__}")
    n = len(spec.factors)
    levels = {level_key(lvl): lvl for lvl in range(n)}
    for key in encoding:
        if key not in levels:
            raise ValueError(f"pyramid.encoding has an unknown level {short(key)}; the levels are "
                             f"{short(list(levels))}")
    new_encodings: dict[str, list[VarEncoding]] = {v.name: list(v.encodings) for v in spec.variables}
    for key, lvl in levels.items():
        if key not in encoding:
            raise ValueError(f"pyramid.encoding has no entry for level {key!r}; every level needs one")
        entries = encoding[key]
        if not isinstance(entries, Mapping):
            raise TypeError(f"pyramid.encoding[{key!r}] must be a dict of variables, got {type(entries).__name__}")
        names = [v.name for v in spec.variables]
        for name in entries:
            if name not in names:
                raise ValueError(f"pyramid.encoding[{key!r}] names an unknown variable {short(name)}; the "
                                 f"gridded variables are {short(names)}")
        for v in spec.variables:
            if v.name not in entries:
                raise ValueError(f"pyramid.encoding[{key!r}] has no entry for variable {v.name!r}")
            where = f"pyramid.encoding[{key!r}][{v.name!r}]"
            new_encodings[v.name][lvl] = _checked(where, entries[v.name], v.encodings[lvl], v.dims, v.shapes[lvl],
                                                  fixed_encoding(v, lvl))
    variables = tuple(replace(v, encodings=tuple(new_encodings[v.name])) for v in spec.variables)
    return replace(spec, variables=variables)


def _checked(where: str, entry: Any, planned: VarEncoding, dims: tuple[str, ...],
             shape: tuple[int, ...], fixed_keys: dict[str, Any]) -> VarEncoding:
    """One variable's entry at one level, checked against its dims, as a VarEncoding."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be a dict with 'chunks' (and 'shards'), got {type(entry).__name__}")
    fixed = {**{k: v for k, v in planned.to_xarray().items() if k not in EDITABLE_KEYS}, **fixed_keys}
    for k in entry:
        if k in EDITABLE_KEYS:
            continue
        if k in fixed:
            if not _same(entry[k], fixed[k]):
                raise ValueError(f"{where}[{k!r}] cannot be edited (it is planned as {short(fixed[k])}); "
                                 f"editable keys: {', '.join(EDITABLE_KEYS)}")
            continue
        raise ValueError(f"{where} has an unknown key {short(k)}; editable keys: {', '.join(EDITABLE_KEYS)}")
    if "chunks" not in entry:
        raise ValueError(f"{where} has no 'chunks'")
    chunks = _sizes(f"{where}['chunks']", entry["chunks"], dims)
    shards = entry.get("shards")
    if shards is None:
        return replace(planned, chunks=chunks, shards=None)
    shards = _sizes(f"{where}['shards']", shards, dims)
    for dim, c, s in zip(dims, chunks, shards):
        if s % c:
            raise ValueError(f"{where}['shards'] {shards} is not a multiple of chunks {chunks} along {dim!r} "
                             f"({s} % {c} = {s % c})")
    return replace(planned, chunks=chunks, shards=shards)


def _sizes(where: str, value: Any, dims: tuple[str, ...]) -> tuple[int, ...]:
    """A chunk or shard shape: one positive int per dim (larger than the array is fine, as in zarr)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{where} must be a tuple of {len(dims)} ints (one per dim {dims}), got {short(value)}")
    if len(value) != len(dims):
        raise ValueError(f"{where} {short(value)} has {len(value)} entries but the variable has {len(dims)} dims "
                         f"{dims}")
    for dim, n in zip(dims, value):
        if isinstance(n, bool) or not isinstance(n, Integral):
            raise TypeError(f"{where} {short(value)}: the size along {dim!r} must be an int, got {short(n)}")
        if n < 1:
            raise ValueError(f"{where} {short(value)}: the size along {dim!r} must be positive, got {n}")
    return tuple(int(n) for n in value)


__all__ = ["planned_encoding", "apply_encoding", "encoding_key", "level_key", "EDITABLE_KEYS"]
