"""The store side of an update: which nodes a pyramid holds, reading and writing their documents,
clearing and replacing arrays.

Everything here reads or writes ``zarr.json`` documents (and chunk keys) directly and
concurrently: an update touches many small documents, and one round of concurrent requests keeps
planning and preparing cheap on object stores. Used by :mod:`topozarr_core.update.pyramid_update` (prepare / finish) and
:mod:`topozarr_core.update.checks` (the documents it checks).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import numpy as np
import xarray as xr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from topozarr_core.layout.conventions import comparable, level_attributes, stored_attributes
from topozarr_core.layout.level_dataset import crs_coord_name, level_dataset
from topozarr_core.layout.paths import data_path

# -- the nodes of a pyramid ----------------------------------------------------------------------


def gridded_arrays(spec: Any) -> dict[str, tuple[Any, int, bool]]:
    """{path: (variable, level, is missing-count array)} of every published array written region by
    region. The missing counts are scratch of one write (never published): an update makes its own
    (``layout.create_scratch_counts``).

    :param spec: the pyramid's spec (:class:`~topozarr_core.spec.pyramid_spec.PyramidSpec`).
    """
    out: dict[str, tuple[Any, int, bool]] = {}
    for v in spec.variables:
        for lvl in range(len(spec.factors)):
            out[data_path(lvl, v.name)] = (v, lvl, False)
    return out



def grown_arrays(spec: Any, dim: str) -> dict[str, tuple[Any, int, bool]]:
    """The gridded arrays having ``dim``: those an update grows (or relays out).

    :param spec: the pyramid's spec.
    :param dim: the dimension an update appends along.
    """
    return {p: entry for p, entry in gridded_arrays(spec).items() if dim in entry[0].dims}


def state_paths(spec: Any, dim: str) -> list[str]:
    """The documents whose content tells an update's starting point: the arrays it grows and the
    level-0 coordinate along ``dim`` (compared by :func:`state_digest` between plan and prepare).

    :param spec: the pyramid's spec.
    :param dim: the dimension an update appends along.
    """
    return sorted(grown_arrays(spec, dim)) + [f"0/{dim}"]


def state_digest(root: dict | None, docs: dict[str, dict | None]) -> str:
    """A digest of the root document and ``docs`` (JSON as stored; None for a missing node)."""
    text = json.dumps({"root": root, "docs": docs}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def level_variables(ds: xr.Dataset, spec: Any) -> dict[str, str]:
    """{name: kind} of the arrays of every level group: gridded / x / y / crs / other.

    :param ds: the source dataset.
    :param spec: the pyramid's spec.
    """
    tmpl, _ = level_dataset(ds, spec, 0, placeholder)
    gridded = {v.name for v in spec.variables}
    crs_name = crs_coord_name(ds)
    kinds = {}
    for name in map(str, tmpl.variables):
        kinds[name] = ("gridded" if name in gridded else "x" if name == spec.x_dim else "y" if name == spec.y_dim
                       else "crs" if name == crs_name else "other")
    return kinds


def placeholder(v: Any, level: int) -> np.ndarray:
    """Zero-cost stand-in for gridded values (those variables are dropped before anything is written).

    :param v: the variable's spec (:class:`~topozarr_core.spec.variables.VarSpec`).
    :param level: the level index.
    """
    return np.broadcast_to(np.zeros((), dtype=v.level_dtype(level)), v.shapes[level])


def shard_unit(v: Any, level: int) -> list[int]:
    """The chunk grid of a gridded array as written: its shard shape (chunk shape when unsharded).

    :param v: the variable's spec.
    :param level: the level index.
    """
    enc = v.encodings[level]
    return list(enc.shards if enc.shards is not None else enc.chunks)


def chunk_grid_of(doc: dict) -> list[int] | None:
    """The ``chunk_grid`` chunk shape of an array document.

    None when ``doc`` has none (a group, or a malformed document).

    :param doc: a parsed ``zarr.json``.
    """
    try:
        return list(doc["chunk_grid"]["configuration"]["chunk_shape"])
    except (KeyError, TypeError):
        return None


def appended_variables(ds: xr.Dataset, spec: Any, dim: str) -> tuple[MemoryStore, list[tuple[str, str]]]:
    """The coordinates / carried variables along ``dim`` of every level, written (in memory) by
    xarray exactly as a build writes them; returns the store and (source path, target path) pairs.
    Variables without a spatial dim are the same at every level: written once, copied to each.

    :param ds: the source dataset (with the appended data).
    :param spec: the pyramid's spec.
    :param dim: the dimension an update appends along.
    """
    mem = MemoryStore()
    gridded = {v.name for v in spec.variables}
    first = level_dataset(ds, spec, 0, placeholder)
    names = {str(n): bool({spec.x_dim, spec.y_dim} & set(var.dims)) for n, var in first[0].variables.items()
             if dim in var.dims and n not in gridded}  # name -> has a spatial dim (differs per level)
    copies: list[tuple[str, str]] = []
    for lvl in range(len(spec.factors)):
        if lvl == 0 or any(names.values()):
            level_ds, encoding = first if lvl == 0 else level_dataset(ds, spec, lvl, placeholder)
            sub = level_ds.drop_vars([n for n in level_ds.variables if n in gridded])
            sub.to_zarr(mem, group=str(lvl), mode="w", consolidated=False, zarr_format=3,  # chunked as built
                        encoding={n: e for n, e in encoding.items() if n in sub.variables})
        for name, per_level in names.items():
            src_lvl = lvl if per_level else 0
            copies.append((f"{src_lvl}/{name}", f"{lvl}/{name}"))
    return mem, copies


# -- documents ------------------------------------------------------------------------------------


def children(store: Any, groups: list[str]) -> dict[str, set[str]]:
    """{group: names of its child nodes}, listed concurrently.

    :param store: the zarr store.
    :param groups: group paths (``""`` is the root).
    """
    async def one(path: str) -> set[str]:
        return {k for k in [k async for k in store.list_dir(f"{path}/" if path else "")] if k != "zarr.json"}

    async def run() -> list[set[str]]:
        return list(await asyncio.gather(*(one(g) for g in groups)))

    return dict(zip(groups, sync(run())))


def read_docs(store: Any, paths: list[str]) -> dict[str, dict | None]:
    """The ``zarr.json`` documents of ``paths`` (None when missing), fetched concurrently.

    :param store: the zarr store.
    :param paths: node paths (``""`` is the root).
    """
    proto = default_buffer_prototype()

    async def one(path: str) -> dict | None:
        buf = await store.get(f"{path}/zarr.json" if path else "zarr.json", prototype=proto)
        return None if buf is None else json.loads(buf.to_bytes())

    async def run() -> list[dict | None]:
        return list(await asyncio.gather(*(one(p) for p in paths)))

    return dict(zip(paths, sync(run())))


def write_docs(store: Any, docs: dict[str, dict]) -> None:
    """Write the ``zarr.json`` documents ``{path: doc}`` concurrently.

    :param store: the zarr store.
    :param docs: ``{node path: document}``.
    """
    proto = default_buffer_prototype()

    async def run() -> None:
        await asyncio.gather(*(store.set(f"{p}/zarr.json", proto.buffer.from_bytes(json.dumps(d, indent=2).encode()))
                               for p, d in docs.items()))

    sync(run())


def refresh_level_attributes(store: Any, spec: Any) -> list[str]:
    """Give every level group the attributes a build of the source writes (the dataset's global
    attributes may have changed, e.g. a ``history``); returns the groups rewritten.

    :param store: the zarr store of the pyramid.
    :param spec: the pyramid's spec (its ``source_attrs`` are the new global attributes).
    """
    groups = [str(lvl) for lvl in range(len(spec.factors))]
    docs = read_docs(store, groups)
    changed = {}
    for lvl, path in enumerate(groups):
        doc = docs[path]
        if doc is None:
            continue
        old = doc.get("attributes") or {}
        want = {**{k: v for k, v in old.items() if k == "coordinates"},
                **stored_attributes(level_attributes(spec.grid, spec.crs, spec.factors[lvl], spec.source_attrs))}
        if comparable(old) != comparable(want):
            changed[path] = {**doc, "attributes": want}
    write_docs(store, changed)
    return sorted(changed)


def grown_doc(doc: dict, shape: tuple[int, ...], unit: list[int]) -> dict:
    """``doc`` with another shape and chunk grid (codecs, attributes and fill value kept).

    :param doc: the array's ``zarr.json`` (not modified).
    :param shape: the new shape.
    :param unit: the new chunk grid shape (the shard shape when sharded).
    """
    out = json.loads(json.dumps(doc))
    out["shape"] = [int(n) for n in shape]
    out["chunk_grid"]["configuration"]["chunk_shape"] = [int(n) for n in unit]
    return out


# -- arrays ---------------------------------------------------------------------------------------


def clear_chunks(store: Any, paths: list[str]) -> None:
    """Delete every chunk (shard) of the arrays at ``paths``, keeping their ``zarr.json``.

    The document stays, so an update killed between this and the new document leaves an array
    that still opens (empty, to be rewritten whole by the resumed update), never a lost node.

    :param store: the zarr store.
    :param paths: array paths.
    """

    async def one(path: str) -> None:
        meta = f"{path}/zarr.json"
        keys = [k async for k in store.list_prefix(f"{path}/") if k != meta]
        if keys and all(k.startswith(f"{path}/c/") for k in keys):
            await store.delete_dir(f"{path}/c")  # default chunk keys: one prefix delete
        else:
            await asyncio.gather(*(store.delete(k) for k in keys))

    async def run() -> None:
        await asyncio.gather(*(one(p) for p in paths))

    sync(run())


def replace_array(src: Any, dst: Any, src_path: str, dst_path: str) -> None:
    """Make ``dst``'s node at ``dst_path`` a copy of ``src``'s at ``src_path`` (metadata first)."""

    async def run() -> None:
        proto = default_buffer_prototype()
        keys = [k async for k in src.list_prefix(f"{src_path}/")]
        meta = f"{src_path}/zarr.json"
        await dst.delete_dir(dst_path)
        for key in [meta] + sorted(k for k in keys if k != meta):
            buf = await src.get(key, prototype=proto)
            await dst.set(dst_path + key[len(src_path):], buf)

    sync(run())


__all__ = ["gridded_arrays", "grown_arrays", "state_paths", "state_digest", "level_variables", "placeholder",
           "shard_unit", "chunk_grid_of", "appended_variables", "children", "read_docs", "write_docs", "grown_doc",
           "refresh_level_attributes",
           "clear_chunks", "replace_array"]
