"""Where things live inside a pyramid store."""

#: Hidden group holding per-pixel missing counts for ``mean`` levels >= 1 (exact NaN-aware means).
MISSING_GROUP = "_topozarr_missing"


def data_path(level: int, var: str) -> str:
    return f"{level}/{var}"


def missing_path(level: int, var: str) -> str:
    return f"{MISSING_GROUP}/{level}/{var}"


def missing_dtype(factor: int) -> str:
    """Smallest unsigned dtype that holds a level's largest missing count (factor**2)."""
    most = factor * factor
    return "uint8" if most <= 0xFF else "uint16" if most <= 0xFFFF else "uint32"
