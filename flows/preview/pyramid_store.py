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
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from topozarr_core.icechunk_txn import IcechunkTarget
from topozarr_core.storable import short
from topozarr_core.targets import redact, resolve_store


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
        """The bytes of ``key`` (or of a range of it); None when there is no such key."""
        key = self.resolve(key)
        buf = sync(self.store.get(key, prototype=default_buffer_prototype(), byte_range=byte_range))
        return None if buf is None else buf.to_bytes()

    def size(self, key: str) -> int | None:
        try:
            return int(sync(self.store.getsize(self.resolve(key))))
        except (FileNotFoundError, KeyError):
            return None

    def resolve(self, key: str) -> str:
        """``key`` with a root alias applied: ``time/zarr.json`` -> ``0/time/zarr.json``."""
        head, _, rest = key.partition("/")
        return f"{self.root_aliases[head]}/{rest}" if head in self.root_aliases and rest else key

    def info(self) -> dict[str, Any]:
        """Root attributes, gridded variables and non-spatial coordinate values (the time slider)."""
        if self._info is None:
            self._info = self._read_info()
        return self._info

    def _read_info(self) -> dict[str, Any]:
        attrs = self.root.get("attributes") or {}
        options = attrs.get("topozarr:options") or {}
        x_dim, y_dim = options.get("x_dim"), options.get("y_dim")
        level0 = zarr.open_group(self.store, path=_level_paths(attrs)[0], mode="r")
        variables, coords, units = {}, {}, {}
        for name, arr in level0.arrays():
            dims = list(arr.metadata.dimension_names or [])
            if x_dim in dims and y_dim in dims:
                variables[name] = {"dims": dims, "shape": list(arr.shape), "dtype": str(arr.dtype)}
        for dim in sorted({d for v in variables.values() for d in v["dims"]} - {x_dim, y_dim}):
            if dim in {n for n, _ in level0.arrays()}:
                values = level0[dim][:]  # as stored (CF-encoded numbers): what a value selector matches
                coords[dim] = [v.item() if hasattr(v, "item") else v for v in values]
                if "units" in level0[dim].attrs:
                    units[dim] = str(level0[dim].attrs["units"])
        levels = _level_paths(attrs)
        coarsest = zarr.open_group(self.store, path=levels[-1], mode="r")
        for name, var in variables.items():  # the default clim: the value range of the coarsest level
            values = np.asarray(coarsest[name][:], dtype="f8")
            finite = values[np.isfinite(values)]
            if finite.size and finite.min() < finite.max():
                var["range"] = [float(finite.min()), float(finite.max())]
        return {"attributes": attrs, "variables": variables, "coordinates": coords, "units": units, "x_dim": x_dim,
                "y_dim": y_dim, "levels": levels, "label": self.label, "lonlat_bounds": lonlat_bounds(attrs)}


def lonlat_bounds(attrs: dict) -> list[float]:
    """The root's ``spatial:bbox`` in longitude/latitude (where the page opens the map)."""
    crs = pyproj.CRS.from_user_input(attrs.get("proj:code") or attrs.get("proj:wkt2"))
    west, south, east, north = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform_bounds(
        *attrs["spatial:bbox"], densify_pts=21)
    return [float(west), max(float(south), -85.0), float(east), min(float(north), 85.0)]


def _level_paths(attrs: dict) -> list[str]:
    layout = (attrs.get("multiscales") or {}).get("layout") or []
    return [str(e["asset"]) for e in layout if isinstance(e, dict) and e.get("asset")]


def open_pyramid(pyramid: str, icechunk: bool = False, branch: str = "main") -> PyramidStore:
    """Open ``pyramid`` (path, ``s3://`` URL, or Icechunk repository at ``branch``) read-only and check
    that it is a published pyramid; a :class:`PreviewError` names what is wrong."""
    shown = short(redact(pyramid), 120)
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


def _is_local_icechunk(pyramid: str) -> bool:
    """A local folder without a root zarr.json that holds an Icechunk repository."""
    path = os.path.expanduser(pyramid.removeprefix("file://"))
    if "://" in pyramid.removeprefix("file://") or not os.path.isdir(path) or os.path.exists(f"{path}/zarr.json"):
        return False
    import icechunk

    return bool(icechunk.Repository.exists(icechunk.local_filesystem_storage(os.path.abspath(path))))


def _root_aliases(ps: PyramidStore) -> dict[str, str]:
    """zarr-layer resolves value selectors (``{time: <value>}``) against ``/<dim>`` at the store root.
    Pyramids hold that root copy themselves (``topozarr_core.root_coords``) and it is served as it is;
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
