"""Where things live inside a pyramid store."""

#: Prefix of the scratch arrays holding per-pixel missing counts of ``mean`` levels while a pyramid is
#: written (exact NaN-aware means). It never stays in a published pyramid: ``layout.publish`` deletes it.
#: It is no child node of the root: the arrays at :func:`missing_path` have no group documents above
#: them (no ``_topozarr_missing/zarr.json``), so readers listing the unpublished root during a write
#: (``xr.open_datatree``, zarr's group listings) skip it, as they skip the lease document.
MISSING_GROUP = "_topozarr_missing"


def data_path(level: int, var: str) -> str:
    """The store path of variable ``var`` at level ``level`` (``"{level}/{var}"``)."""
    return f"{level}/{var}"


def missing_path(level: int, var: str) -> str:
    """The scratch missing-count array of ``var`` at ``level`` (written without parent group documents)."""
    return f"{MISSING_GROUP}/{level}/{var}"


def is_missing_array_key(key: str) -> bool:
    """Whether ``key`` belongs to a scratch array (not to a group document above one)."""
    parts = key.split("/")
    return parts[0] == MISSING_GROUP and len(parts) >= 4


def keeps_scratch_counts(n_levels: int, level: int) -> bool:
    """Whether a level's missing counts are written as scratch: only when a next level may read
    them back from the store (level 0 has none, the coarsest level feeds no level).

    :param n_levels: the number of levels of the pyramid.
    :param level: the level index.
    """
    return 1 <= level < n_levels - 1


def missing_dtype(factor: int) -> str:
    """Smallest unsigned dtype that holds a level's largest missing count (factor**2)."""
    most = factor * factor
    return "uint8" if most <= 0xFF else "uint16" if most <= 0xFFFF else "uint32"
