"""Regenerate ``topozarr_core/viewer/colormaps.json``: the colormaps a pyramid's ``zarr-layer`` hint may name,
shared by the preview page (bundled) and the quicklook (read by ``topozarr_core.viewer.colormaps``).

Not run by the build: the table is committed, so neither matplotlib nor @carbonplan/colormaps (and
the React/theme-ui packages it pulls in) is needed to build the page or to use the quicklook.
Run it by hand after changing a version or the list below, in a throwaway environment:

    python -m venv ../cm-venv && ../cm-venv/bin/pip install matplotlib==3.11.2
    ../cm-venv/bin/python flows/topozarr_flows/preview/web/tools/make_colormaps.py   # needs node and npm on PATH

Every map is 256 colours (``rrggbb`` hex, low end first):
- CarbonPlan's set (``@carbonplan/colormaps`` ``makeColormap(name, {count: 256, mode: 'dark'})``,
  the names zarr-layer pages use; dark mode to match the preview's dark basemap);
- matplotlib's common maps (``matplotlib.colormaps[name].resampled(256)``), case as matplotlib
  spells them (``Blues`` is ColorBrewer's, ``blues`` CarbonPlan's). Where both define the same
  name (``cool``, ``rainbow``) CarbonPlan's is kept.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

CARBONPLAN = "@carbonplan/colormaps@4.0.0"
MATPLOTLIB = [
    "viridis", "plasma", "inferno", "magma", "cividis", "turbo",
    "Greys", "Purples", "Blues", "Greens", "Oranges", "Reds", "YlOrBr", "YlOrRd", "OrRd", "PuRd", "RdPu",
    "BuPu", "GnBu", "PuBu", "YlGnBu", "PuBuGn", "BuGn", "YlGn",
    "gray", "bone", "pink", "spring", "summer", "autumn", "winter", "hot", "afmhot", "copper",
    "PiYG", "PRGn", "BrBG", "PuOr", "RdGy", "RdBu", "RdYlBu", "RdYlGn", "Spectral", "coolwarm", "bwr", "seismic",
    "twilight", "twilight_shifted", "hsv",
    "terrain", "ocean", "gist_earth", "cubehelix", "jet", "nipy_spectral", "gnuplot", "gnuplot2", "CMRmap",
    "tab10", "tab20", "tab20b", "tab20c", "Set1", "Set2", "Set3", "Paired", "Accent", "Dark2", "Pastel1", "Pastel2",
]
ALIASES = {"grey": "gray", "Grays": "Greys"}
OUT = Path(__file__).resolve().parents[5] / "topozarr_core" / "viewer" / "colormaps.json"

NODE = """
import { makeColormap, colormaps } from '@carbonplan/colormaps'
const out = {}
for (const { name } of colormaps) out[name] = makeColormap(name, { count: 256, mode: 'dark', format: 'hex' })
console.log(JSON.stringify(out))
"""


def carbonplan() -> dict[str, str]:
    """CarbonPlan's colormaps, ``{name: 256 rrggbb colours}``, computed by their npm package in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "package.json").write_text('{"name": "cm", "private": true, "type": "module"}')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", CARBONPLAN], cwd=tmp,
                       check=True)
        raw = subprocess.run(["node", "--input-type=module", "-e", NODE], cwd=tmp, check=True, capture_output=True,
                             text=True).stdout
    return {name: "".join(c.lstrip("#").lower() for c in colors) for name, colors in json.loads(raw).items()}


def matplotlib_maps() -> tuple[str, dict[str, str]]:
    """matplotlib's version and its maps of :data:`MATPLOTLIB`, ``{name: 256 rrggbb colours}``."""
    import matplotlib
    import numpy as np

    out = {}
    for name in MATPLOTLIB:
        rgba = matplotlib.colormaps[name].resampled(256)(np.linspace(0, 1, 256))
        out[name] = "".join(f"{r:02x}{g:02x}{b:02x}" for r, g, b in np.rint(rgba[:, :3] * 255).astype(int))
    return matplotlib.__version__, out


def main() -> None:
    """Write ``colormaps.json`` (CarbonPlan's map wins where both define a name)."""
    version, mpl = matplotlib_maps()
    cp = carbonplan()
    maps = {**{k: v for k, v in mpl.items() if k not in cp}, **cp}
    doc = {
        "about": "256 colours per map, rrggbb hex, low end first; regenerate with "
                 "flows/topozarr_flows/preview/web/tools/make_colormaps.py",
        "sources": {"carbonplan": f"{CARBONPLAN} makeColormap(name, {{count: 256, mode: 'dark'}})",
                    "matplotlib": f"matplotlib {version} colormaps[name].resampled(256)"},
        "origin": {name: "carbonplan" if name in cp else "matplotlib" for name in maps},
        "aliases": ALIASES,
        "maps": maps,
    }
    OUT.write_text(json.dumps(doc, indent=0, sort_keys=False) + "\n")
    print(f"wrote {len(maps)} maps to {OUT}")


if __name__ == "__main__":
    main()
