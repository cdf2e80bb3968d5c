"""The compiled (numba) block-reduce kernels behind :func:`topozarr_core.kernels.reduce.block_reduce`.

Each works on C-contiguous 3-D arrays ``(n, Y, X)`` and reduces the last two axes by ``f``; the
Python front end in :mod:`topozarr_core.kernels.reduce` checks inputs, picks the kernel and shapes arrays. Compiled
lazily with ``nogil=True`` (threads run them in parallel) and cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")


# --------------------------------------------------------------------------
# kernels
#
# Common arguments: ``data`` (n, Y, X) C-contiguous, ``f`` factor,
# ``has_fill``/``fill`` (fill is a scalar of data's dtype; unused when
# has_fill is False), ``miss_val`` (scalar of out's dtype written for
# missing results), ``out`` (n, Y//f, X//f).  ``v != v`` is the NaN test; for
# integer dtypes it is constant False and compiles away.
# --------------------------------------------------------------------------


# Per-window helpers, inlined into the kernels.  Each kernel calls them with
# the literal 2 when f == 2 (the usual pyramid step) so LLVM unrolls and
# vectorizes that case (2-4x faster than the generic loop), else with f.
# Missing pixels are replaced by a neutral value instead of branching: random
# data makes such branches mispredict about half the time.

_inline = numba.njit(inline="always", cache=True)


@_inline
def _valid(v, has_fill, fill):
    return not (v != v or (has_fill and v == fill))


@_inline
def _win_sum(data, i, y0, x0, f, has_fill, fill, zero):
    """(sum of valid pixels accumulated in zero's type, number of valid pixels)."""
    s = zero
    c = 0
    for dy in range(f):
        for dx in range(f):
            v = data[i, y0 + dy, x0 + dx]
            ok = _valid(v, has_fill, fill)
            s += v if ok else zero
            c += ok
    return s, c


@_inline
def _win_wsum(data, missing, i, y0, x0, f, weight, has_fill, fill):
    """(sum of value * valid weight, sum of valid weights, sum of missing counts)."""
    s = 0.0
    ws = np.int64(0)
    ms = np.uint64(0)
    for dy in range(f):
        for dx in range(f):
            v = data[i, y0 + dy, x0 + dx]
            mi = missing[i, y0 + dy, x0 + dx]
            ok = not (mi >= weight or v != v or (has_fill and v == fill))
            w = weight - np.int64(mi) if ok else np.int64(0)
            s += np.float64(v) * w if ok else 0.0
            ws += w
            ms += mi
    return s, ws, ms


@_inline
def _win_max(data, i, y0, x0, f, has_fill, fill, init):
    """(max of valid pixels or init, number of valid pixels)."""
    best = init
    c = 0
    for dy in range(f):
        for dx in range(f):
            v = data[i, y0 + dy, x0 + dx]
            ok = _valid(v, has_fill, fill)
            best = max(best, v if ok else init)
            c += ok
    return best, c


@_inline
def _win_min(data, i, y0, x0, f, has_fill, fill, init):
    """(min of valid pixels or init, number of valid pixels)."""
    best = init
    c = 0
    for dy in range(f):
        for dx in range(f):
            v = data[i, y0 + dy, x0 + dx]
            ok = _valid(v, has_fill, fill)
            best = min(best, v if ok else init)
            c += ok
    return best, c


@_jit
def mean_plain(data, f, has_fill, fill, miss_val, do_round, weight, out, out_missing):
    """Nan-mean of each ``f`` x ``f`` window; missing counts derived from data (``weight`` per missing pixel).

    :param data: the input, ``(n, Y, X)`` C-contiguous.
    :param f: the reduction factor.
    :param has_fill: whether ``fill`` marks missing pixels (NaN always does).
    :param fill: the fill value, a scalar of ``data``'s dtype.
    :param miss_val: the value written where a window has no valid pixel.
    :param do_round: round the mean to the nearest integer (integer outputs).
    :param weight: the missing count of one missing input pixel.
    :param out: the output, ``(n, Y // f, X // f)``.
    :param out_missing: the output's missing counts, same shape as ``out``.
    :returns: 0.
    """
    n, yo, xo = out.shape
    for i in range(n):
        for oy in range(yo):
            for ox in range(xo):
                if f == 2:
                    s, c = _win_sum(data, i, 2 * oy, 2 * ox, 2, has_fill, fill, 0.0)
                else:
                    s, c = _win_sum(data, i, f * oy, f * ox, f, has_fill, fill, 0.0)
                out_missing[i, oy, ox] = (f * f - c) * weight
                if c == 0:
                    out[i, oy, ox] = miss_val
                else:
                    m = s / c
                    if do_round:
                        m = np.rint(m)
                    out[i, oy, ox] = m
    return 0


@_jit
def mean_weighted(data, missing, weight, f, has_fill, fill, miss_val, do_round, out, out_missing):
    """Weighted mean: pixel weight = weight - missing (<= 0 means missing).

    Returns the number of windows without valid weight when ``has_fill`` is
    False (integer data without fill value has no way to mark them).

    :param data: the input, ``(n, Y, X)`` C-contiguous.
    :param missing: the input's missing counts, same shape as ``data``.
    :param weight: the missing count of a fully missing input pixel.
    :param f: the reduction factor.
    :param has_fill: whether ``fill`` marks missing pixels (NaN always does).
    :param fill: the fill value, a scalar of ``data``'s dtype.
    :param miss_val: the value written where a window has no valid weight.
    :param do_round: round the mean to the nearest integer (integer outputs).
    :param out: the output, ``(n, Y // f, X // f)``.
    :param out_missing: the summed missing counts of each window, same shape as ``out``.
    """
    n, yo, xo = out.shape
    bad = 0
    for i in range(n):
        for oy in range(yo):
            for ox in range(xo):
                if f == 2:
                    s, ws, ms = _win_wsum(data, missing, i, 2 * oy, 2 * ox, 2, weight, has_fill, fill)
                else:
                    s, ws, ms = _win_wsum(data, missing, i, f * oy, f * ox, f, weight, has_fill, fill)
                out_missing[i, oy, ox] = ms
                if ws == 0:
                    out[i, oy, ox] = miss_val
                    if not has_fill:
                        bad += 1
                else:
                    m = s / ws
                    if do_round:
                        m = np.rint(m)
                    out[i, oy, ox] = m
    return bad


@_jit
def sum_kernel(data, f, has_fill, fill, zero, out):
    """Sum of valid pixels; ``zero`` sets the accumulator type (float64 / int64 / uint64).

    :param data: the input, ``(n, Y, X)`` C-contiguous.
    :param f: the reduction factor.
    :param has_fill: whether ``fill`` marks missing pixels (NaN always does).
    :param fill: the fill value, a scalar of ``data``'s dtype.
    :param zero: the accumulator's zero.
    :param out: the output, ``(n, Y // f, X // f)``; a window without valid pixels sums to 0.
    :returns: 0.
    """
    n, yo, xo = out.shape
    for i in range(n):
        for oy in range(yo):
            for ox in range(xo):
                if f == 2:
                    s, c = _win_sum(data, i, 2 * oy, 2 * ox, 2, has_fill, fill, zero)
                else:
                    s, c = _win_sum(data, i, f * oy, f * ox, f, has_fill, fill, zero)
                out[i, oy, ox] = s
    return 0


# max / min: ``init`` is the identity (-inf/+inf for floats, the dtype's
# min/max for ints), standing in for missing pixels.


@_jit
def max_kernel(data, f, has_fill, fill, init, miss_val, out):
    """Max of the valid pixels of each ``f`` x ``f`` window.

    :param data: the input, ``(n, Y, X)`` C-contiguous.
    :param f: the reduction factor.
    :param has_fill: whether ``fill`` marks missing pixels (NaN always does).
    :param fill: the fill value, a scalar of ``data``'s dtype.
    :param init: the identity of max (-inf, or the dtype's minimum).
    :param miss_val: the value written where a window has no valid pixel.
    :param out: the output, ``(n, Y // f, X // f)``.
    :returns: 0.
    """
    n, yo, xo = out.shape
    for i in range(n):
        for oy in range(yo):
            for ox in range(xo):
                if f == 2:
                    best, c = _win_max(data, i, 2 * oy, 2 * ox, 2, has_fill, fill, init)
                else:
                    best, c = _win_max(data, i, f * oy, f * ox, f, has_fill, fill, init)
                out[i, oy, ox] = best if c else miss_val
    return 0


@_jit
def min_kernel(data, f, has_fill, fill, init, miss_val, out):
    """Min of the valid pixels of each ``f`` x ``f`` window.

    :param data: the input, ``(n, Y, X)`` C-contiguous.
    :param f: the reduction factor.
    :param has_fill: whether ``fill`` marks missing pixels (NaN always does).
    :param fill: the fill value, a scalar of ``data``'s dtype.
    :param init: the identity of min (+inf, or the dtype's maximum).
    :param miss_val: the value written where a window has no valid pixel.
    :param out: the output, ``(n, Y // f, X // f)``.
    :returns: 0.
    """
    n, yo, xo = out.shape
    for i in range(n):
        for oy in range(yo):
            for ox in range(xo):
                if f == 2:
                    best, c = _win_min(data, i, 2 * oy, 2 * ox, 2, has_fill, fill, init)
                else:
                    best, c = _win_min(data, i, f * oy, f * ox, f, has_fill, fill, init)
                out[i, oy, ox] = best if c else miss_val
    return 0


@_jit
def nearest_kernel(data, f, out):
    """Nearest: the top-left pixel of each ``f`` x ``f`` window, missing or not.

    :param data: the input, ``(n, Y, X)`` C-contiguous.
    :param f: the reduction factor.
    :param out: the output, ``(n, Y // f, X // f)``.
    :returns: 0.
    """
    n, yo, xo = out.shape
    for i in range(n):
        for oy in range(yo):
            for ox in range(xo):
                out[i, oy, ox] = data[i, oy * f, ox * f]
    return 0


@_inline
def _better(best, best_n, v, n):
    """Branch-free mode candidate update: more occurrences, or as many and smaller."""
    better = (n > best_n) | ((n == best_n) & (v < best))
    return (v if better else best), (n if better else best_n)


@_inline
def _win_mode_2(data, i, y0, x0, has_fill, fill):
    """(mode, its count, number of valid pixels) of a 2x2 window, unrolled and
    branch-free (about 20x faster than the generic insertion sort)."""
    a = data[i, y0, x0]
    b = data[i, y0, x0 + 1]
    c = data[i, y0 + 1, x0]
    d = data[i, y0 + 1, x0 + 1]
    oa = np.int64(_valid(a, has_fill, fill))
    ob = np.int64(_valid(b, has_fill, fill))
    oc = np.int64(_valid(c, has_fill, fill))
    od = np.int64(_valid(d, has_fill, fill))
    eab = np.int64(a == b)
    eac = np.int64(a == c)
    ead = np.int64(a == d)
    ebc = np.int64(b == c)
    ebd = np.int64(b == d)
    ecd = np.int64(c == d)
    # occurrences of each pixel's value among the valid pixels (0 if itself invalid)
    best, best_n = a, oa * (1 + ob * eab + oc * eac + od * ead)
    best, best_n = _better(best, best_n, b, ob * (1 + oa * eab + oc * ebc + od * ebd))
    best, best_n = _better(best, best_n, c, oc * (1 + oa * eac + ob * ebc + od * ecd))
    best, best_n = _better(best, best_n, d, od * (1 + oa * ead + ob * ebd + oc * ecd))
    return best, best_n, oa + ob + oc + od


@_jit
def mode_kernel(data, f, has_fill, fill, miss_val, majority, out):
    """Most frequent valid value (ties -> smallest); with ``majority`` only a
    value held by strictly more than half of the valid pixels, else missing.

    Generic factor: insertion-sort each window's valid pixels into a buffer,
    then take the longest run (cheap to compile; factor 2 has mode_f2_kernel).

    :param data: the input, ``(n, Y, X)`` C-contiguous.
    :param f: the reduction factor.
    :param has_fill: whether ``fill`` marks missing pixels (NaN always does).
    :param fill: the fill value, a scalar of ``data``'s dtype.
    :param miss_val: the value written where a window has no (majority) value.
    :param majority: require a strict majority of the valid pixels.
    :param out: the output, ``(n, Y // f, X // f)``.
    :returns: 0.
    """
    n, yo, xo = out.shape
    buf = np.empty(f * f, dtype=data.dtype)
    for i in range(n):
        for oy in range(yo):
            y0 = oy * f
            for ox in range(xo):
                x0 = ox * f
                k = 0
                for dy in range(f):
                    for dx in range(f):
                        v = data[i, y0 + dy, x0 + dx]
                        if not _valid(v, has_fill, fill):
                            continue
                        j = k
                        while j > 0 and buf[j - 1] > v:
                            buf[j] = buf[j - 1]
                            j -= 1
                        buf[j] = v
                        k += 1
                best = miss_val
                best_n = 0
                run_n = 0
                for j in range(k):
                    run_n = run_n + 1 if j > 0 and buf[j] == buf[j - 1] else 1
                    if run_n > best_n:  # strict: the earlier (smaller) value wins ties
                        best_n = run_n
                        best = buf[j]
                if k == 0 or (majority and 2 * best_n <= k):
                    out[i, oy, ox] = miss_val
                else:
                    out[i, oy, ox] = best
    return 0


@_jit
def mode_f2_kernel(data, has_fill, fill, miss_val, majority, out):
    """:func:`mode_kernel` for factor 2, in a kernel of its own so it vectorizes.

    :param data: the input, ``(n, Y, X)`` C-contiguous.
    :param has_fill: whether ``fill`` marks missing pixels (NaN always does).
    :param fill: the fill value, a scalar of ``data``'s dtype.
    :param miss_val: the value written where a window has no (majority) value.
    :param majority: require a strict majority of the valid pixels.
    :param out: the output, ``(n, Y // 2, X // 2)``.
    :returns: 0.
    """
    n, yo, xo = out.shape
    for i in range(n):
        for oy in range(yo):
            for ox in range(xo):
                best, best_n, k = _win_mode_2(data, i, 2 * oy, 2 * ox, has_fill, fill)
                bad = (k == 0) | (majority & (2 * best_n <= k))
                out[i, oy, ox] = miss_val if bad else best
    return 0


@_jit
def missing_mask_kernel(data, has_fill, fill, out):
    """Mark the missing pixels (NaN, or ``fill`` when ``has_fill``) of ``data`` in ``out``.

    :param data: the input, ``(n, Y, X)`` C-contiguous.
    :param has_fill: whether ``fill`` marks missing pixels.
    :param fill: the fill value, a scalar of ``data``'s dtype.
    :param out: a boolean array of ``data``'s shape.
    :returns: 0.
    """
    n, y, x = data.shape
    for i in range(n):
        for r in range(y):
            for c in range(x):
                v = data[i, r, c]
                out[i, r, c] = not _valid(v, has_fill, fill)
    return 0
