"""A quicklook PNG of one level of a written pyramid (by default the coarsest).

Why: an operator wants to see at a glance that a run produced a sensible map, without a viewer.
The image uses the pyramid's own display hints (the root's ``zarr-layer`` colormap and clim), so it
looks like what zarr-layer will show; without hints the clim is the 2nd..98th percentile of the
level's finite values and the map is viridis. The colormap names are the preview page's
(:mod:`topozarr_core.viewer.colormaps`). No data is transparent: NaN, and the declared nodata (``_FillValue``, which
xarray decodes to NaN); an integer array without a ``_FillValue`` has no nodata, so its zeros are
drawn (its Zarr ``fill_value`` is a value the data does not use, see ``levels.NO_NODATA_FILL``).
North is up (and east right) whatever the order of the level's coordinates, and for data with
more dims than y/x the first entry of every other dim is shown. The PNG is encoded with the
stdlib's zlib.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
import zarr

from topozarr_core.store.targets import resolve_store
from topozarr_core.text import short
from topozarr_core.viewer import colormaps

#: The longest side of a quicklook; larger levels are subsampled (every n-th cell) when read.
MAX_SIDE = 1024
ROBUST_PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True)
class Quicklook:
    """A rendered quicklook and what it shows (for the artifact's description)."""

    png: bytes
    variable: str
    level: int
    width: int
    height: int
    colormap: str
    clim: tuple[float, float] | None
    #: the index taken along each non-spatial dim (the first one)
    selection: dict[str, int] = field(default_factory=dict)
    #: the source cells per image pixel along y/x (1 unless the level was larger than max_side)
    step: int = 1
    #: image pixels per cell along y/x (1 unless the level was smaller than min_side)
    zoom: int = 1

    def describe(self) -> str:
        """One line saying what the image shows: variable, level, selection, size, colormap and colour limits."""
        sel = ", ".join(f"{k}[{v}]" for k, v in self.selection.items())
        clim = f"[{self.clim[0]:.6g}, {self.clim[1]:.6g}]" if self.clim else "none (no finite values)"
        extra = f", every {self.step}th cell" if self.step > 1 else ""
        extra += f", each cell {self.zoom}x{self.zoom} px" if self.zoom > 1 else ""
        return (f"{self.variable!s} level {self.level}{' ' + sel if sel else ''}: {self.width}x{self.height} px"
                f"{extra}, colormap {self.colormap}, clim {clim}")


def render_quicklook(target: Any, variable: str | None = None, level: int | None = None,
                     colormap: str | None = None, clim: tuple[float, float] | None = None,
                     max_side: int = MAX_SIDE, min_side: int = 1) -> Quicklook:
    """Render one level of one variable of the published pyramid at ``target`` as an RGBA image.

    :param target: the pyramid: a path, URL or zarr store.
    :param variable: the variable (default: the first hinted, else the first gridded one).
    :param level: the level index (default: the coarsest).
    :param colormap: a colormap name (default: the variable's hint, else the default map).
    :param clim: ``(min, max)`` colour limits (default: the hint's, else robust limits of the values).
    :param max_side: a level whose longer side exceeds this is read every n-th cell.
    :param min_side: a level whose shorter side is below this is enlarged by a whole factor (each cell a
        square of pixels), so a tiny coarsest level is still visible at the image's natural size.
    """
    if not isinstance(max_side, int) or not isinstance(min_side, int) or max_side < 1 or min_side < 1:
        raise ValueError(f"quicklook: max_side={short(max_side)} and min_side={short(min_side)} must be positive ints")
    if clim is not None:
        clim = _checked_clim(clim)
    store = resolve_store(target, read_only=True)
    group = zarr.open_group(store, mode="r", zarr_format=3)
    root = group.attrs.asdict()
    layout = (root.get("multiscales") or {}).get("layout")
    if not layout:
        raise ValueError("quicklook: the target has no published pyramid (no 'multiscales' layout in its root)")
    assets = [str(e["asset"]) for e in layout]
    if level is None:
        level = len(assets) - 1
    if not isinstance(level, int) or not 0 <= level < len(assets):
        raise ValueError(f"quicklook: level={short(level)} is not a level of this pyramid (0..{len(assets) - 1})")
    y_dim, x_dim = root["spatial:dimensions"]
    ds = xr.open_zarr(store, group=assets[level], consolidated=False, zarr_format=3, chunks=None,
                      decode_times=False)
    hints = root.get("zarr-layer") or {}
    name = _pick_variable(ds, variable, hints, y_dim, x_dim)
    hint = hints.get(name) or {}
    cmap_name = colormap or hint.get("colormap") or colormaps.DEFAULT
    if colormaps.canonical(cmap_name) is None:
        if colormap is not None:
            colormaps.lut(colormap)  # raises the one-line error naming the known maps
        cmap_name = f"{colormaps.DEFAULT} (hint {str(cmap_name)[:40]!r} is not a known colormap)"
        table = colormaps.lut(colormaps.DEFAULT)
    else:
        table = colormaps.lut(cmap_name)
    da = ds[name]
    selection = {d: 0 for d in da.dims if d not in (y_dim, x_dim)}
    step = max(1, -(-max(da.sizes[y_dim], da.sizes[x_dim]) // max_side))
    da = da.isel({**selection, y_dim: slice(None, None, step), x_dim: slice(None, None, step)})
    values = np.asarray(da.transpose(y_dim, x_dim).values).astype("f8")  # declared nodata decoded to NaN
    values = _north_up(values, ds.attrs.get("spatial:transform"), ds[y_dim].values, ds[x_dim].values)
    if clim is None and hint.get("clim"):
        clim = _checked_clim(hint["clim"])
    limits = clim if clim is not None else robust_clim(values)
    rgba = colourise(values, table, limits)
    zoom = max(1, min(min_side // max(rgba.shape[:2]), max_side // max(rgba.shape[:2])))
    if zoom > 1:
        rgba = np.repeat(np.repeat(rgba, zoom, axis=0), zoom, axis=1)
    return Quicklook(encode_png(rgba), name, level, rgba.shape[1], rgba.shape[0], cmap_name, limits,
                     selection, step, zoom)


def _checked_clim(clim: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in clim)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"quicklook: clim={short(clim)} must be [min, max] with finite min < max")
    return lo, hi


def _pick_variable(ds: xr.Dataset, variable: str | None, hints: dict, y_dim: str, x_dim: str) -> str:
    gridded = [str(n) for n, v in ds.data_vars.items() if y_dim in v.dims and x_dim in v.dims]
    if variable is not None:
        if variable not in gridded:
            raise ValueError(f"quicklook: variable={short(variable)} is not a gridded variable of the level "
                             f"({short(gridded)})")
        return variable
    if not gridded:
        raise ValueError(f"quicklook: the level has no variable along both {y_dim!r} and {x_dim!r}")
    return next((n for n in hints if n in gridded), gridded[0])


def _north_up(values: np.ndarray, transform: Any, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Rows north to south, columns west to east: from the level's transform, else its coordinates."""
    if transform is not None and len(transform) == 6:
        x_step, y_step = float(transform[0]), float(transform[4])
    else:
        x_step = float(xs[-1] - xs[0]) if len(xs) > 1 else 1.0
        y_step = float(ys[-1] - ys[0]) if len(ys) > 1 else -1.0
    if y_step > 0:
        values = values[::-1]
    if x_step < 0:
        values = values[:, ::-1]
    return values


def robust_clim(values: np.ndarray) -> tuple[float, float] | None:
    """The 2nd..98th percentile of the finite values (None when there are none); widened by 0.5
    either side when they are equal, so a constant field shows the colormap's middle colour."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(finite, ROBUST_PERCENTILES))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def colourise(values: np.ndarray, table: np.ndarray, clim: tuple[float, float] | None) -> np.ndarray:
    """(h, w, 4) uint8 RGBA: values linearly between clim[0] and clim[1] (clipped) index the
    256-entry table; non-finite cells are fully transparent black."""
    finite = np.isfinite(values)
    rgba = np.zeros(values.shape + (4,), dtype=np.uint8)
    if clim is None:
        return rgba
    lo, hi = clim
    t = np.clip((np.where(finite, values, lo) - lo) / (hi - lo), 0.0, 1.0)
    index = np.rint(t * (len(table) - 1)).astype(np.intp)
    rgba[..., :3] = table[index]
    rgba[..., 3] = 255
    rgba[~finite] = 0
    return rgba


def encode_png(rgba: np.ndarray) -> bytes:
    """An 8-bit RGBA PNG (filter 0 on every row, zlib level 9).

    :param rgba: ``(h, w, 4)`` uint8 pixels.
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"encode_png needs (h, w, 4) uint8 data, got {rgba.shape} {rgba.dtype}")
    h, w = rgba.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"encode_png: an image needs at least one pixel, got {w}x{h}")
    rows = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rgba.reshape(h, w * 4)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))
