"""CF-packed integers (``scale_factor`` / ``add_offset``) stored packed, as the source stores them.

Why: xarray decodes a packed int16 variable of a NetCDF file to floats; stored as those floats a
pyramid takes 2-4x the bytes of its source. A packed variable is therefore stored with the
source's integer dtype, ``scale_factor``, ``add_offset`` and ``_FillValue`` (also the zarr
``fill_value``), so xarray decodes the pyramid the way it decodes the source. Level 0 holds the
source's packed integers exactly (re-packing xarray's decoded values recovers them). Coarser
levels are reduced on the integer grid with the same scale and offset: ``mean`` rounds each level
to the nearest packed integer (half to even), so a coarse value is within half a quantum
(``scale_factor / 2``) of the mean of the level it is built from, and levels >= 2, built from the
rounded level before, within one quantum of the exact mean of level 0 (at most half a quantum
per level in the worst case). ``max``, ``min``, ``nearest``, ``mode`` and ``majority`` pick
packed source values and are exact. ``sum`` is not packed (a sum of packed values has no place on
the source's grid once ``add_offset`` counts once per pixel): it is stored as decoded floats, as
is every variable when ``create_pyramid(..., pack=False)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from topozarr_core.kernels.reduce import SUPPORTED_DTYPES
from topozarr_core.text import short

PACKING_KEYS = ("scale_factor", "add_offset")
#: Methods whose results keep the meaning of packed values (a sum does not: see the module docstring).
PACKABLE_METHODS = ("mean", "max", "min", "nearest", "mode", "majority")


@dataclass(frozen=True)
class Packing:
    """How a variable is packed: its integer dtype and the source's CF packing attributes."""

    dtype: str
    scale_factor: float | None
    add_offset: float | None
    fill_value: int | None

    def attrs(self) -> dict[str, float]:
        """The packing attributes as the source has them (only those it has)."""
        out = {}
        if self.scale_factor is not None:
            out["scale_factor"] = self.scale_factor
        if self.add_offset is not None:
            out["add_offset"] = self.add_offset
        return out

    def pack(self, values: np.ndarray, name: str) -> np.ndarray:
        """Decoded values back to packed integers (NaN -> the fill value).

        :param values: decoded (float) values.
        :param name: the variable's name, for error messages.
        """
        scale = 1.0 if self.scale_factor is None else self.scale_factor
        offset = 0.0 if self.add_offset is None else self.add_offset
        decoded = np.asarray(values, dtype="f8")
        packed = np.rint((decoded - offset) / scale)
        nan = np.isnan(packed)
        dtype = np.dtype(self.dtype)
        if nan.any():
            if self.fill_value is None:
                raise ValueError(f"variable {name!r}: missing values cannot be packed into {dtype} without a "
                                 "_FillValue; set its encoding['_FillValue'] or pass create_pyramid(..., pack=False)")
            packed[nan] = self.fill_value
        info = np.iinfo(dtype)
        if packed.size and (packed.min() < info.min or packed.max() > info.max):
            raise ValueError(f"variable {name!r}: values outside what {dtype} with scale_factor={self.scale_factor} "
                             f"and add_offset={self.add_offset} can hold; pass create_pyramid(..., pack=False)")
        return packed.astype(dtype)


def _number(value: Any, name: str, key: str) -> float:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.size != 1 or not np.isfinite(arr).all():
        raise ValueError(f"variable {name!r}: encoding {key} {short(value)} is not a finite number; fix it or pass "
                         "create_pyramid(..., pack=False)")
    return float(arr.reshape(-1)[0])


def source_packing(da: xr.DataArray, method: str, pack: bool) -> Packing | None:
    """The packing to keep for a gridded data variable, or None (stored as it is decoded).

    Packing is kept only with ``pack`` for a method that packs (``PACKABLE_METHODS``), a float variable whose
    encoding has ``scale_factor``/``add_offset`` over a supported integer ``dtype``.

    :param da: the source variable (decoded).
    :param method: the reduction method.
    :param pack: the caller's ``create_pyramid(pack=...)``.
    """
    enc = da.encoding or {}
    if not pack or method not in PACKABLE_METHODS or not any(k in enc for k in PACKING_KEYS):
        return None
    if da.dtype.kind != "f" or "_Unsigned" in enc or "dtype" not in enc:
        return None
    dtype = np.dtype(enc["dtype"])
    if dtype.kind not in "iu" or dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        return None
    name = str(da.name)
    fill = enc.get("_FillValue", enc.get("missing_value"))
    if fill is not None:
        arr = np.asarray(fill).reshape(-1)
        value = _number(arr[0], name, "_FillValue")
        info = np.iinfo(dtype)
        if not value.is_integer() or not info.min <= value <= info.max:
            raise ValueError(f"variable {name!r}: _FillValue {short(fill)} does not fit its packed dtype {dtype}; "
                             "fix its encoding or pass create_pyramid(..., pack=False)")
        fill = int(value)
    scale = _number(enc["scale_factor"], name, "scale_factor") if "scale_factor" in enc else None
    offset = _number(enc["add_offset"], name, "add_offset") if "add_offset" in enc else None
    if scale == 0:
        raise ValueError(f"variable {name!r}: scale_factor is 0; fix its encoding or pass "
                         "create_pyramid(..., pack=False)")
    return Packing(dtype=dtype.newbyteorder("=").str, scale_factor=scale, add_offset=offset, fill_value=fill)


def packing_attrs(v: Any) -> dict[str, float]:
    """The packing attributes a gridded variable's arrays carry (none when it is not packed).

    :param v: the variable's spec.
    """
    packing = getattr(v, "packing", None)
    return packing.attrs() if packing is not None else {}


def stored_values(v: Any, values: np.ndarray) -> np.ndarray:
    """Source values (as xarray decodes them) as level 0 stores them: packed, or cast to the dtype.

    :param v: the variable's spec.
    :param values: the decoded values.
    """
    packing = getattr(v, "packing", None)
    if packing is not None:
        return packing.pack(values, v.name)
    return np.asarray(values).astype(v.dtype, copy=False)


__all__ = ["Packing", "PACKABLE_METHODS", "source_packing", "packing_attrs", "stored_values"]
