"""A small colormap table for quicklooks, without matplotlib.

Why: the quicklook needs a handful of well-known maps, not a plotting library. Each map is stored
as evenly spaced colour stops (the published anchor colours of matplotlib's perceptually uniform
maps and of ColorBrewer's sequential/diverging schemes) and expanded once, by linear
interpolation in RGB, into a 256-entry lookup table. Names are matched case-insensitively; a
``_r`` suffix reverses a map.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Evenly spaced stops (first = low end of the clim, last = high end).
STOPS: dict[str, tuple[str, ...]] = {
    "viridis": ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
                "#b5de2b", "#fde725"),
    "magma": ("#000004", "#180f3d", "#440f76", "#721f81", "#9e2f7f", "#cd4071", "#f1605d", "#fd9668",
              "#feca8d", "#fcfdbf"),
    "inferno": ("#000004", "#1b0c41", "#4a0c6b", "#781c6d", "#a52c60", "#cf4446", "#ed6925", "#fb9b06",
                "#f7d13d", "#fcffa4"),
    "plasma": ("#0d0887", "#46039f", "#7201a8", "#9c179e", "#bd3786", "#d8576b", "#ed7953", "#fb9f3a",
               "#fdca26", "#f0f921"),
    "cividis": ("#00224e", "#123570", "#3b496c", "#575d6d", "#707173", "#8a8678", "#a59c74", "#c3b369",
                "#e1cc55", "#fee838"),
    "greys": ("#ffffff", "#f0f0f0", "#d9d9d9", "#bdbdbd", "#969696", "#737373", "#525252", "#252525",
              "#000000"),
    "blues": ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c",
              "#08306b"),
    "reds": ("#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#a50f15",
             "#67000d"),
    "greens": ("#f7fcf5", "#e5f5e0", "#c7e9c0", "#a1d99b", "#74c476", "#41ab5d", "#238b45", "#006d2c",
               "#00441b"),
    "oranges": ("#fff5eb", "#fee6ce", "#fdd0a2", "#fdae6b", "#fd8d3c", "#f16913", "#d94801", "#a63603",
                "#7f2704"),
    "purples": ("#fcfbfd", "#efedf5", "#dadaeb", "#bcbddc", "#9e9ac8", "#807dba", "#6a51a3", "#54278f",
                "#3f007d"),
    "rdbu": ("#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de",
             "#4393c3", "#2166ac", "#053061"),
    "spectral": ("#9e0142", "#d53e4f", "#f46d43", "#fdae61", "#fee08b", "#ffffbf", "#e6f598", "#abdda4",
                 "#66c2a5", "#3288bd", "#5e4fa2"),
}
ALIASES = {"gray": "greys", "grey": "greys", "grays": "greys"}
DEFAULT = "viridis"


def canonical(name: str) -> tuple[str, bool] | None:
    """``(map, reversed)`` for a colormap name, or None when the table does not have it."""
    key = name.strip().lower()
    reverse = key.endswith("_r")
    key = ALIASES.get(key.removesuffix("_r"), key.removesuffix("_r"))
    return (key, reverse) if key in STOPS else None


def available() -> list[str]:
    return sorted(STOPS)


@lru_cache(maxsize=None)
def lut(name: str) -> np.ndarray:
    """The (256, 3) uint8 lookup table of ``name``; ValueError naming the known maps otherwise."""
    found = canonical(name)
    if found is None:
        raise ValueError(f"colormap {name[:40]!r} is not known; choose one of {available()} (add '_r' to reverse)")
    key, reverse = found
    stops = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in STOPS[key]], dtype=float)
    at = np.linspace(0.0, 1.0, len(stops))
    t = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(t, at, stops[:, c]) for c in range(3)], axis=1)
    table = np.rint(table).astype(np.uint8)
    table.setflags(write=False)
    return table[::-1] if reverse else table
