"""``pyramid.encoding`` as an editable plan: build it from a spec, check a user's edits, apply them.

topozarr tells its users to edit ``pyramid.encoding`` before writing to override the recommended
chunks and shards. Here an edit is checked as a whole before anything is written (one-line
errors naming the level, the variable and the key), then applied to the spec's per-level
:class:`~topozarr_core.spec.chunking.VarEncoding`, so every consumer of the spec (target checks, level documents,
region plan, validation) sees the same layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from numbers import Integral
from typing import Any

import numpy as np

from topozarr_core.spec.chunking import VarEncoding
from topozarr_core.spec.pyramid_spec import PyramidSpec
from topozarr_core.text import short

#: The keys of a variable's entry an edit may change.
EDITABLE_KEYS = ("chunks", "shards")


def level_key(level: int) -> str:
    """The group path ``DataTree.to_zarr`` expects for a level: ``"/0"``, ``"/1"``, ..."""
    return f"/{level}"


def planned_encoding(spec: PyramidSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """A fresh, mutable copy of the recommended encoding: ``{"/<level>": {var: {"chunks", "shards"}}}``.

    The entries are topozarr's: the gridded variables, the variables over one spatial dim and the long
    1-D coordinates (see :mod:`topozarr_core.spec.chunking`), so level 0 equals ``recommend_encoding`` of the source. A
    variable with a nodata value other than NaN also carries ``fill_value``, its nodata value, which an
    edit may not change: xarray replaces a variable's encoding by the one passed, so the seed's
    ``as_datatree().to_zarr(..., encoding=pyramid.encoding)`` then marks nodata in the zarr ``fill_value``
    as :meth:`Pyramid.write` does (readers such as zarr-layer mask by it).

    :param spec: the pyramid's spec.
    """
    return {level_key(lvl): level_encoding(spec, lvl) for lvl in range(len(spec.factors))}


def level_encoding(spec: PyramidSpec, level: int) -> dict[str, dict[str, Any]]:
    """The planned encoding entries of one level (see :func:`planned_encoding`).

    :param spec: the pyramid's spec.
    :param level: the level index.
    """
    out = {v.name: {**_plain_entry(v.encodings[level].to_xarray()), **fixed_encoding(v, level)}
           for v in spec.variables}
    for name, layouts in spec.side_encodings.items():
        if layouts[level] is not None:
            out[name] = {**_plain_entry(layouts[level].to_xarray()), **side_fixed(spec, name)}
    return out


def side_fixed(spec: PyramidSpec, name: str) -> dict[str, Any]:
    """The non-editable part of a side entry: the zarr ``fill_value`` of a variable over one spatial dim
    whose nodata value is not NaN.

    :param spec: the pyramid's spec.
    :param name: the side entry's variable name.
    """
    return {"fill_value": spec.side_fills[name]} if name in spec.side_fills else {}


def fixed_encoding(var: Any, level: int) -> dict[str, Any]:
    """The non-editable part of a gridded variable's entry at ``level``: the zarr ``fill_value`` of a
    variable whose nodata value is not NaN (nothing otherwise).

    :param var: the gridded variable's spec.
    :param level: the level index.
    """
    from topozarr_core.layout.level_dataset import (
        gridded_encoding,  # levels imports the planning modules this one builds on
    )

    return {k: v for k, v in gridded_encoding(var, level).items() if k in PLANNED_KEYS}


#: The non-editable keys an entry shows.
PLANNED_KEYS = ("fill_value",)
#: Non-editable keys an entry may also hold when they equal what the arrays are written with.
FIXED_KEYS = ("dtype", "_FillValue", "fill_value")


def replan_fixed_keys(encoding: Any, spec: PyramidSpec) -> None:
    """After ``pyramid.method`` changed: the non-editable keys of ``encoding``'s gridded entries become
    ``spec``'s (a method can change the nodata value: a packed variable's ``sum`` is stored unpacked),
    in place; the chunks and shards, edited or not, stay."""
    if not isinstance(encoding, Mapping):
        return  # apply_encoding reports it
    for lvl in range(len(spec.factors)):
        entries = encoding.get(level_key(lvl))
        if not isinstance(entries, Mapping):
            continue
        for v in spec.variables:
            entry = entries.get(v.name)
            if isinstance(entry, dict):
                for k in FIXED_KEYS:
                    entry.pop(k, None)
                entry.update(fixed_encoding(v, lvl))


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
    from topozarr_core.layout.level_dataset import gridded_encoding

    if not isinstance(encoding, Mapping):
        raise TypeError(f"pyramid.encoding must be a dict keyed '/0', '/1', ..., got {type(encoding).__name__}")
    n = len(spec.factors)
    levels = {level_key(lvl): lvl for lvl in range(n)}
    for key in encoding:
        if key not in levels:
            raise ValueError(f"pyramid.encoding has an unknown level {short(key)}; the levels are "
                             f"{short(list(levels))}")
    new_encodings: dict[str, list[VarEncoding]] = {v.name: list(v.encodings) for v in spec.variables}
    new_side: dict[str, list[VarEncoding | None]] = {k: list(v) for k, v in spec.side_encodings.items()}
    names = [v.name for v in spec.variables] + list(spec.side_encodings)
    for key, lvl in levels.items():
        if key not in encoding:
            raise ValueError(f"pyramid.encoding has no entry for level {key!r}; every level needs one")
        entries = encoding[key]
        if not isinstance(entries, Mapping):
            raise TypeError(f"pyramid.encoding[{key!r}] must be a dict of variables, got {type(entries).__name__}")
        for name in entries:
            if name not in names:
                raise ValueError(f"pyramid.encoding[{key!r}] names an unknown variable {short(name)}; the "
                                 f"variables it can hold are {short(names)}")
        for v in spec.variables:
            if v.name not in entries:
                raise ValueError(f"pyramid.encoding[{key!r}] has no entry for variable {v.name!r}")
            fixed = {k: val for k, val in gridded_encoding(v, lvl).items() if k in FIXED_KEYS}
            chunks, shards = _checked(f"pyramid.encoding[{key!r}][{v.name!r}]", entries[v.name], v.dims,
                                      fixed)
            new_encodings[v.name][lvl] = replace(v.encodings[lvl], chunks=chunks, shards=shards)
        for name, dims in spec.side_dims.items():
            if name not in entries:  # no entry: one chunk (xarray's default), as topozarr writes it
                new_side[name][lvl] = None
                continue
            chunks, shards = _checked(f"pyramid.encoding[{key!r}][{name!r}]", entries[name], dims,
                                      side_fixed(spec, name))
            new_side[name][lvl] = VarEncoding(chunks=chunks, shards=shards)
    variables = tuple(replace(v, encodings=tuple(new_encodings[v.name])) for v in spec.variables)
    return replace(spec, variables=variables, side_encodings={k: tuple(v) for k, v in new_side.items()})


def _checked(where: str, entry: Any, dims: tuple[str, ...],
             fixed: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """One variable's entry at one level, checked against its dims: its (chunks, shards)."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be a dict with 'chunks' (and 'shards'), got {type(entry).__name__}")
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
        return chunks, None
    shards = _sizes(f"{where}['shards']", shards, dims)
    for dim, c, s in zip(dims, chunks, shards):
        if s % c:
            raise ValueError(f"{where}['shards'] {shards} is not a multiple of chunks {chunks} along {dim!r} "
                             f"({s} % {c} = {s % c})")
    return chunks, shards


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


__all__ = ["planned_encoding", "level_encoding", "apply_encoding", "replan_fixed_keys", "encoding_key", "level_key",
           "EDITABLE_KEYS"]
