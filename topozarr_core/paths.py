"""Where things live inside a pyramid store."""

#: Scratch group holding per-pixel missing counts of ``mean`` levels while a pyramid is written
#: (exact NaN-aware means). It never stays in a published pyramid: ``layout.publish`` deletes it.
MISSING_GROUP = "_topozarr_missing"


def data_path(level: int, var: str) -> str:
    return f"{level}/{var}"


def missing_path(level: int, var: str) -> str:
    return f"{MISSING_GROUP}/{level}/{var}"


def keeps_scratch_counts(n_levels: int, level: int) -> bool:
    """Whether a level's missing counts are written as scratch: only when a next level may read
    them back from the store (level 0 has none, the coarsest level feeds no level)."""
    return 1 <= level < n_levels - 1


def missing_dtype(factor: int) -> str:
    """Smallest unsigned dtype that holds a level's largest missing count (factor**2)."""
    most = factor * factor
    return "uint8" if most <= 0xFF else "uint16" if most <= 0xFFFF else "uint32"
