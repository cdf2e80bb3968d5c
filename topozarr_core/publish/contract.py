"""What a write may do to its target: checked read-only, before anything is created or deleted.

The contract (docs/guarantees.md):

* ``mode="w"`` replaces only a missing or empty target, or a pyramid this project wrote (its root
  carries ``topozarr:options`` or ``topozarr:status``). Anything else -- foreign files, a Zarr
  group or array of someone else's, a multiscales pyramid written by another tool -- is refused
  with :class:`ForeignTarget`, saying what is there, unless the caller passes
  ``overwrite_foreign=True`` (CLI ``--overwrite-foreign``). Replacing our own pyramid deletes only
  the nodes we wrote (its levels and hidden groups): a foreign file beside them stays.
* Never, whatever the options: a target equal to, inside, or containing the source; ``/``, a home
  folder, the working directory or one of its ancestors (after resolving ``~``, ``..`` and
  symlinks).
* ``mode="a"`` only into a pyramid this project wrote, built with the same layout options, and
  ``mode="w-"`` only into a missing or empty target.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr
from zarr.core.sync import sync

from topozarr_core.publish.root_coords import foreign_nodes, planned_names
from topozarr_core.publish.root_doc import (
    OPTIONS_KEY,
    ROOT_DOC,
    RootUnreadable,
    creation_options,
    is_pyramid_root,
    multiscales_of,
    owned_nodes,
    read_root,
    root_attrs,
)
from topozarr_core.store.errors import TargetError, error_summary, store_errors
from topozarr_core.store.lease import LEASE_KEY
from topozarr_core.store.locations import Location, dataset_locations, local_location, location_of_store  # noqa: F401
from topozarr_core.store.targets import check_local_target, describe_store
from topozarr_core.text import short

WRITE_MODES = ("w", "w-", "a")
#: Root keys of ours that do not make a target "not empty": a lease left by a write killed at its start,
#: and the temporary files of an atomic write killed half-way (zarr's LocalStore writes
#: ``zarr.<hex>.partial`` and renames it).
_IGNORABLE = {LEASE_KEY}
_PARTIAL = re.compile(r"^(zarr|topozarr\.lease)\.[0-9a-f]{32}\.partial$")


def ignorable(name: str) -> bool:
    """Whether a root key of ours does not make a target "not empty": a stale lease or a half-written temporary file.

    :param name: a key at the target's root.
    """
    return name in _IGNORABLE or bool(_PARTIAL.match(name))
_SYSTEM_DIRS = ("bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "media", "mnt", "opt", "proc", "root",
                "run", "sbin", "srv", "sys", "tmp", "usr", "var")


class ForeignTarget(TargetError):
    """The target holds data this project did not write."""


class UnsafeTarget(TargetError):
    """The target is a location no write may ever replace (root, home, working dir, the source)."""


@dataclass
class TargetState:
    """What is at a target: ``kind`` is "empty" (missing or no keys), "pyramid" (ours) or "foreign"."""

    kind: str
    root: dict | None = None
    what: str = ""
    keys: list[str] = field(default_factory=list)

    @property
    def attrs(self) -> dict:
        """The root group's attributes (empty when there is no root document)."""
        return root_attrs(self.root)


def _sample_keys(store: Any, limit: int = 4) -> list[str]:
    async def first() -> list[str]:
        out: list[str] = []
        try:
            async for key in store.list():
                if not ignorable(key):
                    out.append(key)
                    if len(out) >= limit:
                        break
        except FileNotFoundError:  # a local store whose directory does not exist yet
            pass
        return out

    return sync(first())


def _local_entries(root: Path, limit: int = 4) -> list[str]:
    if not root.is_dir():
        return []
    out = []
    for entry in os.scandir(root):
        if not ignorable(entry.name):
            out.append(entry.name + ("/" if entry.is_dir() else ""))
            if len(out) >= limit:
                break
    return out


def inspect_target(store: Any) -> TargetState:
    """Classify what is at ``store`` (read-only; lists at most a few keys)."""
    try:
        root = read_root(store)
    except RootUnreadable:
        return TargetState("foreign", None, "a zarr.json that is not valid JSON")
    if is_pyramid_root(root):
        return TargetState("pyramid", root, "a pyramid written by topozarr-flows")
    if root is not None:
        node = root.get("node_type")
        attrs = root_attrs(root)
        if node == "group" and not attrs and _only_the_root_document(store):
            return TargetState("empty", root, "an empty Zarr group")
        if node == "array":
            what = "a zarr array at its root, not a pyramid group"
        elif isinstance(attrs.get("multiscales"), (dict, list)):
            what = "a multiscales pyramid that topozarr-flows did not write (no 'topozarr:options' in its root)"
        else:
            what = "a Zarr group that is not a topozarr-flows pyramid"
        return TargetState("foreign", root, what)
    keys = (_local_entries(Path(store.root)) if isinstance(store, zarr.storage.LocalStore)
            else _sample_keys(store))
    if not keys:
        return TargetState("empty")
    listed = ", ".join(repr(k) for k in keys[:3]) + (", ..." if len(keys) > 3 else "")
    return TargetState("foreign", None, f"files that are not a Zarr pyramid ({listed})", keys)


def _only_the_root_document(store: Any) -> bool:
    """Nothing but ``zarr.json`` at the target (an empty group: no members, nothing beside it)."""
    keys = (_local_entries(Path(store.root), limit=2) if isinstance(store, zarr.storage.LocalStore)
            else _sample_keys(store, limit=2))
    return keys == [ROOT_DOC]


def _read_only(store: Any) -> Any:
    """A read-only view (a writable local store would create its directory on first access)."""
    if isinstance(store, zarr.storage.LocalStore) and not store.read_only:
        return store.with_read_only(True)
    return store


def protected_locations() -> list[tuple[Path, str]]:
    """Local folders no write may replace: the filesystem root, home folders, the working directory and
    its ancestors."""
    out: list[tuple[Path, str]] = [(Path("/"), "the filesystem root")]
    homes = {Path.home()}
    try:
        homes |= {Path(p.pw_dir) for p in pwd.getpwall() if p.pw_dir and p.pw_dir != "/"}
    except OSError:
        pass
    out += [(h.resolve(), "a home folder") for h in homes]
    cwd = Path.cwd().resolve()
    out.append((cwd, "the working directory"))
    out += [(p, "an ancestor of the working directory") for p in cwd.parents]
    out += [(Path("/", name), "a system folder") for name in _SYSTEM_DIRS]
    return out


def check_location(target: Location | None, sources: list[Location]) -> None:
    """Refuse targets that are never safe to replace (no opt-in can override this).

    :param target: where the write goes, or None (not a location we can tell: nothing to refuse).
    :param sources: where the source dataset's data lives.
    """
    if target is None:
        return
    if target.kind == "local":
        resolved = Path(target.path)
        for path, what in protected_locations():
            if resolved == path:
                raise UnsafeTarget(f"target {str(resolved)!r} is {what}: a pyramid is never written there; "
                                   "choose a new folder for it")
    for src in sources:
        if target.overlaps(src):
            how = ("is the source" if target.path.rstrip("/") == src.path.rstrip("/")
                   else "is inside the source" if target.path.startswith(src.path.rstrip("/") + "/")
                   else "contains the source")
            raise UnsafeTarget(f"target {target} {how} ({src}): writing there would destroy the source; "
                               "choose another target")


def check_target(store: Any, spec: Any, mode: str, levels: list[int], *, ds: Any = None,
                 sources: tuple[str, ...] = (), overwrite_foreign: bool = False) -> TargetState:
    """Refuse, before writing anything, targets the requested mode must not touch. Returns what is there.

    :param store: the target zarr store.
    :param spec: the pyramid's spec.
    :param mode: ``"w"``, ``"w-"`` or ``"a"``, as in :meth:`~topozarr_core.pyramid.Pyramid.write`.
    :param levels: the levels the write rewrites (all of them in mode ``"w"``).
    :param ds: the source dataset (its files must not be the target), or None.
    :param sources: the source's URLs or paths, also never a target.
    :param overwrite_foreign: the caller's opt-in to deleting data this project did not write.
    """
    if mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {WRITE_MODES}, got {mode!r}")
    src_locations = dataset_locations(ds, sources)
    check_location(location_of_store(store), src_locations)
    if isinstance(store, zarr.storage.LocalStore):
        check_local_target(store.root)
    try:
        state = inspect_target(_read_only(store))
    except store_errors() as err:  # e.g. a missing bucket or rejected credentials: say so, briefly
        raise TargetError(f"cannot read the target {describe_store(store)}: {error_summary(err)}") from None
    all_levels = list(range(len(spec.factors)))
    if mode == "w-":
        if state.kind != "empty":
            raise FileExistsError(f"the target is not empty and mode='w-' refuses to overwrite it (it holds "
                                  f"{state.what}); use mode='w'")
        return state
    if mode == "w":
        if levels != all_levels:
            raise ValueError("mode='w' rewrites the whole pyramid; to rewrite only some levels use mode='a'")
        if state.kind == "foreign" and not overwrite_foreign:
            raise ForeignTarget(f"the target holds {state.what}; refusing to replace data topozarr-flows did not "
                                "write. Choose an empty target, or pass overwrite_foreign=True "
                                "(CLI --overwrite-foreign) to delete everything there")
        _check_root_copies(store, state, spec, ds, overwrite_foreign)
        return state
    _check_append(state, spec, levels, all_levels)
    _check_root_copies(store, state, spec, ds, overwrite_foreign)
    return state


def _check_root_copies(store: Any, state: TargetState, spec: Any, ds: Any, overwrite_foreign: bool) -> None:
    """The root copies of the coordinates (:mod:`topozarr_core.publish.root_coords`, e.g. ``/time``) replace only nodes we wrote."""
    if state.kind != "pyramid" or overwrite_foreign:
        return
    foreign = foreign_nodes(_read_only(store), planned_names(ds, spec.x_dim, spec.y_dim), owned_nodes(state.attrs))
    if foreign:
        raise ForeignTarget(f"the target's root holds a node {short(foreign[0])} that topozarr-flows did not write, "
                            "where this pyramid writes its root copy of that coordinate (for zarr-layer's value "
                            "selectors); move it away, or pass overwrite_foreign=True (CLI --overwrite-foreign) "
                            "to replace it")


def _check_append(state: TargetState, spec: Any, levels: list[int], all_levels: list[int]) -> None:
    """``mode="a"``: rewrite some levels of a pyramid of ours built with the same layout."""
    if state.kind != "pyramid":
        raise ForeignTarget(f"mode='a' rewrites levels of an existing topozarr-flows pyramid, but the target holds "
                            f"{state.what or 'nothing'}; use mode='w' to build one")
    attrs = state.attrs
    kept = [lvl for lvl in all_levels if lvl not in levels]
    stored, wanted = attrs.get(OPTIONS_KEY), creation_options(spec)
    # the kept levels fix the layout: dims always; the encoding when any level is kept; the method
    # when a kept level was resampled with it
    must_match = ["x_dim", "y_dim"] + (["chunks_per_shard", "target_chunk_bytes"] if kept else []) + (
        ["method"] if any(lvl > 0 for lvl in kept) else [])
    if isinstance(stored, dict):
        differ = [k for k in must_match if k in stored and stored[k] != wanted[k]]
        if differ:
            k = differ[0]
            raise ValueError(f"mode='a' needs the target's layout, but its {k} is {stored[k]!r} and this pyramid's "
                             f"is {wanted[k]!r}; use mode='w' to replace the pyramid")
    existing = list((multiscales_of(attrs) or {}).get("layout", []))
    if existing and len(existing) > len(all_levels):
        raise ValueError(
            f"the target has {len(existing)} levels but this pyramid has {len(all_levels)}; "
            "mode='a' would orphan the extra levels -- use mode='w' to replace the pyramid"
        )
    for lvl in kept:
        expected = list(spec.grid.shape(spec.factors[lvl]))
        if lvl >= len(existing) or existing[lvl].get("spatial:shape") != expected:
            raise ValueError(
                f"level {lvl} is not rewritten (levels={levels}) but the target's level {lvl} is missing or "
                f"has another shape; rewrite it too or use mode='w'"
            )
    if levels and levels[0] > 0 and levels[0] - 1 not in kept:
        raise ValueError(f"level {levels[0]} is built from level {levels[0] - 1}, which must exist or be rewritten")


__all__ = ["check_target", "inspect_target", "check_location", "TargetState", "ForeignTarget", "UnsafeTarget",
           "WRITE_MODES", "local_location"]
