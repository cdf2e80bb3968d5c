"""Where things live inside a pyramid store."""

#: Hidden group holding per-pixel missing counts for ``mean`` levels >= 1 (exact NaN-aware means).
MISSING_GROUP = "_topozarr_missing"


def data_path(level: int, var: str) -> str:
    return f"{level}/{var}"


def missing_path(level: int, var: str) -> str:
    return f"{MISSING_GROUP}/{level}/{var}"
