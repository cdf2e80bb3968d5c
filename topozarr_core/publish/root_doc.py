"""The root ``zarr.json`` of a pyramid: the one document that says whether it is published.

Why one module: every writer (build, ``mode="a"`` rewrite, update) follows the same protocol, and
readers rely on it. Before the first byte of a level is deleted or written, the root is replaced
(one atomic write: a rename on local disk, one PUT on object storage) by an *unpublished* root:
no ``multiscales`` (stashed under ``topozarr:multiscales`` for resuming), a ``topozarr:status``
marker, and ``topozarr:owned``, the top-level nodes this project may have written there. The
published root (``multiscales``, ``spatial:``, ``proj:``, ``topozarr:options``, and ``topozarr:owned``
naming the levels and the root copies of the coordinates, see :mod:`topozarr_core.publish.root_coords`) is written last.
So at any instant, even after a kill, the root is the previous complete pyramid, the new complete
one, or plainly unpublished.
"""

from __future__ import annotations

import json
from typing import Any

from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.sync import sync

from topozarr_core.layout.paths import MISSING_GROUP

ROOT_DOC = "zarr.json"
STATUS_KEY = "topozarr:status"
INCOMPLETE = "incomplete"
UPDATING = "updating"
#: Root attribute recording the options a pyramid was built with (``update_pyramid`` reuses them).
OPTIONS_KEY = "topozarr:options"
#: The top-level nodes written by this project (deleted by the next rebuild): on unpublished roots, and on
#: published ones since they hold root copies of the coordinates (``/time``, see ``root_coords``).
OWNED_KEY = "topozarr:owned"
#: Unpublished roots: the ``multiscales`` of the pyramid being rewritten (what a resumed update reads).
STASH_KEY = "topozarr:multiscales"
MULTISCALES_UUID = "d35379db-88df-4056-af3a-620245f8e347"


class RootUnreadable(ValueError):
    """The root document exists but is not JSON (never ours: we write it atomically)."""


def read_root(store: Any) -> dict | None:
    """The root document as JSON (None when there is none).

    :param store: the zarr store.
    """
    try:
        raw = sync(store.get(ROOT_DOC, prototype=default_buffer_prototype()))
    except FileNotFoundError:  # a read-only local store whose directory does not exist yet
        return None
    if raw is None:
        return None
    try:
        doc = json.loads(raw.to_bytes())
    except ValueError:
        raise RootUnreadable("the target's zarr.json is not valid JSON") from None
    return doc if isinstance(doc, dict) else None


def root_attrs(doc: dict | None) -> dict:
    """The attributes of a root document (empty when there is none or they are not a mapping).

    :param doc: the root document as JSON, or None.
    """
    attrs = (doc or {}).get("attributes") or {}
    return attrs if isinstance(attrs, dict) else {}


def is_pyramid_root(doc: dict | None) -> bool:
    """Written by this project: a group whose attributes carry our options or our status marker.

    :param doc: the root document as JSON, or None.
    """
    if not doc or doc.get("node_type") != "group":
        return False
    attrs = root_attrs(doc)
    return OPTIONS_KEY in attrs or STATUS_KEY in attrs


def is_published(attrs: dict) -> bool:
    """Whether a root is published: it has ``multiscales`` and no status marker of an unfinished write.

    :param attrs: the root's attributes.
    """
    return isinstance(attrs.get("multiscales"), dict) and STATUS_KEY not in attrs


def multiscales_of(attrs: dict) -> dict | None:
    """The layout of a published root, or the stashed one of an unpublished root.

    :param attrs: the root's attributes.
    """
    ms = attrs.get("multiscales") if isinstance(attrs.get("multiscales"), dict) else attrs.get(STASH_KEY)
    return ms if isinstance(ms, dict) else None


def owned_nodes(attrs: dict) -> set[str]:
    """Top-level node names this project wrote below a root of ours.

    :param attrs: the root's attributes.
    """
    owned = {str(x) for x in attrs.get(OWNED_KEY) or [] if isinstance(x, (str, int))}
    ms = multiscales_of(attrs) or {}
    owned |= {str(entry.get("asset")) for entry in ms.get("layout", []) if isinstance(entry, dict)
              and entry.get("asset")}
    stored = attrs.get(OPTIONS_KEY)
    if isinstance(stored, dict) and isinstance(stored.get("factors"), list):
        owned |= {str(i) for i in range(len(stored["factors"]))}
    owned.add(MISSING_GROUP)
    return {name for name in owned if name and "/" not in name and name.strip(".")}


def unpublished_attrs(attrs: dict, status: str, owned: set[str], **extra: Any) -> dict:
    """``attrs`` as an unpublished root: multiscales stashed, status set, owned nodes listed."""
    out = {k: v for k, v in attrs.items() if k not in ("multiscales", STASH_KEY, OWNED_KEY)}
    ms = multiscales_of(attrs)
    if ms is not None:
        out[STASH_KEY] = ms
    conventions = out.get("zarr_conventions")
    if isinstance(conventions, list):
        out["zarr_conventions"] = [c for c in conventions
                                   if not (isinstance(c, dict) and c.get("uuid") == MULTISCALES_UUID)]
    out[STATUS_KEY] = status
    out[OWNED_KEY] = sorted(owned | owned_nodes(attrs))
    out.update(extra)
    return out


def write_root(store: Any, attrs: dict) -> None:
    """Replace the root group document in one write (atomic on local disk and object stores).

    :param store: the zarr store.
    :param attrs: the root group's attributes.
    """
    buf = GroupMetadata(attributes=attrs).to_buffer_dict(default_buffer_prototype())[ROOT_DOC]
    sync(store.set(ROOT_DOC, buf))


def creation_options(spec: Any) -> dict[str, Any]:
    """The ``create_pyramid`` options that fix a pyramid's layout (besides the source and its CRS).

    :param spec: the pyramid's spec.
    """
    return {
        "x_dim": spec.x_dim,
        "y_dim": spec.y_dim,
        "factors": [int(f) for f in spec.factors],
        "method": spec.method,
        "chunks_per_shard": spec.chunks_per_shard,
        "target_chunk_bytes": int(spec.target_chunk_bytes),
        **({} if getattr(spec, "pack", True) else {"pack": False}),  # recorded only when not the default
    }


__all__ = ["read_root", "write_root", "is_pyramid_root", "is_published", "owned_nodes", "unpublished_attrs",
           "multiscales_of", "root_attrs", "STATUS_KEY", "INCOMPLETE", "UPDATING", "OPTIONS_KEY", "OWNED_KEY",
           "STASH_KEY", "creation_options"]
