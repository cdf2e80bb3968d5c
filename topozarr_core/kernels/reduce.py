"""Compiled block-reduce kernels for building multiscale pyramids.

Every kernel downsamples the last two axes (y, x) of an array by the same
integer ``factor``; leading axes are flattened into one so the compiled code
always sees C-contiguous 3-D arrays ``(n, Y, X)``.  Windows that do not fit
are dropped, like ``xarray``'s ``coarsen(..., boundary="trim")``.

The kernels are compiled with ``nogil=True``: calling :func:`block_reduce`
from several threads of a pool runs them in parallel.  They are compiled
lazily (once per input dtype and method) and cached on disk (``cache=True``).

Missing pixels are NaN (floats) or equal to ``fill_value`` (when given).
For ``"mean"`` each input pixel can carry a count of missing level-0 pixels
behind it (``missing``) and the number of level-0 pixels it stands for
(``weight``), so that a pyramid built level by level gives exactly the same
means as reducing level 0 directly by the combined factor.
"""

from __future__ import annotations

import math

import numpy as np

from topozarr_core.kernels import compiled as nk

__all__ = ["METHODS", "SUPPORTED_DTYPES", "block_reduce", "missing_mask", "output_dtype"]

METHODS = ("mean", "max", "min", "sum", "nearest", "mode", "majority")

#: Dtypes the kernels accept (topozarr's set). float16 is reduced through float32 (numba has no
#: CPU float16 arithmetic): every float16 value is exact in float32, so only the result is rounded.
SUPPORTED_DTYPES = tuple(np.dtype(c) for c in ("i1", "u1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"))
_HALF = np.dtype(np.float16)
_UINT32_MAX = np.iinfo(np.uint32).max
#: Dtypes the ``mean`` kernels read and write missing counts in without conversion.
_MISSING_DTYPES = tuple(np.dtype(c) for c in ("u1", "u2", "u4"))


# --------------------------------------------------------------------------
# Python front end
# --------------------------------------------------------------------------


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"unsupported dtype {dtype!r}") from exc
    native = dt.newbyteorder("=") if dt.byteorder not in ("=", "|") else dt
    if native not in SUPPORTED_DTYPES:
        raise TypeError(
            f"unsupported dtype {dt}; expected one of {[str(d) for d in SUPPORTED_DTYPES]}"
        )
    return native


def output_dtype(method: str, dtype: np.dtype) -> np.dtype:
    """Output dtype of :func:`block_reduce`.

    ``"sum"``: int64 for signed ints, uint64 for unsigned ints, same dtype for
    floats.  Every other method: the input dtype (integers stay integers).
    """
    _check_method(method)
    dt = _check_dtype(dtype)
    if method == "sum" and dt.kind == "i":
        return np.dtype(np.int64)
    if method == "sum" and dt.kind == "u":
        return np.dtype(np.uint64)
    return dt


def _fill_scalar(fill_value, dtype: np.dtype):
    """(has_fill, fill as a scalar of ``dtype``). A NaN fill on floats means no fill."""
    if fill_value is None:
        return False, dtype.type(0)
    if isinstance(fill_value, (bool, np.bool_)):
        raise TypeError("fill_value must be a number, not bool")
    if dtype.kind == "f":
        fv = float(fill_value)
        if math.isnan(fv):
            return False, dtype.type(0)
        with np.errstate(over="ignore"):
            return True, dtype.type(fv)
    # integer data: the fill must be an integer representable in the dtype
    try:
        is_int = float(fill_value).is_integer()
    except (TypeError, ValueError, OverflowError):
        is_int = False
    info = np.iinfo(dtype)
    if not is_int or not (info.min <= int(fill_value) <= info.max):
        raise ValueError(f"fill_value {fill_value!r} is not representable as {dtype}")
    return True, dtype.type(int(fill_value))


def _as_3d(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``arr`` as a C-contiguous ``(n, Y, X)`` of ``dtype``: a view when it already is one, else a copy.

    The kernels also accept strided arrays, but compiled for unknown strides they do not vectorize
    and run 4-6x slower than a contiguous copy plus the contiguous kernel.
    """
    arr = np.ascontiguousarray(arr, dtype=dtype)
    return arr.reshape((math.prod(arr.shape[:-2]),) + arr.shape[-2:])


def _missing_in(missing: np.ndarray) -> np.ndarray:
    """Missing counts as the kernel reads them: unsigned 8/16/32-bit as given, else uint32."""
    if missing.dtype in _MISSING_DTYPES:
        return _as_3d(missing, missing.dtype)
    return _as_3d(missing, np.dtype(np.uint32))


def _output(given: np.ndarray | None, name: str, shape: tuple[int, ...], dtype: np.dtype | None,
            kinds: str = "") -> tuple[np.ndarray, np.ndarray, bool]:
    """(array returned to the caller, 3-D array the kernel writes, whether to copy it back).

    With ``given`` (the caller's ``out=``) the kernel writes into it directly when it can be seen
    as 3-D without a copy, else into a temporary copied back by :func:`_finish`.
    """
    n = math.prod(shape[:-2])
    if given is None:
        arr = np.empty(shape, dtype=dtype)
        return arr, arr.reshape((n,) + shape[-2:]), False
    if given.shape != shape:
        raise ValueError(f"{name} has shape {given.shape}, expected {shape}")
    if dtype is not None and given.dtype != dtype:
        raise TypeError(f"{name} has dtype {given.dtype}, expected {dtype}")
    if kinds and given.dtype.kind not in kinds:
        raise TypeError(f"{name} must be an unsigned integer array (got {given.dtype})")
    if not given.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if given.flags.c_contiguous:
        return given, given.reshape((n,) + shape[-2:]), False
    # a strided window (e.g. of a larger buffer): a contiguous temporary copied back is faster than
    # the kernel compiled for unknown strides (see _as_3d)
    return given, np.empty((n,) + shape[-2:], dtype=given.dtype), True


def _finish(triple: tuple[np.ndarray, np.ndarray, bool]) -> np.ndarray:
    """Copy the kernel's temporary back into the caller's ``out=`` when it could not write there."""
    result, written, copy_back = triple
    if copy_back:
        result[...] = written.reshape(result.shape)
    return result


def _half_fill(fill_value: float | int | None) -> float | None:
    """A float16 variable's fill value as float32 data compares with it (rounded to float16 first)."""
    if fill_value is None:
        return None
    _, fill = _fill_scalar(fill_value, _HALF)
    return float(fill)


def _reduce_half(data: np.ndarray, factor: int, method: str, fill_value: float | int | None,
                 missing: np.ndarray | None, weight: int, out: np.ndarray | None,
                 out_missing: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`block_reduce` of float16 data: reduced in float32 (exact for every float16 value,
    float64 accumulation for means), the result rounded once to float16."""
    result, counts = block_reduce(data.astype(np.float32), factor, method, _half_fill(fill_value), missing=missing,
                                  weight=weight, out_missing=out_missing)
    if out is None:
        return result.astype(_HALF), counts
    if out.shape != result.shape:
        raise ValueError(f"out has shape {out.shape}, expected {result.shape}")
    if out.dtype != _HALF:
        raise TypeError(f"out has dtype {out.dtype}, expected {_HALF}")
    out[...] = result
    return out, counts


def missing_mask(data: np.ndarray, fill_value: float | int | None) -> np.ndarray:
    """Boolean mask of missing pixels: NaN, or equal to ``fill_value`` when given.

    :param data: the pixels, any shape.
    :param fill_value: the fill value, or None (only NaN is missing).
    """
    data = np.asarray(data)
    dt = _check_dtype(data.dtype)
    if dt == _HALF:
        return missing_mask(data.astype(np.float32), _half_fill(fill_value))
    has_fill, fill = _fill_scalar(fill_value, dt)
    d3 = np.ascontiguousarray(data, dtype=dt).reshape(1, 1, -1)
    out = np.empty(d3.shape, dtype=np.bool_)
    nk.missing_mask_kernel(d3, has_fill, fill, out)
    return out.reshape(data.shape)


def block_reduce(
    data: np.ndarray,
    factor: int,
    method: str,
    fill_value: float | int | None,
    missing: np.ndarray | None = None,
    weight: int = 1,
    out: np.ndarray | None = None,
    out_missing: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Downsample the last two axes of ``data`` by ``factor`` with ``method``.

    Parameters
    ----------
    data
        Array with ``ndim >= 2``; the last two axes are (y, x).  dtype one of
        i1 u1 u2 i2 u4 i4 u8 i8 f2 f4 f8 (any byte order; output is native).
    factor
        Integer factor along y and x (>= 1).  Trailing rows/columns that do not
        fill a whole window are dropped (``coarsen(boundary="trim")``).
    method
        One of :data:`METHODS`.
    fill_value
        Value marking missing pixels besides NaN (None: only NaN is missing;
        integer data without fill has no missing pixels).  For integer data it
        must be representable in the dtype.  Missing outputs are written as
        ``fill_value``, or NaN for floats without one.
    missing
        ``"mean"`` only: per input pixel, how many of the level-0 pixels behind
        it are missing (same shape as ``data``; cast to uint32).  ``None``
        derives it from ``data``: ``weight`` for a missing pixel (i.e. 1 with
        the default ``weight=1``), else 0.
    weight
        ``"mean"`` only: level-0 pixels behind each input pixel.  A pixel's
        valid weight is ``weight - missing``; zero valid weight means missing.
    out, out_missing
        Optional arrays to write the results into (e.g. windows of a larger
        buffer; a C-contiguous one is written directly, a strided one
        through a contiguous temporary).  ``out`` must have the
        output shape and dtype; ``out_missing`` (``"mean"`` only) the output
        shape and an unsigned dtype wide enough for ``weight * factor**2``.
        Without them new arrays are returned (``out_missing`` uint32).

    Returns
    -------
    (out, out_missing)
        ``out`` has shape ``(..., Y // factor, X // factor)`` and dtype
        :func:`output_dtype`.  ``out_missing`` (uint32, same shape) is the sum
        of the input missing counts over each window for ``"mean"``, else None.

    Methods
    -------
    mean      weighted mean of valid pixels (float64 accumulation; integers are
              rounded half to even, like ``np.rint``).
    sum       sum of valid pixels; all-missing window -> 0.
    max/min   over valid pixels.
    nearest   top-left pixel of the window, as is.
    mode      most frequent valid value, ties -> smallest.
    majority  valid value held by strictly more than half of the window's
              valid pixels, else missing (integer data needs a fill_value).
    """
    _check_method(method)
    data = np.asarray(data)
    if data.ndim < 2:
        raise ValueError(f"data must have ndim >= 2 (got {data.ndim})")
    dt = _check_dtype(data.dtype)
    if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (int, np.integer)):
        raise ValueError(f"factor must be an integer >= 1 (got {factor!r})")
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be >= 1 (got {factor})")
    if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, (int, np.integer)) or weight < 1:
        raise ValueError(f"weight must be an integer >= 1 (got {weight!r})")
    weight = int(weight)
    if dt == _HALF:
        return _reduce_half(data, factor, method, fill_value, missing, weight, out, out_missing)
    has_fill, fill = _fill_scalar(fill_value, dt)
    is_int = dt.kind in "iu"
    if method == "majority" and is_int and not has_fill:
        raise ValueError("method 'majority' on integer data needs a fill_value to mark windows without a majority")

    odt = output_dtype(method, dt)
    if has_fill:
        miss_val = odt.type(fill)
    elif not is_int:
        miss_val = odt.type(np.nan)
    else:
        miss_val = odt.type(0)  # never written: integer data without fill has no missing pixels

    lead = data.shape[:-2]
    yo, xo = data.shape[-2] // factor, data.shape[-1] // factor
    d3 = _as_3d(data, dt)
    out_pair = _output(out, "out", lead + (yo, xo), odt)
    o3 = out_pair[1]

    miss_pair = None
    if method == "mean":
        most = weight * factor * factor
        if most > _UINT32_MAX:
            raise ValueError("weight * factor**2 overflows the uint32 missing counts")
        miss_pair = _output(out_missing, "out_missing", lead + (yo, xo),
                            None if out_missing is not None else np.dtype(np.uint32), kinds="u")
        if out_missing is not None and most > np.iinfo(out_missing.dtype).max:
            raise ValueError(f"out_missing dtype {out_missing.dtype} cannot hold counts up to {most}")
        m_out = miss_pair[1]
        if missing is None:
            nk.mean_plain(d3, factor, has_fill, fill, miss_val, is_int, weight, o3, m_out)
        else:
            missing = np.asarray(missing)
            if missing.shape != data.shape:
                raise ValueError(f"missing has shape {missing.shape}, expected {data.shape}")
            if missing.dtype.kind not in "iu":
                raise TypeError(f"missing must be an integer array (got {missing.dtype})")
            m3 = _missing_in(missing)
            bad = nk.mean_weighted(d3, m3, weight, factor, has_fill, fill, miss_val, is_int, o3, m_out)
            if bad and is_int:
                raise ValueError(
                    f"{bad} output pixels have no valid weight but integer data without "
                    "fill_value cannot mark them missing; pass a fill_value"
                )
    elif method == "sum":
        nk.sum_kernel(d3, factor, has_fill, fill, np.float64(0) if odt.kind == "f" else odt.type(0), o3)
    elif method == "max":
        init = dt.type(-np.inf) if dt.kind == "f" else dt.type(np.iinfo(dt).min)
        nk.max_kernel(d3, factor, has_fill, fill, init, miss_val, o3)
    elif method == "min":
        init = dt.type(np.inf) if dt.kind == "f" else dt.type(np.iinfo(dt).max)
        nk.min_kernel(d3, factor, has_fill, fill, init, miss_val, o3)
    elif method == "nearest":
        nk.nearest_kernel(d3, factor, o3)
    elif factor == 2:  # mode, majority
        nk.mode_f2_kernel(d3, has_fill, fill, miss_val, method == "majority", o3)
    else:
        nk.mode_kernel(d3, factor, has_fill, fill, miss_val, method == "majority", o3)
    return _finish(out_pair), (None if miss_pair is None else _finish(miss_pair))
