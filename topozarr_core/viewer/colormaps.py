"""The colormaps a pyramid's ``zarr-layer`` hint may name, without matplotlib.

Why one table: the preview page (which bundles the same ``colormaps.json``) and the quicklook must
draw a hint the same way. The table holds CarbonPlan's maps (``@carbonplan/colormaps``, the names
zarr-layer pages use: ``warm``, ``earth``, ``blues``...) and matplotlib's common ones (``viridis``,
``Blues``, ``RdBu``, ``gray``...), 256 colours each; ``flows/topozarr_flows/preview/web/tools/make_colormaps.py``
regenerates it. Names are looked up as written, then case-insensitively (``BLUES``: CarbonPlan's
all-lowercase ``blues`` before matplotlib's ``Blues``); a ``_r`` suffix reverses a map.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

TABLE = Path(__file__).with_name("colormaps.json")
DEFAULT = "viridis"


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(TABLE.read_text())


def canonical(name: str) -> tuple[str, bool] | None:
    """``(map, reversed)`` for a colormap name, or None when the table does not have it."""
    doc = _table()
    maps, aliases = doc["maps"], doc["aliases"]
    key = name.strip()
    reverse = key.endswith("_r") and key not in maps
    key = key.removesuffix("_r") if reverse else key
    key = aliases.get(key, key)
    if key in maps:
        return key, reverse
    folded = [m for m in maps if m.lower() == key.lower()]
    if not folded:
        return None
    return min(folded, key=lambda m: (m != m.lower(), m)), reverse


def available() -> list[str]:
    """Every map name (without the ``_r`` variants)."""
    return sorted(_table()["maps"], key=str.lower)


@cache
def lut(name: str) -> np.ndarray:
    """The (256, 3) uint8 lookup table of ``name``; ValueError naming the known maps otherwise."""
    found = canonical(name)
    if found is None:
        raise ValueError(f"colormap {name[:40]!r} is not known; choose one of {available()} (add '_r' to reverse)")
    key, reverse = found
    hexes = _table()["maps"][key]
    table = np.frombuffer(bytes.fromhex(hexes), dtype=np.uint8).reshape(256, 3).copy()
    table.setflags(write=False)
    return table[::-1] if reverse else table
