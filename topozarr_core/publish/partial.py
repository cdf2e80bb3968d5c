"""Pyramids written a few levels at a time: ``write(levels=[0])`` into a new target, then ``mode="a"``.

topozarr publishes the root of such a write at once, listing levels that do not exist yet. Our
rule is that a reader never sees a published root over missing levels, so a write that leaves
some levels unwritten ends with an *unpublished* root (see :mod:`topozarr_core.publish.root_doc`): the full layout
stashed (so a later ``mode="a"`` write can check it), the build options, and
``topozarr:levels_written``, the levels that hold data. A later ``mode="a"`` write must rewrite
every level not yet written that it keeps; the root is published once every level is written.
"""

from __future__ import annotations

from typing import Any

from topozarr_core.publish.root_doc import INCOMPLETE, STATUS_KEY, unpublished_attrs, write_root

#: Unpublished roots of a partial write: the levels that hold data.
WRITTEN_KEY = "topozarr:levels_written"


def recorded_levels(attrs: dict) -> set[int] | None:
    """The levels a partial write recorded in an unpublished root (None: no partial write there).

    :param attrs: the root's attributes.
    """
    if STATUS_KEY not in attrs or not isinstance(attrs.get(WRITTEN_KEY), list):
        return None
    return {int(x) for x in attrs[WRITTEN_KEY] if isinstance(x, int) and not isinstance(x, bool)}


def check_kept_levels(attrs: dict, levels: list[int], n_levels: int) -> set[int] | None:
    """``mode="a"`` onto a partial write: every level kept (not rewritten) must hold data. Returns the
    levels written before (None when the target is not a partial write).

    :param attrs: the root's attributes.
    :param levels: the levels this write rewrites.
    :param n_levels: the number of levels of the pyramid.
    """
    recorded = recorded_levels(attrs)
    if recorded is None:
        return None
    never = [lvl for lvl in range(n_levels) if lvl not in levels and lvl not in recorded]
    if never and min(levels) > min(never):
        raise ValueError(f"level {never[0]} of the target was never written (a partial write left levels "
                         f"{sorted(recorded)}); include it in levels=[...] (each level is built from the one before)")
    return recorded


def finish_partial(store: Any, published: dict, written: set[int], owned: set[str]) -> dict:
    """End a write that left levels unwritten: an unpublished root carrying ``published``'s layout
    (stashed), options and the written levels. Returns the root attributes written.

    :param store: the target zarr store.
    :param published: the root attributes a complete write would publish.
    :param written: the levels that hold data now.
    :param owned: the top-level nodes this project wrote.
    """
    attrs = unpublished_attrs(published, INCOMPLETE, owned, **{WRITTEN_KEY: sorted(written)})
    write_root(store, attrs)
    return attrs


__all__ = ["WRITTEN_KEY", "recorded_levels", "check_kept_levels", "finish_partial"]
