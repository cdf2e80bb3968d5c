"""What a web viewer (zarr-layer 0.5.0) reads from a pyramid's root, beyond the conventions.

Why a module of its own: zarr-layer takes the CRS only from ``multiscales.crs`` (it ignores
``proj:*`` and ``spatial:*`` and otherwise guesses from the coordinate magnitudes), and for any
grid that is not EPSG:4326 it draws right only when the page passes a proj4 string (EPSG:3857
included: without one its ``getVisibleRegions`` compares map bounds in degrees with extents in
metres and draws one block per level). JavaScript's proj4 knows no EPSG codes beyond those two, so
the root carries the proj4 definition for the page. All of it changes no data and the root still
validates against the three convention schemas (``multiscales`` allows additional properties).
"""

from __future__ import annotations

import warnings
from typing import Any

import pyproj

from topozarr_core.spec.grid import SpatialGrid

#: Root attribute with what the preview page passes to zarr-layer (``proj4``, ``bounds``).
VIEWER_KEY = "topozarr:viewer"
#: The CRS codes zarr-layer draws without a proj4 string.
BUILTIN_CRS = ("EPSG:4326", "EPSG:3857")


def crs_code(crs: pyproj.CRS) -> str | None:
    """``AUTHORITY:CODE`` of ``crs`` when it has an exact one (None for custom WKT CRSs)."""
    authority = crs.to_authority(min_confidence=100)
    return f"{authority[0]}:{authority[1]}" if authority else None


def multiscales_crs(crs: pyproj.CRS) -> dict[str, str]:
    """The ``crs`` entry zarr-layer reads in ``multiscales``: only codes it has built in, because
    any other code makes it warn "Unsupported CRS" even when the page passes a proj4 string."""
    code = crs_code(crs)
    return {"crs": code} if code in BUILTIN_CRS else {}


def proj4_definition(crs: pyproj.CRS) -> str:
    """A proj4 string that proj4js parses (pyproj's ``+type=crs`` suffix dropped)."""
    with warnings.catch_warnings():  # "you will likely lose information": a viewer needs no more
        warnings.simplefilter("ignore", UserWarning)
        parts = [p for p in crs.to_proj4().split() if p != "+type=crs"]
    return " ".join(parts)


def viewer_attributes(grid: SpatialGrid, crs: pyproj.CRS) -> dict[str, Any]:
    """``{VIEWER_KEY: {...}}`` for the root, in zarr-layer's option names: the level-0 edge
    ``bounds`` ``[xmin, ymin, xmax, ymax]`` in CRS units and ``latIsAscending`` (given both it reads
    no coordinate arrays and warns of nothing), and for every CRS but EPSG:4326 the ``proj4``
    definition the page must pass.

    :param grid: the level-0 spatial grid.
    :param crs: the CRS.
    """
    hint: dict[str, Any] = {"bounds": [float(v) for v in grid.bbox(1)], "latIsAscending": bool(grid.y.step > 0)}
    if crs_code(crs) != "EPSG:4326":
        hint["proj4"] = proj4_definition(crs)
    return {VIEWER_KEY: hint}


__all__ = ["VIEWER_KEY", "BUILTIN_CRS", "crs_code", "multiscales_crs", "proj4_definition", "viewer_attributes"]
