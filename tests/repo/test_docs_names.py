"""Every dotted name of ours that the docs mention (``topozarr_core.x.y``, ``topozarr_flows.x.y``)
exists: a module, or an attribute of one. Moving or renaming code cannot leave the docs pointing at
nothing (mkdocs --strict checks only the API reference's own links)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\btopozarr_(?:core|flows)(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def documented_names() -> set[str]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return {name for page in pages for name in NAME.findall(page.read_text())}


def resolves(name: str) -> bool:
    """Whether ``name`` is a module, or an attribute path below the longest importable module prefix."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_documented_name_exists():
    names = documented_names()
    assert len(names) >= 10, names
    missing = sorted(n for n in names if not resolves(n))
    assert not missing, f"the docs name code that does not exist: {missing}"


def test_the_check_sees_a_stale_name():
    assert resolves("topozarr_flows.prefect_api.client")
    assert not resolves("topozarr_flows.prefect_api.api")
    assert not resolves("topozarr_core.write.level_cache.NoSuchThing")
