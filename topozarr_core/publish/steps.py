"""Initialise and publish a pyramid in a target store.

Order matters for "never half-published" (see :mod:`topozarr_core.publish.root_doc`): every input and target check
first (:mod:`topozarr_core.publish.contract`, the first level staged in memory), then ``prepare_target``
replaces the root by an unpublished one in a single write, and only then deletes the nodes the
rewrite replaces; region writes fill the levels; ``publish`` writes the ``multiscales`` root
metadata last. A reader therefore sees the old pyramid, a root without ``multiscales``, or the new
pyramid, never a layout that points at missing or half-written levels.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from topozarr_core.layout.conventions import dataset_attributes, multiscale_attributes, stored_attributes
from topozarr_core.layout.level_documents import LevelDocuments, create_missing
from topozarr_core.layout.paths import MISSING_GROUP, keeps_scratch_counts, missing_path
from topozarr_core.publish.contract import TargetState, ignorable
from topozarr_core.publish.root_coords import publish_copies
from topozarr_core.publish.root_doc import (
    INCOMPLETE,
    OPTIONS_KEY,
    OWNED_KEY,
    ROOT_DOC,
    creation_options,
    owned_nodes,
    unpublished_attrs,
    write_root,
)
from topozarr_core.spec.pyramid_spec import PyramidSpec
from topozarr_core.store.lease import LEASE_KEY
from topozarr_core.store.targets import check_writable, is_icechunk_store


def prepare_target(store: Any, spec: PyramidSpec, mode: str, levels: list[int], state: TargetState) -> None:
    """Unpublish the root (one atomic write), then delete what the rewrite replaces: in mode ``w`` every
    node this project wrote there (a foreign file beside them stays), or everything when the caller
    opted in to replacing a foreign target. ``state`` is what :func:`check_target` found.

    :param store: the target zarr store.
    :param spec: the pyramid's spec.
    :param mode: ``"w"`` or ``"a"`` (``"w-"`` found the target empty).
    :param levels: the levels the write rewrites.
    :param state: what :func:`check_target` found.
    """
    check_writable(store)  # one line instead of the backend's dump at the first write below
    new_nodes = {str(lvl) for lvl in range(len(spec.factors))} | {MISSING_GROUP}
    if mode == "a":
        attrs = unpublished_attrs(state.attrs, INCOMPLETE, new_nodes)
    else:  # a new pyramid: our nodes are the new ones and whatever the previous pyramid of ours owned
        attrs = unpublished_attrs({}, INCOMPLETE, new_nodes | (owned_nodes(state.attrs) if state.kind == "pyramid"
                                                               else set()))
    write_root(store, attrs)
    if mode == "a":
        # the hidden missing counts of the rewritten levels go too (a new method may keep none)
        tracked = any(v.track_missing for v in spec.variables)
        sync(delete_nodes(store, [f"{MISSING_GROUP}/{lvl}" for lvl in levels if lvl > 0] if tracked
                           else [MISSING_GROUP]))  # (prefixes without group documents: see paths)
        return
    if state.kind == "foreign":  # opted in: the whole target goes
        sync(_delete_all_but(store, {ROOT_DOC, LEASE_KEY}))
    elif state.kind == "pyramid":
        sync(delete_nodes(store, sorted(attrs[OWNED_KEY])))
    if isinstance(store, LocalStore):  # temporary files of an atomic write killed half-way
        for entry in os.scandir(store.root):
            if ignorable(entry.name) and entry.name != LEASE_KEY:
                os.unlink(entry.path)


async def delete_nodes(store: Any, names: list[str]) -> None:
    """Delete whole nodes (groups or arrays, with everything below them) of a pyramid this project wrote.

    The one step of a write that deletes nodes (the old ones of a ``mode="w"`` rebuild, the scratch
    counts before publishing); the kill tests place kills inside it.

    :param store: the target's zarr store.
    :param names: the nodes' paths below the root.
    """
    scratch = [name for name in names if _is_scratch(name)]
    await asyncio.gather(*(_delete_scratch(store, name) for name in scratch))  # first: found via the levels
    await asyncio.gather(*(store.delete_dir(name) for name in names if name not in scratch))


def _is_scratch(name: str) -> bool:
    return name == MISSING_GROUP or name.startswith(f"{MISSING_GROUP}/")


async def _delete_scratch(store: Any, prefix: str) -> None:
    """Delete the scratch counts below ``prefix`` (:data:`topozarr_core.layout.paths.MISSING_GROUP` or one level of it).

    A key prefix goes at once on disk and object stores. Icechunk deletes nodes, not prefixes, and lists
    no node below a prefix without a group document (see :mod:`topozarr_core.layout.paths`), so there the scratch arrays are
    found from the level groups beside them: ``missing_path(level, name)`` for each level's array names."""
    if is_icechunk_store(store):
        levels = [name async for name in store.list_dir("") if name.isdigit()]
        candidates = [missing_path(int(level), name) for level in levels
                      async for name in store.list_dir(level) if name != ROOT_DOC]
        candidates = [path for path in candidates if path.startswith(f"{prefix}/")]
        found = await asyncio.gather(*(store.exists(f"{path}/{ROOT_DOC}") for path in candidates))
        await asyncio.gather(*(store.delete_dir(path) for path, there in zip(candidates, found) if there))
    await store.delete_dir(prefix)  # (and the group documents a write of an older version left)


async def _delete_all_but(store: Any, keep: set[str]) -> None:
    keys = [k async for k in store.list() if k not in keep]
    await asyncio.gather(*(store.delete(k) for k in keys))


def initialise_level(store: Any, ds: xr.Dataset, spec: PyramidSpec, level: int,
                     docs: LevelDocuments | None = None) -> None:
    """(Re)create one level's group, coordinates and empty arrays (after :func:`prepare_target`).

    The level is staged in memory (:class:`LevelDocuments`: pass one instance for all the levels of a
    write, so coarser levels are derived instead of rebuilt by xarray), then its documents and
    coordinate chunks replace the level in ``store`` in one concurrent batch: one round of store
    requests instead of ~15 sequential ones per level (most of a level's creation time on a local
    disk, far more on object storage). Levels are independent of each other here, so a writer may
    create level ``L + 1`` while level ``L``'s regions are being written.

    :param store: the target zarr store.
    :param ds: the source dataset.
    :param spec: the pyramid's spec.
    :param level: the level index.
    :param docs: the write's staged level documents, or None (a fresh one for this level).
    """
    staging = (docs or LevelDocuments(ds, spec)).staged(level)
    sync(_replace(staging, store, [f"{level}/"] + _scratch_prefixes(spec, [level])))


def _scratch_prefixes(spec: PyramidSpec, levels: Any) -> list[str]:
    return [f"{missing_path(lvl, v.name)}/" for lvl in levels for v in spec.variables
            if v.track_missing and keeps_scratch_counts(len(spec.factors), lvl)]


def create_scratch_counts(store: Any, spec: PyramidSpec, levels: Any) -> None:
    """(Re)create the empty scratch missing-count arrays of ``levels`` (an update's, at its grown shapes).

    :param store: the target zarr store.
    :param spec: the pyramid's spec.
    :param levels: the level indices.
    """
    levels = list(levels)
    keys: dict = {}
    for lvl in levels:
        keys.update(create_missing(spec, lvl))
    prefixes = _scratch_prefixes(spec, levels)
    if prefixes:
        sync(_replace(zarr.storage.MemoryStore(keys), store, prefixes))


def drop_scratch(store: Any) -> None:
    """Delete the scratch group (missing counts): a published pyramid holds only what readers expect.

    :param store: the target zarr store.
    """
    sync(_delete_scratch(store, MISSING_GROUP))


async def _replace(staging: Any, store: Any, prefixes: list[str]) -> None:
    """Replace everything under ``prefixes`` in ``store`` by ``staging``'s keys there (and copy the
    intermediate group documents staging has above them, if any)."""
    proto = default_buffer_prototype()
    await asyncio.gather(*(store.delete_dir(p.rstrip("/")) for p in prefixes))
    parents = {"/".join(parts[:i]) + "/zarr.json"
               for parts in (p.rstrip("/").split("/") for p in prefixes) for i in range(1, len(parts))}
    wanted = [k async for k in staging.list() if k in parents or any(k.startswith(p) for p in prefixes)]

    async def copy(key: str) -> None:
        buf = await staging.get(key, prototype=proto)
        if buf is not None:
            await store.set(key, buf)

    # documents first, parents before children, then chunks: Icechunk refuses a node whose parent
    # does not exist yet and a chunk whose array does not
    docs = [k for k in wanted if k.endswith("zarr.json")]
    for depth in sorted({k.count("/") for k in docs}):
        await asyncio.gather(*(copy(k) for k in docs if k.count("/") == depth))
    await asyncio.gather(*(copy(k) for k in wanted if not k.endswith("zarr.json")))


def publish(store: Any, spec: PyramidSpec) -> dict:
    """Write the root ``multiscales``/``spatial:``/``proj:`` metadata: the last step of a write.

    :param store: the target zarr store.
    :param spec: the pyramid's spec.
    :returns: the root attributes written.
    """
    return publish_root(store, published_attrs(spec))


def publish_root(store: Any, attrs: dict) -> dict:
    """The last step of every write: the scratch data goes, the root copies of level 0's non-spatial
    coordinates are brought up to date (:mod:`topozarr_core.publish.root_coords`), then the published root (one atomic write).

    :param store: the target zarr store.
    :param attrs: the root attributes to publish.
    :returns: the root attributes written (with ``topozarr:owned`` listing the root copies).
    """
    drop_scratch(store)  # before the root: a published root never sits over scratch data
    attrs = publish_copies(store, attrs)  # before the root too: never a published root over a stale copy
    write_root(store, attrs)
    return attrs


def published_attrs(spec: PyramidSpec) -> dict:
    """The root attributes of the finished pyramid: the dataset's global attributes under the
    convention keys (which always win, see :func:`~topozarr_core.layout.conventions.dataset_attributes`).

    :param spec: the pyramid's spec.
    """
    attrs = {**stored_attributes(dataset_attributes(spec.source_attrs)),
             **multiscale_attributes(spec.grid, spec.crs, list(spec.factors), spec.method, spec.layer_hints)}
    attrs[OPTIONS_KEY] = creation_options(spec)
    return attrs
