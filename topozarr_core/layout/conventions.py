"""GeoZarr convention metadata: ``multiscales``, ``spatial:``, ``proj:`` and zarr-layer hints.

Convention descriptors are copied verbatim from the schemas in ``shared/specs/zarr-conventions``
(their ``const`` values), so a written root validates against all three.
"""

from __future__ import annotations

from typing import Any

import pyproj

from topozarr_core.layout.viewer_hints import multiscales_crs, viewer_attributes
from topozarr_core.spec.crs import proj_attributes
from topozarr_core.spec.grid import SpatialGrid
from topozarr_core.spec.layer_hints import ZarrLayerVarConfig

MULTISCALES_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "name": "multiscales",
    "description": "Multiscale layout of zarr datasets",
}
PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}
SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v0.1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}

#: Resampling method names as the multiscales spec spells them.
RESAMPLING_NAMES = {"mean": "average", "max": "max", "min": "min", "sum": "sum",
                    "nearest": "nearest", "mode": "mode", "majority": "mode"}


def geo_attributes(grid: SpatialGrid, crs: pyproj.CRS, factor: int = 1) -> dict[str, Any]:
    """``spatial:`` and ``proj:`` attributes of one level (or a flat dataset).

    :param grid: the level-0 spatial grid.
    :param crs: the CRS.
    :param factor: the level's factor relative to level 0.
    """
    return {
        **proj_attributes(crs),
        "spatial:dimensions": [grid.y.name, grid.x.name],
        "spatial:registration": "pixel",
        "spatial:transform": grid.transform(factor),
        "spatial:shape": list(grid.shape(factor)),
        "spatial:bbox": grid.bbox(factor),
    }


def flat_attributes(grid: SpatialGrid, crs: pyproj.CRS,
                    layer_hints: dict[str, ZarrLayerVarConfig] | None = None) -> dict[str, Any]:
    """Root attributes of a single-level GeoZarr dataset (no multiscales).

    :param grid: the spatial grid.
    :param crs: the CRS.
    :param layer_hints: per-variable ``zarr-layer`` hints, or None.
    """
    attrs: dict[str, Any] = {
        "zarr_conventions": [SPATIAL_CONVENTION, PROJ_CONVENTION],
        **geo_attributes(grid, crs),
    }
    if layer_hints:
        attrs["zarr-layer"] = {k: v.to_json() for k, v in layer_hints.items()}
    return attrs


#: Group attributes owned by the conventions, zarr-layer and this project: a dataset attribute of
#: one of these names is never copied (it would contradict what the pyramid says about itself).
RESERVED_ATTRS = ("multiscales", "zarr_conventions", "zarr-layer")
RESERVED_PREFIXES = ("spatial:", "proj:", "topozarr:")


def dataset_attributes(attrs: dict[str, Any] | None) -> dict[str, Any]:
    """The dataset's global attributes that level groups and the root carry (topozarr copies them
    to every level): all but the reserved convention keys.

    :param attrs: the dataset's attributes, or None.
    """
    return {k: v for k, v in (attrs or {}).items()
            if k not in RESERVED_ATTRS and not str(k).startswith(RESERVED_PREFIXES)}


def stored_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` as xarray stores them in a Zarr document (numpy arrays and scalars as JSON values),
    for documents written without xarray (derived levels, refreshed level groups)."""
    from xarray.backends.zarr import encode_zarr_attr_value

    return {k: encode_zarr_attr_value(v) for k, v in attrs.items()}


def level_attributes(grid: SpatialGrid, crs: pyproj.CRS, factor: int,
                     source_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Attributes of one level group: the dataset's global attributes and its own geo attributes
    (so a level opens standalone); the convention keys always win.

    :param grid: the level-0 spatial grid.
    :param crs: the CRS.
    :param factor: the level's factor relative to level 0.
    :param source_attrs: the source dataset's global attributes, or None.
    """
    return {**dataset_attributes(source_attrs), "zarr_conventions": [SPATIAL_CONVENTION, PROJ_CONVENTION],
            **geo_attributes(grid, crs, factor)}


def multiscale_attributes(
    grid: SpatialGrid,
    crs: pyproj.CRS,
    factors: list[int],
    method: str,
    layer_hints: dict[str, ZarrLayerVarConfig] | None = None,
) -> dict[str, Any]:
    """Root attributes of a pyramid: conventions, multiscales layout, geo attributes, hints.

    :param grid: the level-0 spatial grid.
    :param crs: the CRS.
    :param factors: each level's factor relative to level 0 (the first is 1).
    :param method: the reduction method (a key of ``RESAMPLING_NAMES``).
    :param layer_hints: per-variable ``zarr-layer`` hints, or None.
    """
    resampling = RESAMPLING_NAMES[method]
    layout: list[dict[str, Any]] = []
    for i, f in enumerate(factors):
        entry: dict[str, Any] = {"asset": str(i)}
        if i > 0:
            step = float(f // factors[i - 1])
            entry["derived_from"] = str(i - 1)
            entry["transform"] = {"scale": [step, step], "translation": [0.0, 0.0]}
            entry["resampling_method"] = resampling
        else:
            entry["transform"] = {"scale": [1.0, 1.0], "translation": [0.0, 0.0]}
        entry["spatial:transform"] = grid.transform(f)
        entry["spatial:shape"] = list(grid.shape(f))
        layout.append(entry)
    attrs = {
        "zarr_conventions": [MULTISCALES_CONVENTION, SPATIAL_CONVENTION, PROJ_CONVENTION],
        "multiscales": {"layout": layout, "resampling_method": resampling, **multiscales_crs(crs)},
        **geo_attributes(grid, crs),
        **viewer_attributes(grid, crs),  # what zarr-layer needs from the page (see viewer_hints)
    }
    if layer_hints:
        attrs["zarr-layer"] = {k: v.to_json() for k, v in layer_hints.items()}
    return attrs


def rename_resampling(attrs: Any, old: str, new: Any) -> bool:
    """After ``pyramid.method`` changed from ``old`` to ``new``: the ``multiscales`` resampling names in
    ``attrs`` that still name ``old`` name ``new``, in place. False (nothing changed) when ``new`` is not a
    method."""
    if not isinstance(new, str) or new not in RESAMPLING_NAMES:
        return False
    before, after = RESAMPLING_NAMES[old], RESAMPLING_NAMES[new]
    ms = attrs.get("multiscales") if isinstance(attrs, dict) else None
    for entry in [ms] + (ms.get("layout", []) if isinstance(ms, dict) else []):
        if isinstance(entry, dict) and entry.get("resampling_method") == before:
            entry["resampling_method"] = after
    return True


def comparable(doc: Any) -> Any:
    """A metadata document in comparable form: NaN-safe, tuples as lists, numpy scalars as Python.

    :param doc: any JSON-like value.
    """
    import json
    import math

    def fix(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return "NaN"
        if isinstance(x, dict):
            return {str(k): fix(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [fix(v) for v in x]
        return x

    return fix(json.loads(json.dumps(doc, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))))
