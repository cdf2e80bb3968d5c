"""Root copies of level 0's non-spatial dimension coordinates (``/time`` beside ``/0/time``).

Why: zarr-layer (0.5.0) resolves a value selector (``{time: <value>}``) by reading ``/<dim>`` at the
store root, while a pyramid keeps its coordinates inside each level group. A byte-for-byte copy of
the level-0 array at the root (same values, dtype, attributes, encoding) makes value selectors work
on any server: a bucket, a static file server. xarray reads it as a root coordinate equal to the
levels' own, so ``xr.open_datatree`` still aligns.

:func:`publish_copies` runs inside ``layout.publish_root``, just before the published root is
written, and lists the copies in the root's ``topozarr:owned``: a rebuild deletes or replaces them.
A node of such a name at the root that we did not write is foreign (:func:`foreign_nodes`): the
writers refuse it unless the caller opted in to replacing foreign data.
"""

from __future__ import annotations

import asyncio
from typing import Any

import xarray as xr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from topozarr_core.layout.array_docs import read_docs
from topozarr_core.publish.root_doc import (
    INCOMPLETE,
    OPTIONS_KEY,
    OWNED_KEY,
    STATUS_KEY,
    is_published,
    is_pyramid_root,
    owned_nodes,
    read_root,
    root_attrs,
    unpublished_attrs,
    write_root,
)


def planned_names(ds: xr.Dataset | None, x_dim: str, y_dim: str) -> list[str]:
    """The root copies a pyramid of ``ds`` gets: its 1-D dimension coordinates along non-spatial dims.

    :param ds: the source dataset, or None (no copies).
    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    """
    if ds is None:
        return []
    return sorted(str(n) for n, v in ds.coords.items() if v.dims == (n,) and n not in (x_dim, y_dim))


def first_level(attrs: dict) -> str:
    """The path of level 0 (the first ``multiscales`` layout asset; ``"0"`` for our layouts).

    :param attrs: the root's attributes.
    """
    layout = (attrs.get("multiscales") or {}).get("layout") or []
    asset = layout[0].get("asset") if layout and isinstance(layout[0], dict) else None
    return str(asset) if asset else "0"


def spatial_dims(attrs: dict) -> set[str]:
    """The spatial dimension names of a root: from ``topozarr:options``, else ``spatial:dimensions``.

    :param attrs: the root's attributes.
    """
    options = attrs.get(OPTIONS_KEY)
    if isinstance(options, dict) and options.get("x_dim") and options.get("y_dim"):
        return {str(options["x_dim"]), str(options["y_dim"])}
    return {str(d) for d in attrs.get("spatial:dimensions") or []}


def level_names(store: Any, attrs: dict) -> list[str]:
    """The 1-D non-spatial dimension coordinates level 0 holds in ``store`` (what gets copied).

    :param store: the pyramid's zarr store.
    :param attrs: the root's attributes.
    """
    level = first_level(attrs)
    spatial = spatial_dims(attrs)

    async def children() -> list[str]:
        return [k async for k in store.list_dir(f"{level}/") if k != "zarr.json"]

    names = [n for n in sync(children()) if n not in spatial]
    docs = read_docs(store, [f"{level}/{n}" for n in names])
    return sorted(n for n in names if _is_dim_coord(docs[f"{level}/{n}"], n))


def _is_dim_coord(doc: dict | None, name: str) -> bool:
    return (isinstance(doc, dict) and doc.get("node_type") == "array" and len(doc.get("shape") or []) == 1
            and list(doc.get("dimension_names") or []) == [name])


async def _keys_below(store: Any, path: str) -> list[str]:
    """The keys below ``path`` (none for a missing node: Icechunk refuses to list a prefix that is no node)."""
    try:
        return [k async for k in store.list_prefix(f"{path}/")]
    except (FileNotFoundError, ValueError):
        return []


async def _node_bytes(store: Any, path: str) -> dict[str, bytes]:
    """{key below ``path``: bytes} of one (small, 1-D) array node."""
    proto = default_buffer_prototype()
    keys = await _keys_below(store, path)
    bufs = await asyncio.gather(*(store.get(k, prototype=proto) for k in keys))
    return {k[len(path) + 1:]: b.to_bytes() for k, b in zip(keys, bufs) if b is not None}


def stale_names(store: Any, attrs: dict, names: list[str] | None = None) -> list[str]:
    """The copies that are missing at the root or differ (any key, byte for byte) from level 0's array.

    :param store: the pyramid's zarr store.
    :param attrs: the root's attributes.
    :param names: the copies to compare (default: every one level 0 has).
    """
    level = first_level(attrs)
    names = level_names(store, attrs) if names is None else names

    async def run() -> list[tuple[dict, dict]]:
        return list(await asyncio.gather(*(asyncio.gather(_node_bytes(store, f"{level}/{n}"), _node_bytes(store, n))
                                           for n in names)))

    return [n for n, (want, got) in zip(names, sync(run())) if want != got]


def _copy(store: Any, level: str, names: list[str]) -> None:
    """Replace each root node ``name`` by a copy of ``level/name`` (document first, then chunks)."""

    async def one(name: str) -> None:
        src = await _node_bytes(store, f"{level}/{name}")
        await store.delete_dir(name)
        proto = default_buffer_prototype()
        await store.set(f"{name}/zarr.json", proto.buffer.from_bytes(src["zarr.json"]))
        await asyncio.gather(*(store.set(f"{name}/{k}", proto.buffer.from_bytes(v))
                               for k, v in src.items() if k != "zarr.json"))

    async def run() -> None:
        await asyncio.gather(*(one(n) for n in names))

    sync(run())


def _delete(store: Any, names: list[str]) -> None:
    async def run() -> None:
        await asyncio.gather(*(store.delete_dir(n) for n in names))

    sync(run())


def publish_copies(store: Any, attrs: dict) -> dict:
    """Bring the root copies up to date with level 0; returns ``attrs`` listing them in ``topozarr:owned``.

    Called right before the published root is written. The copies are first listed as ours in the
    current root (one extra root write, only when they are not listed yet), so a kill at any instant
    leaves every copy under a root that owns it; a published root over copies about to change is
    unpublished first, so no reader sees a published root over a missing or stale copy. Copies of ours
    that level 0 no longer has a coordinate for are deleted.

    :param store: the pyramid's zarr store.
    :param attrs: the root attributes about to be published.
    """
    names = level_names(store, attrs)
    stale = stale_names(store, attrs, names)
    current = read_root(store)
    cur_attrs = root_attrs(current) if is_pyramid_root(current) else {}
    listed = owned_nodes(cur_attrs) if cur_attrs else set()
    if stale and (not set(stale) <= listed or is_published(cur_attrs)):
        status = cur_attrs.get(STATUS_KEY) or INCOMPLETE
        write_root(store, unpublished_attrs(cur_attrs or attrs, status, set(stale)))
    _copy(store, first_level(attrs), stale)
    levels = owned_nodes({k: v for k, v in attrs.items() if k != OWNED_KEY})  # the levels and the scratch group
    leftover = sorted(listed - levels - set(names))  # copies of ours level 0 no longer has (a mode="a" rewrite)
    if leftover:
        _delete(store, leftover)
    return {**attrs, OWNED_KEY: sorted(levels | set(names))}


def foreign_nodes(store: Any, names: list[str], owned: set[str]) -> list[str]:
    """Those of ``names`` that exist at the root of ``store`` (any key below them) but are not ``owned``."""

    async def exists(name: str) -> bool:
        if await store.exists(f"{name}/zarr.json"):
            return True
        try:  # a file of that name (Icechunk holds only nodes: it refuses such a key)
            if await store.exists(name):
                return True
        except ValueError:
            pass
        return bool(await _keys_below(store, name))

    candidates = [n for n in names if n not in owned]

    async def run() -> list[bool]:
        return list(await asyncio.gather(*(exists(n) for n in candidates)))

    return [n for n, found in zip(candidates, sync(run())) if found]


__all__ = ["planned_names", "level_names", "stale_names", "publish_copies", "foreign_nodes", "first_level"]
