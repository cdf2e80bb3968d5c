"""The documents of a level: xarray builds one level, the coarser ones are derived from it.

Why: building a level through xarray (template Dataset, ``to_zarr(compute=False)``) costs ~15 ms of
GIL-bound work, paid for every level while region threads compete for the same GIL. Two levels of
one pyramid differ only in their shapes and chunking, the group's geo attributes, the x/y
coordinate values and (for the hidden missing counts) a dtype; so once one level exists in memory
the next one is a few edited JSON documents and two small coordinate writes (a few ms).

Only what is known to be identical is derived: an array along a spatial dim that is neither a
gridded variable nor the x/y coordinate (a carried variable coarsened along one axis), a gridded
variable whose dtype or sharding changes between the levels, or a coordinate stored in more than
one chunk sends the level to xarray, as before. ``tests/core/layout/test_level_docs.py`` checks derived
levels against xarray-built ones document by document.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.metadata.v3 import ArrayV3Metadata

from topozarr_core.layout.conventions import level_attributes, stored_attributes
from topozarr_core.layout.level_dataset import axis_centres, level_dataset, staging_data
from topozarr_core.layout.paths import (
    MISSING_GROUP,
    is_missing_array_key,
    keeps_scratch_counts,
    missing_dtype,
    missing_path,
)
from topozarr_core.spec.pyramid_spec import PyramidSpec

ZARR_JSON = "zarr.json"


class LevelDocuments:
    """Level documents (and coordinate chunks) in memory, ready to be copied into a target.

    One instance serves one write: it keeps the levels it has built (a few KB each) so that the
    next level can be derived from the closest one with the same variable dtypes and sharding.
    """

    def __init__(self, ds: xr.Dataset, spec: PyramidSpec) -> None:
        """:param ds: the source dataset.
        :param spec: the pyramid's spec.
        """
        self.ds, self.spec = ds, spec
        self._levels: dict[int, dict[str, Buffer]] = {}

    def staged(self, level: int) -> zarr.storage.MemoryStore:
        """A memory store holding ``level``'s documents, coordinate chunks and missing-count arrays.

        Staging the first level before touching the target is the last input check (xarray's own
        encoding of every variable); a level staged once is reused."""
        if level in self._levels:
            return zarr.storage.MemoryStore(dict(self._levels[level]))
        ref = self._reference(level)
        keys = derive_level(self._levels[ref], self.ds, self.spec, ref, level) if ref is not None else None
        if keys is None:
            keys = build_level(self.ds, self.spec, level)
        missing = derive_missing(self._levels[ref], self.spec, ref, level) if ref is not None else None
        if missing is None:
            missing = create_missing(self.spec, level)
        keys.update(missing)
        self._levels[level] = keys
        return zarr.storage.MemoryStore(dict(keys))

    def _reference(self, level: int) -> int | None:
        """The closest built level whose gridded variables share ``level``'s dtypes and sharding."""
        def signature(lvl: int) -> tuple:
            return tuple((v.level_dtype(lvl), v.encodings[lvl].shards is None) for v in self.spec.variables)

        same = [lvl for lvl in self._levels if signature(lvl) == signature(level)]
        return min(same, key=lambda lvl: abs(lvl - level)) if same else None


def build_level(ds: xr.Dataset, spec: PyramidSpec, level: int) -> dict[str, Buffer]:
    """The level's keys as xarray writes them (placeholder data in one block, ``compute=False``).

    :param ds: the source dataset.
    :param spec: the pyramid's spec.
    :param level: the level index.
    """
    store = zarr.storage.MemoryStore()
    tmpl, encoding = level_dataset(ds, spec, level, staging_data)
    tmpl.to_zarr(store, group=str(level), mode="w", compute=False, zarr_format=3, consolidated=False,
                 encoding=encoding)
    return dict(store._store_dict)


def derive_level(ref_keys: dict[str, Buffer], ds: xr.Dataset, spec: PyramidSpec, ref: int,
                 level: int) -> dict[str, Buffer] | None:
    """Level ``level``'s keys edited from level ``ref``'s, or None when that would not be exact.

    :param ref_keys: the keys of level ``ref`` (others are ignored), as :func:`build_level` returns them.
    :param ds: the source dataset.
    :param spec: the pyramid's spec.
    :param ref: the level the keys come from.
    :param level: the level to derive.
    """
    proto = default_buffer_prototype()
    gridded = {v.name: v for v in spec.variables}
    axes = {spec.y_dim: spec.grid.y, spec.x_dim: spec.grid.x}
    src_prefix, dst_prefix = f"{ref}/", f"{level}/"
    ref_keys = {k: b for k, b in ref_keys.items() if k.startswith(src_prefix)}
    docs = {k[len(src_prefix):]: json.loads(b.to_bytes()) for k, b in ref_keys.items() if k.endswith(ZARR_JSON)}
    out: dict[str, Buffer] = {}
    coords: dict[str, np.ndarray] = {}
    copied: set[str] = set()  # arrays along no spatial dim: documents and chunks copied as they are
    for rel, doc in docs.items():
        if rel == ZARR_JSON:
            attrs = stored_attributes(level_attributes(spec.grid, spec.crs, spec.factors[level], spec.source_attrs))
            out[dst_prefix + rel] = GroupMetadata.from_dict({**doc, "attributes": attrs}).to_buffer_dict(proto)[ZARR_JSON]
            continue
        name, _, tail = rel.partition("/")
        if tail != ZARR_JSON or doc.get("node_type") != "array":
            return None  # a nested group: not something level_dataset makes
        dims = doc.get("dimension_names") or []
        edited: dict[str, Any] | None = doc
        if name in gridded:
            v = gridded[name]
            edited = _rechunked(doc, v.shapes[level], v.encodings[level].chunks, v.encodings[level].shards)
        elif name in axes and dims == [name]:
            if doc["chunk_grid"]["configuration"]["chunk_shape"] != doc["shape"]:
                return None  # several chunks: zarr's chunk choice for the new length is not ours to guess
            coords[name] = axis_centres(ds, spec, axes[name], level)
            if str(coords[name].dtype) != doc["data_type"]:
                return None  # integer level-0 coordinates: the coarser levels hold float means
            edited = _rechunked(doc, coords[name].shape, coords[name].shape, None)
        elif set(dims) & set(axes):
            return None  # a carried variable along a spatial dim: its values change, xarray knows how
        else:
            copied.add(name)
        if edited is None:
            return None
        out[dst_prefix + rel] = ArrayV3Metadata.from_dict(edited).to_buffer_dict(proto)[ZARR_JSON]
    if set(coords) != set(axes):
        return None
    for key, buf in ref_keys.items():
        rel = key[len(src_prefix):]
        if not rel.endswith(ZARR_JSON):
            if rel.partition("/")[0] in copied:
                out[dst_prefix + rel] = buf
            elif rel.partition("/")[0] not in coords:
                return None  # a chunk of a gridded array in a template: not expected, not derived
    store = zarr.storage.MemoryStore(out)
    for name, values in coords.items():
        zarr.open_array(store, path=f"{level}/{name}", mode="r+")[...] = values
    return out


def _rechunked(doc: dict[str, Any], shape: tuple[int, ...], chunks: tuple[int, ...],
               shards: tuple[int, ...] | None) -> dict[str, Any] | None:
    """``doc`` with a new shape and chunking; None when its sharding layout would change."""
    codecs = doc["codecs"]
    sharded = len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed"
    if sharded != (shards is not None) or doc["chunk_grid"]["name"] != "regular":
        return None
    doc = json.loads(json.dumps(doc))
    doc["shape"] = list(shape)
    doc["chunk_grid"]["configuration"]["chunk_shape"] = list(shards if sharded else chunks)
    if sharded:
        doc["codecs"][0]["configuration"]["chunk_shape"] = list(chunks)
    return doc


def create_missing(spec: PyramidSpec, level: int) -> dict[str, Buffer]:
    """The hidden per-pixel missing-count arrays of a mean level (see ``paths.MISSING_GROUP``).

    Empty where the level keeps no scratch counts (see :func:`~topozarr_core.layout.paths.keeps_scratch_counts`).

    :param spec: the pyramid's spec.
    :param level: the level index.
    """
    if not keeps_scratch_counts(len(spec.factors), level):
        return {}
    keys: dict[str, Buffer] = {}
    store = zarr.storage.MemoryStore(keys)
    for v in spec.variables:
        if not v.track_missing:
            continue
        enc = v.encodings[level]
        zarr.create_array(
            store,
            name=missing_path(level, v.name),
            shape=v.shapes[level],
            dtype=missing_dtype(spec.factors[level]),
            chunks=enc.chunks,
            shards=enc.shards,
            fill_value=0,
            dimension_names=v.dims,
            overwrite=True,
            zarr_format=3,
        )
    # without the group documents zarr wrote above the arrays: the scratch is no node of the hierarchy
    return {k: buf for k, buf in keys.items() if is_missing_array_key(k)}


def derive_missing(ref_keys: dict[str, Buffer], spec: PyramidSpec, ref: int, level: int) -> dict[str, Buffer] | None:
    """Level ``level``'s missing-count documents edited from level ``ref``'s (None: not derivable).

    Empty where the level keeps no scratch counts or no variable tracks missing pixels.

    :param ref_keys: keys that hold level ``ref``'s missing-count documents.
    :param spec: the pyramid's spec.
    :param ref: the level the documents come from.
    :param level: the level to derive.
    """
    tracked = [v for v in spec.variables if v.track_missing]
    if not keeps_scratch_counts(len(spec.factors), level) or not tracked:
        return {}
    if missing_dtype(spec.factors[ref]) != missing_dtype(spec.factors[level]):
        return None  # another dtype can mean other codec options (a byte order): zarr decides
    src = f"{MISSING_GROUP}/{ref}/"
    want = [f"{missing_path(ref, v.name)}/{ZARR_JSON}" for v in tracked]
    if any(k not in ref_keys for k in want) or any(k.startswith(src) and k not in want for k in ref_keys):
        return None  # level 0 has no missing counts; a chunk or stray key is not ours to copy
    proto = default_buffer_prototype()
    out = {}
    for v in tracked:
        doc = json.loads(ref_keys[f"{missing_path(ref, v.name)}/{ZARR_JSON}"].to_bytes())
        enc = v.encodings[level]
        doc = _rechunked(doc, v.shapes[level], enc.chunks, enc.shards)
        if doc is None:
            return None
        out[f"{missing_path(level, v.name)}/{ZARR_JSON}"] = ArrayV3Metadata.from_dict(doc).to_buffer_dict(proto)[ZARR_JSON]
    return out
