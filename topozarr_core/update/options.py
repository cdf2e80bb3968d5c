"""The layout options of an update: those the pyramid was built with.

Read from the root attribute ``topozarr:options`` (recorded when a pyramid is published), else
inferred from its ``multiscales`` layout (pyramids written before the options were recorded; the
stashed layout of an interrupted update's unpublished root counts too). Options passed to an
update must equal them: an update never changes a pyramid's layout.
"""

from __future__ import annotations

import json
from typing import Any

import pyproj
import xarray as xr

from topozarr_core.layout.conventions import RESAMPLING_NAMES
from topozarr_core.publish.root_doc import OPTIONS_KEY, multiscales_of
from topozarr_core.spec.chunking import DEFAULT_TARGET_CHUNK_BYTES
from topozarr_core.spec.crs import proj_attributes
from topozarr_core.spec.crs import resolve_crs as find_crs
from topozarr_core.spec.layer_hints import ZarrLayerVarConfig
from topozarr_core.update.checks import UpdateRefused

#: Default of the option arguments of :func:`~topozarr_core.update.pyramid_update.update_pyramid`: use what the
#: pyramid was built with.
AS_BUILT = "as-built"

_OPTION_KEYS = ("x_dim", "y_dim", "factors", "method", "chunks_per_shard", "target_chunk_bytes", "pack")
_DEFAULTS = {"chunks_per_shard": 4, "target_chunk_bytes": DEFAULT_TARGET_CHUNK_BYTES, "method": "mean",
             "x_dim": "x", "y_dim": "y", "pack": True}


def stored_options(attrs: dict) -> dict[str, Any]:
    """Options recorded at publish time, else what the multiscales layout tells.

    :param attrs: the pyramid's root attributes.
    """
    stored = attrs.get(OPTIONS_KEY)
    if isinstance(stored, dict):
        return {k: stored[k] for k in _OPTION_KEYS if k in stored}
    out: dict[str, Any] = {}
    dims = attrs.get("spatial:dimensions")
    if isinstance(dims, list) and len(dims) == 2:
        out["y_dim"], out["x_dim"] = str(dims[0]), str(dims[1])
    ms = multiscales_of(attrs) or {}
    try:
        fs = [1]
        for entry in ms["layout"][1:]:
            fs.append(fs[-1] * int(round(float(entry["transform"]["scale"][0]))))
        out["factors"] = fs
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    methods = [m for m, name in RESAMPLING_NAMES.items() if name == ms.get("resampling_method")]
    if len(methods) == 1:
        out["method"] = methods[0]
    elif len(methods) > 1:
        out["method_choices"] = methods
    return out


def resolve_options(stored: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The layout options of the update: the stored ones, else the given ones, else the defaults.

    A given option that differs from the stored one is refused (:class:`UpdateRefused`), as is a method not
    among the stored choices, or factors/method that can be neither read nor were given.

    :param stored: what :func:`stored_options` read.
    :param given: the caller's options (``AS_BUILT``: not given).
    """
    out: dict[str, Any] = {}
    for key in _OPTION_KEYS:
        g = given.get(key, AS_BUILT)
        g_set = not (isinstance(g, str) and g == AS_BUILT)
        if key in stored:
            want = stored[key]
            if g_set and plain(g) != plain(want):
                raise UpdateRefused(f"the pyramid was built with {key}={want!r}, not {g!r}; "
                                    "an update keeps the pyramid's options (rebuild to change them)")
            out[key] = want
        elif g_set:
            if key == "method" and stored.get("method_choices") and g not in stored["method_choices"]:
                raise UpdateRefused(f"the pyramid's resampling is one of {stored['method_choices']}, not {g!r}")
            out[key] = g
        elif key == "factors":
            raise UpdateRefused("cannot tell the pyramid's factors from its metadata; pass factors=[1, 2, ...]")
        elif key == "method" and stored.get("method_choices"):
            raise UpdateRefused(f"the pyramid's resampling method is ambiguous ({stored['method_choices']}); "
                                "pass method=...")
        else:
            out[key] = _DEFAULTS[key]
    return out


def plain(value: Any) -> Any:
    """``value`` as JSON gives it back (numpy scalars as Python, tuples as lists), for comparisons.

    :param value: any JSON-like value.
    """
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def create_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The ``create_pyramid`` keyword arguments that reproduce the pyramid's layout.

    :param options: the resolved options (:func:`resolve_options`).
    """
    hints = options.get("layer_hints") or None
    return {
        "factors": list(options["factors"]),
        "x_dim": options["x_dim"],
        "y_dim": options["y_dim"],
        "method": options["method"],
        "crs": options.get("crs"),
        "layer_hints": {k: ZarrLayerVarConfig(**v) for k, v in hints.items()} if hints else None,
        "chunks_per_shard": options["chunks_per_shard"],
        "target_chunk_bytes": int(options["target_chunk_bytes"]),
        "pack": bool(options.get("pack", True)),
    }


def stored_hints(attrs: dict) -> dict[str, ZarrLayerVarConfig]:
    """The ``zarr-layer`` hints of a root as :class:`~topozarr_core.spec.layer_hints.ZarrLayerVarConfig` objects.

    :param attrs: the pyramid's root attributes.
    """
    hints = attrs.get("zarr-layer")
    if not isinstance(hints, dict):
        return {}
    return {str(k): ZarrLayerVarConfig(**v) for k, v in hints.items() if isinstance(v, dict)}


def crs_for_update(ds: xr.Dataset, crs: Any, attrs: dict) -> str | None:
    """The ``crs=`` to plan with (None: the source's own), refusing a CRS other than the pyramid's.

    :param ds: the source dataset.
    :param crs: the caller's ``crs=``, or None.
    :param attrs: the pyramid's root attributes.
    """
    stored = {k: attrs[k] for k in ("proj:code", "proj:wkt2") if k in attrs}
    try:
        found = find_crs(ds, crs)
    except ValueError:
        if crs is not None or not stored:
            raise
        return str(stored.get("proj:code") or stored.get("proj:wkt2"))
    if stored and proj_attributes(found) != stored:
        raise UpdateRefused(f"the source's CRS ({_crs_label(found)}) differs from the pyramid's "
                            f"({stored.get('proj:code') or 'WKT2 ' + stored.get('proj:wkt2', '')[:60]}); "
                            "reproject the source (or rebuild)")
    if crs is None:
        return None
    return str(crs) if isinstance(crs, str) else found.to_wkt()


def _crs_label(crs: pyproj.CRS) -> str:
    auth = crs.to_authority(min_confidence=100)
    return f"{auth[0]}:{auth[1]}" if auth else (crs.name or "custom CRS")


__all__ = ["AS_BUILT", "stored_options", "resolve_options", "create_kwargs", "stored_hints", "crs_for_update", "plain"]
