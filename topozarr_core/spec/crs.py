"""Find the CRS of a dataset: explicit ``crs=``, then xproj, then CF grid-mapping attributes."""

from __future__ import annotations

from typing import Any

import pyproj
import xarray as xr

_CF_CRS_ATTRS = ("crs_wkt", "spatial_ref")


def _from_xproj(ds: xr.Dataset) -> pyproj.CRS | None:
    try:
        import xproj  # noqa: F401  (registers the .proj accessor)
    except ImportError:  # pragma: no cover - xproj is a dependency
        return None
    try:
        return ds.proj.crs
    except Exception:  # noqa: BLE001 -- several CRS indexes or none: fall through to attributes
        return None


def _from_cf(ds: xr.Dataset) -> pyproj.CRS | None:
    names = {str(v.attrs["grid_mapping"]) for v in ds.data_vars.values() if "grid_mapping" in v.attrs}
    names |= {"spatial_ref", "crs"}
    for name in sorted(names):
        if name in ds.variables:
            for attr in _CF_CRS_ATTRS:
                if attr in ds[name].attrs:
                    try:
                        return pyproj.CRS.from_user_input(ds[name].attrs[attr])
                    except pyproj.exceptions.CRSError as err:
                        raise ValueError(f"the {attr!r} attribute of {name!r} is not a valid CRS: {err}") from None
    return None


def resolve_crs(ds: xr.Dataset, crs: Any = None) -> pyproj.CRS:
    """Return the dataset's CRS or raise a ValueError that says how to provide one.

    :param ds: the source dataset (its CRS is read from its grid mapping or xproj index).
    :param crs: an explicit CRS (anything ``pyproj.CRS.from_user_input`` takes), which wins; None: the dataset's.
    """
    if crs is not None:
        try:
            found = pyproj.CRS.from_user_input(crs)
        except pyproj.exceptions.CRSError as err:
            raise ValueError(f"crs={str(crs)[:80]!r} is not a valid CRS: {str(err)[:160]}") from None
        return horizontal(found, f"crs={str(crs)[:80]!r}")
    found = _from_xproj(ds) or _from_cf(ds)
    if found is None:
        raise ValueError(
            "the dataset has no CRS: pass crs='EPSG:4326' (or any pyproj input) to create_pyramid, "
            "or assign one with ds.proj.assign_crs(spatial_ref='EPSG:4326')"
        )
    return horizontal(found, "the dataset's CRS")


def horizontal(crs: pyproj.CRS, what: str) -> pyproj.CRS:
    """A pyramid's x/y need a horizontal CRS (geographic or projected; a compound CRS gives its
    horizontal part); a vertical or engineering CRS cannot place a grid on a map.

    :param crs: the CRS.
    :param what: how the error names it, e.g. ``crs='EPSG:5703'``.
    :returns: ``crs``, or its horizontal part; ValueError when it has none.
    """
    if crs.is_compound:
        parts = [c for c in crs.sub_crs_list if c.is_geographic or c.is_projected]
        if parts:
            return parts[0]
    if not (crs.is_geographic or crs.is_projected):
        raise ValueError(f"{what} is a {crs.type_name} ({crs.name}), not a horizontal CRS: x/y need a geographic "
                         "or projected CRS such as 'EPSG:4326'")
    return crs


def proj_attributes(crs: pyproj.CRS) -> dict[str, str]:
    """``proj:`` attributes: exactly one of proj:code or proj:wkt2 (the schema's oneOf).

    :param crs: the CRS.
    """
    authority = crs.to_authority(min_confidence=100)
    if authority is not None:
        return {"proj:code": f"{authority[0]}:{authority[1]}"}
    return {"proj:wkt2": crs.to_wkt("WKT2_2019")}
