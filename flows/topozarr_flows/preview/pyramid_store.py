"""Read-only access to a pyramid's keys for the preview server (local, s3://, Icechunk).

Why server-side: the page fetches keys from 127.0.0.1 and the server reads them through zarr's
store API, so object-store credentials stay in this process and never reach the browser.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyproj
import xarray as xr
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from topozarr_core.store.errors import redact
from topozarr_core.store.icechunk_txn import IcechunkTarget
from topozarr_core.store.targets import resolve_store
from topozarr_core.text import short
from topozarr_core.viewer.quicklook import robust_clim


class PreviewError(ValueError):
    """The pyramid cannot be previewed; the one-line message says why (credentials redacted)."""


@dataclass
class PyramidStore:
    """A read-only zarr store over a published pyramid, plus what the page needs to know about it."""

    store: Any
    label: str
    root: dict
    #: non-spatial coordinates zarr-layer looks for at the root (``/time``) -> level 0's array, for
    #: pyramids written before they carried root copies (empty for newer ones)
    root_aliases: dict[str, str] = field(default_factory=dict)
    _info: dict[str, Any] | None = field(default=None, repr=False)

    def get(self, key: str, byte_range: ByteRequest | None = None) -> bytes | None:
        """The bytes of ``key`` (or of a range of it); None when there is no such key.

        :param key: the key, as the page asks for it (see ``resolve``).
        :param byte_range: a byte range, or None (all).
        """
        key = self.resolve(key)
        buf = sync(self.store.get(key, prototype=default_buffer_prototype(), byte_range=byte_range))
        return None if buf is None else buf.to_bytes()

    def size(self, key: str) -> int | None:
        """The size of ``key`` in bytes; None when there is no such key.

        :param key: the key, as the page asks for it.
        """
        try:
            return int(sync(self.store.getsize(self.resolve(key))))
        except (FileNotFoundError, KeyError):
            return None

    def resolve(self, key: str) -> str:
        """``key`` with a root alias applied: ``time/zarr.json`` -> ``0/time/zarr.json``."""
        head, _, rest = key.partition("/")
        return f"{self.root_aliases[head]}/{rest}" if head in self.root_aliases and rest else key

    def info(self) -> dict[str, Any]:
        """Root attributes, gridded variables (with their display attributes and default clim),
        non-spatial coordinate values and their labels (the time slider), and the pyramid's label."""
        if self._info is None:
            self._info = self._read_info()
        return {**self._info, "label": self.label}

    def _read_info(self) -> dict[str, Any]:
        attrs = self.root.get("attributes") or {}
        options = attrs.get("topozarr:options") or {}
        x_dim, y_dim = options.get("x_dim"), options.get("y_dim")
        levels = _level_paths(attrs)
        level0 = zarr.open_group(self.store, path=levels[0], mode="r")
        arrays = dict(sorted(level0.arrays()))  # a stable order for the variable chooser
        variables, coords, labels, units = {}, {}, {}, {}
        for name, arr in arrays.items():
            dims = list(arr.metadata.dimension_names or [])
            if x_dim in dims and y_dim in dims:
                variables[name] = {"dims": dims, "shape": list(arr.shape), "dtype": str(arr.dtype),
                                   **_display_attrs(arr.attrs.asdict())}
        for dim in sorted({d for v in variables.values() for d in v["dims"]} - {x_dim, y_dim}):
            if dim in arrays:
                values = arrays[dim][:]  # as stored (CF-encoded numbers): what a value selector matches
                dim_attrs = arrays[dim].attrs.asdict()
                coords[dim] = [v.item() if hasattr(v, "item") else v for v in values]
                labels[dim] = coordinate_labels(dim, values, dim_attrs)
                if "units" in dim_attrs:
                    units[dim] = str(dim_attrs["units"])
        coarsest = xr.open_zarr(self.store, group=levels[-1], consolidated=False, zarr_format=3, chunks=None,
                                decode_times=False)
        for name, var in variables.items():  # the default clim: the 2..98th percentile of the first
            da = coarsest[name]                 # step of the coarsest level, as the quicklook's
            first = np.asarray(da.isel({d: 0 for d in da.dims if d not in (x_dim, y_dim)}).values, dtype="f8")
            clim = robust_clim(first)
            if clim is not None:
                var["range"] = [float(clim[0]), float(clim[1])]
        return {"attributes": attrs, "variables": variables, "coordinates": coords, "labels": labels,
                "units": units, "x_dim": x_dim, "y_dim": y_dim, "levels": levels,
                "title": str(attrs.get("title") or ""), "lonlat_bounds": lonlat_bounds(attrs)}


#: Attributes of a gridded variable the page uses: the legend's text, the readout's units and (for
#: packed integers) precision.
DISPLAY_ATTRS = ("long_name", "standard_name", "units", "scale_factor", "add_offset")


def _display_attrs(attrs: dict) -> dict[str, Any]:
    """The display attributes that are text or finite numbers (what JSON and the page can carry)."""
    def shown(value: Any) -> bool:
        return isinstance(value, str) or (isinstance(value, (int, float)) and np.isfinite(value))

    return {k: attrs[k] for k in DISPLAY_ATTRS if shown(attrs.get(k))}


def coordinate_labels(dim: str, values: np.ndarray, attrs: dict) -> list[str]:
    """What the time slider shows for each step: dates for a CF time axis (any calendar xarray
    decodes: cftime's for the non-standard ones), else the value with its units.

    :param dim: the dimension's name.
    :param values: the coordinate's values as stored.
    :param attrs: its attributes (``units``, ``calendar``).
    """
    units = str(attrs.get("units") or "")
    if " since " in units:
        try:
            decoded = xr.decode_cf(xr.Dataset(coords={dim: (dim, np.asarray(values), dict(attrs))}))[dim].values
            return _date_labels(decoded)
        except (ValueError, TypeError, OverflowError, ImportError):  # e.g. a calendar without cftime
            pass
    suffix = f" {units}" if units and units != "1" else ""
    return [f"{v:g}{suffix}" if isinstance(v, (int, float, np.number)) else f"{v}{suffix}" for v in values.tolist()]


def _date_labels(times: np.ndarray) -> list[str]:
    """ISO dates, with the time of day only when some step has one (to the minute, or second)."""
    if times.dtype.kind == "M":
        parts = [(str(t)[:10], str(t)[11:19]) for t in times.astype("datetime64[s]")]
    else:  # cftime datetimes
        parts = [(f"{t.year:04d}-{t.month:02d}-{t.day:02d}", f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}")
                 for t in times]
    clocks = {c for _, c in parts}
    if clocks <= {"00:00:00"}:
        return [d for d, _ in parts]
    if all(c.endswith(":00") for c in clocks):
        return [f"{d} {c[:5]}" for d, c in parts]
    return [f"{d} {c}" for d, c in parts]


def lonlat_bounds(attrs: dict) -> list[float]:
    """The root's ``spatial:bbox`` in longitude/latitude (where the page opens the map).

    :param attrs: the pyramid's root attributes.
    """
    crs = pyproj.CRS.from_user_input(attrs.get("proj:code") or attrs.get("proj:wkt2"))
    west, south, east, north = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform_bounds(
        *attrs["spatial:bbox"], densify_pts=21)
    return [float(west), max(float(south), -85.0), float(east), min(float(north), 85.0)]


def _level_paths(attrs: dict) -> list[str]:
    layout = (attrs.get("multiscales") or {}).get("layout") or []
    return [str(e["asset"]) for e in layout if isinstance(e, dict) and e.get("asset")]


def open_pyramid(pyramid: str, icechunk: bool = False, branch: str = "main") -> PyramidStore:
    """Open ``pyramid`` (path, ``s3://`` URL, or Icechunk repository at ``branch``) read-only and check
    that it is a published pyramid; a :class:`PreviewError` names what is wrong.

    :param pyramid: a path, an ``s3://`` URL, or an Icechunk repository.
    :param icechunk: ``pyramid`` is an Icechunk repository (a local one is recognised without it).
    :param branch: the Icechunk branch.
    """
    shown = _shown(pyramid)
    try:
        if icechunk or _is_local_icechunk(pyramid):
            repo = IcechunkTarget(pyramid, branch).open_repo(create=False)
            store, label = repo.readonly_session(branch=branch).store, f"icechunk {shown} @ {branch}"
        else:
            store, label = resolve_store(pyramid, read_only=True), shown
        raw = sync(store.get("zarr.json", prototype=default_buffer_prototype()))
    except PreviewError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend error becomes one redacted line
        raise PreviewError(f"preview: cannot open PYRAMID {shown}: {short(redact(str(err)), 200)}") from None
    if raw is None:
        raise PreviewError(f"preview: PYRAMID {shown} has no root zarr.json (not a Zarr v3 pyramid)")
    try:
        root = json.loads(raw.to_bytes())
    except ValueError:
        raise PreviewError(f"preview: the root zarr.json of PYRAMID {shown} is not JSON") from None
    attrs = root.get("attributes") or {}
    if not _level_paths(attrs):
        status = attrs.get("topozarr:status")
        why = f"it is {status} (a write is under way or was interrupted)" if status else "it has no multiscales layout"
        raise PreviewError(f"preview: PYRAMID {shown} is not a published pyramid: {why}")
    out = PyramidStore(store=store, label=label, root=root)
    out.root_aliases = _root_aliases(out)
    return out


def _shown(pyramid: str, limit: int = 120) -> str:
    """``pyramid`` for messages and the page title: credentials redacted, cut to ``limit``, no quotes."""
    text = redact(pyramid)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_local_icechunk(pyramid: str) -> bool:
    """A local folder without a root zarr.json that holds an Icechunk repository."""
    path = os.path.expanduser(pyramid.removeprefix("file://"))
    if "://" in pyramid.removeprefix("file://") or not os.path.isdir(path) or os.path.exists(f"{path}/zarr.json"):
        return False
    import icechunk

    return bool(icechunk.Repository.exists(icechunk.local_filesystem_storage(os.path.abspath(path))))


def _root_aliases(ps: PyramidStore) -> dict[str, str]:
    """zarr-layer resolves value selectors (``{time: <value>}``) against ``/<dim>`` at the store root.
    Pyramids hold that root copy themselves (``topozarr_core.publish.root_coords``) and it is served as it is;
    pyramids written before root copies existed keep theirs only in the levels: serve level 0's there."""
    info = ps.info()
    level0 = info["levels"][0]
    out = {}
    for dim in info["coordinates"]:
        if sync(ps.store.get(f"{dim}/zarr.json", prototype=default_buffer_prototype())) is None:
            out[dim] = f"{level0}/{dim}"
    return out


def parse_range(header: str | None) -> ByteRequest | None:
    """A zarr ``ByteRequest`` for a ``Range: bytes=...`` header (one range); None for no header.
    Raises ValueError for a header that is not a single byte range."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        raise ValueError(f"unsupported Range {short(header, 60)!r}")
    first, _, last = spec.strip().partition("-")
    if not first and last.isdigit():
        return SuffixByteRequest(int(last))
    if first.isdigit() and not last:
        return OffsetByteRequest(int(first))
    if first.isdigit() and last.isdigit() and int(last) >= int(first):
        return RangeByteRequest(int(first), int(last) + 1)
    raise ValueError(f"unsupported Range {short(header, 60)!r}")


def range_bounds(req: ByteRequest, size: int) -> tuple[int, int] | None:
    """``(start, end_exclusive)`` of ``req`` within an object of ``size`` bytes (None: unsatisfiable)."""
    if isinstance(req, SuffixByteRequest):
        start, end = max(0, size - req.suffix), size
    elif isinstance(req, OffsetByteRequest):
        start, end = req.offset, size
    else:
        start, end = req.start, min(req.end, size)
    return (start, end) if start < end or (size == 0 and start == 0 == end) else None
