"""Tests for topozarr_core.kernels.reduce.block_reduce.

References are independent of the kernels: xarray's coarsen(boundary="trim")
for mean/max/min/sum, plain numpy slicing for nearest, brute-force Python
loops for mode/majority and for the weighted mean.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import xarray as xr

from topozarr_core.kernels.reduce import METHODS, block_reduce, missing_mask, output_dtype

SHAPES = [(37, 41), (3, 30, 29), (2, 3, 17, 26)]  # 2-D, 3-D, 4-D; none divisible by all factors
FACTORS = [2, 3, 4]
INT_FILLS = {"u1": 255, "u2": 65535, "i2": -32768, "i4": -9999, "i8": np.iinfo(np.int64).min}


# ---------------------------------------------------------------- references


def xr_coarsen(x: np.ndarray, f: int, method: str) -> np.ndarray:
    """xarray coarsen over the last two dims (skipna default), trimmed."""
    dims = [f"d{i}" for i in range(x.ndim - 2)] + ["y", "x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows
        c = xr.DataArray(x, dims=dims).coarsen(y=f, x=f, boundary="trim")
        return getattr(c, method)().values


def nan_count(x: np.ndarray, f: int) -> np.ndarray:
    return xr_coarsen(np.isnan(x).astype(np.int64), f, "sum")


def float_data(shape, dtype, seed, nan_frac=0.3):
    rng = np.random.default_rng(seed)
    # positive values (elevation-like) so relative tolerances are meaningful
    data = rng.uniform(1.0, 1000.0, size=shape).astype(dtype)
    data[rng.random(shape) < nan_frac] = np.nan
    data[..., :12, :12] = np.nan  # whole windows missing for f = 2, 3, 4
    return data


def int_data(shape, dtype, seed, fill, frac=0.3):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    lo, hi = max(info.min + 1, -(2**40)), min(info.max - 1, 2**40)
    data = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    if fill is not None:
        data[rng.random(shape) < frac] = fill
        data[..., :12, :12] = fill
    return data


def trimmed(x: np.ndarray, f: int) -> np.ndarray:
    return x[..., : x.shape[-2] // f * f, : x.shape[-1] // f * f]


def brute_mode(data, f, fill, majority):
    """Mode / majority by Python loops and np.unique (sorted values, first max = smallest)."""
    *lead, Y, X = data.shape
    is_float = data.dtype.kind == "f"
    miss = fill if fill is not None else np.nan
    out = np.empty((*lead, Y // f, X // f), dtype=data.dtype)
    for idx in np.ndindex(*out.shape):
        *lead_idx, oy, ox = idx
        w = data[(*lead_idx, slice(oy * f, oy * f + f), slice(ox * f, ox * f + f))].ravel()
        bad = np.isnan(w) if is_float else np.zeros(w.shape, bool)
        if fill is not None:
            bad |= w == fill
        valid = w[~bad]
        if valid.size == 0:
            out[idx] = miss
            continue
        vals, counts = np.unique(valid, return_counts=True)
        j = int(np.argmax(counts))
        if majority and 2 * counts[j] <= valid.size:
            out[idx] = miss
        else:
            out[idx] = vals[j]
    return out


def brute_weighted_mean(data, missing, weight, f, fill):
    """sum(v * w) / sum(w) with w = weight - missing over valid pixels, by loops."""
    *lead, Y, X = data.shape
    out = np.full((*lead, Y // f, X // f), np.nan)
    out_missing = np.zeros(out.shape, np.int64)
    for idx in np.ndindex(*out.shape):
        *lead_idx, oy, ox = idx
        sl = (*lead_idx, slice(oy * f, oy * f + f), slice(ox * f, ox * f + f))
        v = data[sl].astype(np.float64).ravel()
        m = missing[sl].astype(np.int64).ravel()
        out_missing[idx] = m.sum()
        w = weight - m
        ok = (w > 0) & ~np.isnan(v)
        if fill is not None:
            ok &= data[sl].ravel() != fill
        if ok.any():
            out[idx] = (v[ok] * w[ok]).sum() / w[ok].sum()
    return out, out_missing


# ---------------------------------------------------------------- float data vs xarray


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("dtype", ["f4", "f8"])
@pytest.mark.parametrize("method", ["mean", "max", "min", "sum"])
def test_float_vs_xarray(method, dtype, factor, shape):
    data = float_data(shape, dtype, seed=factor * 7 + len(shape))
    out, out_missing = block_reduce(data, factor, method, None)
    ref = xr_coarsen(data, factor, method)

    assert out.shape == ref.shape == (*shape[:-2], shape[-2] // factor, shape[-1] // factor)
    assert out.dtype == np.dtype(dtype)
    if method == "sum":
        # xarray (nansum) gives 0 for all-NaN windows; so must we
        assert (ref[..., 0, 0] == 0).all() and (out[..., 0, 0] == 0).all()
        assert not np.isnan(out).any()
        np.testing.assert_allclose(out, ref, rtol=1e-6)
    else:
        assert np.isnan(ref[..., 0, 0]).all()  # the all-NaN windows are exercised
        if method == "mean":
            np.testing.assert_allclose(out, ref, rtol=1e-6)
        else:
            np.testing.assert_array_equal(out, ref)  # exact, NaN positions included
    if method == "mean":
        assert out_missing.dtype == np.uint32 and out_missing.shape == out.shape
        np.testing.assert_array_equal(out_missing, nan_count(data, factor))
    else:
        assert out_missing is None


@pytest.mark.parametrize("method", ["mean", "max", "min", "sum"])
def test_float_fill_value_vs_xarray(method):
    fill = -9999.0
    data = float_data((2, 35, 38), "f4", seed=3)
    rng = np.random.default_rng(4)
    data[rng.random(data.shape) < 0.2] = fill
    data[..., 12:15, 24:30] = fill  # fill-only windows for f=3
    data[..., 15:18, 24:27] = np.nan
    data[..., 15:18, 27:30] = fill  # a window mixing NaN and fill only
    x = data.astype(np.float64)
    x[data == fill] = np.nan
    ref = xr_coarsen(x, 3, method)
    if method != "sum":
        assert np.isnan(ref).any()
        ref = np.where(np.isnan(ref), fill, ref)
    out, out_missing = block_reduce(data, 3, method, fill)
    assert out.dtype == np.float32
    assert not np.isnan(out).any()  # missing is marked with the fill value, not NaN
    np.testing.assert_allclose(out, ref.astype(np.float32), rtol=1e-6)
    if method == "mean":
        np.testing.assert_array_equal(out_missing, nan_count(x, 3))


# ---------------------------------------------------------------- integer data vs xarray


@pytest.mark.parametrize("with_fill", [True, False], ids=["fill", "nofill"])
@pytest.mark.parametrize("dtype", list(INT_FILLS))
@pytest.mark.parametrize("method", ["mean", "max", "min", "sum"])
def test_int_vs_xarray(method, dtype, with_fill):
    fill = INT_FILLS[dtype] if with_fill else None
    factor = 3 if dtype in ("u2", "i4") else 2
    shape = (2, 25, 31)
    data = int_data(shape, dtype, seed=len(dtype) + factor, fill=fill)

    x = data.astype(np.float64)
    if fill is not None:
        x[data == fill] = np.nan
    ref = xr_coarsen(x, factor, method)
    if method == "mean":
        ref = np.rint(ref)
    if method != "sum" and fill is not None:
        assert np.isnan(ref).any()
        ref = np.where(np.isnan(ref), fill, ref)
    expected_dtype = output_dtype(method, np.dtype(dtype))
    ref = ref.astype(expected_dtype)

    out, out_missing = block_reduce(data, factor, method, fill)
    assert out.dtype == expected_dtype
    if method == "sum":
        assert out.dtype == (np.uint64 if dtype[0] == "u" else np.int64)
    else:
        assert out.dtype == np.dtype(dtype)  # integer stays integer
    np.testing.assert_array_equal(out, ref)
    if method == "mean":
        np.testing.assert_array_equal(out_missing, nan_count(x, factor))


def test_int_mean_rounds_half_to_even():
    data = np.array([[1, 2, 2, 3, 0, 1], [1, 2, 2, 3, 0, 0]], dtype=np.int16)
    out, _ = block_reduce(data, 2, "mean", None)
    # means 1.5, 2.5, 0.25 -> np.rint: 2, 2, 0
    np.testing.assert_array_equal(out, np.array([[2, 2, 0]], dtype=np.int16))
    data = np.array([[-1, -2], [-1, -2]], dtype=np.int32)  # -1.5 -> -2
    assert block_reduce(data, 2, "mean", None)[0][0, 0] == -2


# ---------------------------------------------------------------- nearest


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("dtype", ["f4", "f8", "u1", "i8"])
def test_nearest(dtype, factor, shape):
    if dtype[0] == "f":
        data, fill = float_data(shape, dtype, seed=factor), None
    else:
        fill = INT_FILLS[dtype]
        data = int_data(shape, dtype, seed=factor, fill=fill)
    out, out_missing = block_reduce(data, factor, "nearest", fill)
    ref = data[..., ::factor, ::factor][..., : shape[-2] // factor, : shape[-1] // factor]
    assert out_missing is None and out.dtype == data.dtype
    np.testing.assert_array_equal(out, ref)  # missing pixels propagate as they are


# ---------------------------------------------------------------- weighted mean


def _level0(dtype, shape=(2, 67, 101), seed=11):
    data = float_data(shape, dtype, seed=seed, nan_frac=0.45)
    data[..., 40:44, 40:42] = np.nan  # half-empty 4x4 windows -> unequal level-1 weights
    return data


@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_weighted_mean_is_hierarchically_consistent(dtype):
    level0 = _level0(dtype)
    direct4, miss4 = block_reduce(level0, 4, "mean", None)
    np.testing.assert_allclose(direct4, xr_coarsen(level0, 4, "mean"), rtol=1e-6)
    np.testing.assert_array_equal(miss4, nan_count(level0, 4))

    lvl1, miss1 = block_reduce(level0, 2, "mean", None)
    lvl2, miss2 = block_reduce(lvl1, 2, "mean", None, missing=miss1, weight=4)
    assert lvl2.shape == direct4.shape == (2, 16, 25)
    np.testing.assert_allclose(lvl2, direct4, rtol=1e-6)
    np.testing.assert_array_equal(miss2, miss4)

    # the plain mean of means differs: the test above can fail
    naive, _ = block_reduce(lvl1, 2, "mean", None)
    assert np.isnan(naive).sum() == np.isnan(direct4).sum()
    ok = ~np.isnan(direct4)
    assert np.abs(naive[ok] - direct4[ok]).max() > 1e-3 * np.abs(direct4[ok]).max()

    # one more level: weight 16 vs factor 8 directly
    lvl3, miss3 = block_reduce(lvl2, 2, "mean", None, missing=miss2, weight=16)
    direct8, miss8 = block_reduce(level0, 8, "mean", None)
    np.testing.assert_allclose(lvl3, direct8, rtol=1e-6)
    np.testing.assert_allclose(direct8, xr_coarsen(level0, 8, "mean"), rtol=1e-6)
    np.testing.assert_array_equal(miss3, miss8)


def test_weighted_mean_hierarchy_with_fill_value():
    fill = -9999.0
    level0 = _level0("f4", seed=12)
    rng = np.random.default_rng(13)
    level0[rng.random(level0.shape) < 0.1] = fill
    x = np.where(level0 == fill, np.nan, level0.astype(np.float64))
    lvl1, miss1 = block_reduce(level0, 2, "mean", fill)
    lvl2, miss2 = block_reduce(lvl1, 2, "mean", fill, missing=miss1, weight=4)
    ref = xr_coarsen(x, 4, "mean")
    assert np.isnan(ref).any()
    np.testing.assert_allclose(lvl2, np.where(np.isnan(ref), fill, ref), rtol=1e-6)
    np.testing.assert_array_equal(miss2, nan_count(x, 4))


@pytest.mark.parametrize("dtype,fill", [("f8", None), ("f4", -1.0), ("u2", 0), ("i4", -9999)])
@pytest.mark.parametrize("factor", [2, 3])
def test_weighted_mean_vs_brute_force(dtype, fill, factor):
    rng = np.random.default_rng(21)
    shape, weight = (2, 14, 17), 9
    if dtype[0] == "f":
        data = rng.uniform(1, 100, shape).astype(dtype)
        data[rng.random(shape) < 0.1] = np.nan
    else:
        data = rng.integers(1, 5000, shape).astype(dtype)
    if fill is not None:
        data[rng.random(shape) < 0.1] = fill
    missing = rng.integers(0, weight + 1, shape).astype(np.uint32)  # includes fully missing pixels
    missing[..., :factor, :factor] = weight  # one window with no valid weight
    ref, ref_missing = brute_weighted_mean(data, missing, weight, factor, fill)
    out, out_missing = block_reduce(data, factor, "mean", fill, missing=missing, weight=weight)
    assert out.dtype == np.dtype(dtype) and out_missing.dtype == np.uint32
    np.testing.assert_array_equal(out_missing, ref_missing)
    marker = np.nan if fill is None else fill
    assert np.isnan(ref[..., 0, 0]).all()
    if dtype[0] == "f":
        np.testing.assert_allclose(out, np.where(np.isnan(ref), marker, ref), rtol=1e-6)
    else:
        np.testing.assert_array_equal(out, np.where(np.isnan(ref), marker, np.rint(ref)).astype(dtype))


def test_missing_none_equals_derived_missing():
    data = float_data((3, 20, 22), "f8", seed=5)
    derived = np.isnan(data).astype(np.uint32)
    a, ma = block_reduce(data, 2, "mean", None)
    b, mb = block_reduce(data, 2, "mean", None, missing=derived, weight=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    # with weight > 1 a missing pixel stands for `weight` missing level-0 pixels
    c, mc = block_reduce(data, 2, "mean", None, weight=4)
    np.testing.assert_array_equal(c, a)
    np.testing.assert_array_equal(mc, 4 * nan_count(data, 2))


# ---------------------------------------------------------------- mode / majority


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("method", ["mode", "majority"])
@pytest.mark.parametrize(
    "dtype,cats,fill",
    [("u1", [0, 1, 2, 3, 4], 255), ("i4", [-5, 0, 7, 1000], -1), ("f4", [0.5, 1.0, 2.0], None)],
)
def test_mode_majority_vs_brute_force(method, factor, dtype, cats, fill):
    rng = np.random.default_rng(factor)
    shape = (3, 15, 14)
    # skewed category frequencies so both "majority found" and "no majority" occur
    data = rng.choice(np.array(cats, dtype=dtype), size=shape, p=np.linspace(2, 1, len(cats)) / np.linspace(2, 1, len(cats)).sum())
    marker = fill if fill is not None else np.nan
    data[rng.random(shape) < 0.25] = marker
    data[..., :factor, :factor] = marker  # an all-missing window
    ref = brute_mode(data, factor, fill, method == "majority")
    out, out_missing = block_reduce(data, factor, method, fill)
    assert out_missing is None and out.dtype == data.dtype
    np.testing.assert_array_equal(out, ref)
    if method == "majority":
        valid = ~np.isnan(ref) if fill is None else ref != fill
        assert valid.any() and (~valid[..., 1:, 1:]).any()


@pytest.mark.parametrize("dtype", ["u1", "i2", "f8"])
def test_mode_majority_small_cases(dtype):
    F = 9
    data = np.array(
        [[3, 1, 5, 5, 9, 9, 2, 2],
         [1, 3, F, 2, F, F, 2, 7]],
        dtype=dtype,
    )
    mode, _ = block_reduce(data, 2, "mode", F)
    maj, _ = block_reduce(data, 2, "majority", F)
    # windows: {3,1,1,3} tie -> 1 / no majority; {5,5,2} -> 5 / 5; all fill; {2,2,2,7} -> 2 / 2
    np.testing.assert_array_equal(mode, np.array([[1, 5, F, 2]], dtype=dtype))
    np.testing.assert_array_equal(maj, np.array([[F, 5, F, 2]], dtype=dtype))


@pytest.mark.parametrize("factor", [5, 7, 9])
def test_mode_large_windows(factor):
    # windows of 25, 49 and 81 pixels
    rng = np.random.default_rng(factor)
    data = rng.integers(0, 6, (2, 20, 22)).astype(np.uint8)
    data[rng.random(data.shape) < 0.2] = 255
    data[0, :factor, :factor] = 255
    for method in ("mode", "majority"):
        out, _ = block_reduce(data, factor, method, 255)
        np.testing.assert_array_equal(out, brute_mode(data, factor, 255, method == "majority"))


# ---------------------------------------------------------------- layout, factor 1, misc


def test_factor_one_is_a_copy():
    data = float_data((2, 9, 7), "f4", seed=1)
    for method in METHODS:
        if method == "sum":
            continue
        out, out_missing = block_reduce(data, 1, method, None)
        np.testing.assert_array_equal(out, data)
        assert not np.shares_memory(out, data)
        if method == "mean":
            np.testing.assert_array_equal(out_missing, np.isnan(data).astype(np.uint32))
    out, _ = block_reduce(data, 1, "sum", None)
    np.testing.assert_array_equal(out, np.nan_to_num(data, nan=0.0))
    # mean with given missing counts passes them through
    m = np.random.default_rng(0).integers(0, 3, data.shape).astype(np.uint32)
    out, out_missing = block_reduce(np.nan_to_num(data), 1, "mean", None, missing=m, weight=4)
    np.testing.assert_array_equal(out, np.nan_to_num(data))
    np.testing.assert_array_equal(out_missing, m)


def test_non_contiguous_and_big_endian_input():
    base = float_data((4, 30, 26), "f8", seed=2)
    strided = base[:, ::-1, ::2]  # negative and non-unit strides
    np.testing.assert_array_equal(
        block_reduce(strided, 3, "max", None)[0],
        block_reduce(np.ascontiguousarray(strided), 3, "max", None)[0],
    )
    transposed = np.moveaxis(base, 0, -1)  # (30, 26, 4): spatial axes are (26, 4)
    np.testing.assert_allclose(
        block_reduce(transposed, 2, "mean", None)[0], xr_coarsen(transposed, 2, "mean"), rtol=1e-6
    )
    big = base.astype(">f8")
    out, _ = block_reduce(big, 2, "mean", None)
    assert out.dtype == np.dtype("f8") and out.dtype.isnative
    np.testing.assert_array_equal(out, block_reduce(base, 2, "mean", None)[0])


def test_window_larger_than_array_gives_empty_output():
    data = np.ones((3, 5, 9), np.float32)
    out, out_missing = block_reduce(data, 6, "mean", None)
    assert out.shape == out_missing.shape == (3, 0, 1)
    assert block_reduce(np.ones((0, 8, 8), np.uint8), 2, "max", None)[0].shape == (0, 4, 4)


def test_threads_give_same_result_and_kernels_release_gil():
    from topozarr_core.kernels import compiled as nk

    data = float_data((8, 64, 64), "f4", seed=9)
    ref = block_reduce(data, 2, "mean", None)[0]
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda a: block_reduce(a, 2, "mean", None)[0], list(data)))
    np.testing.assert_array_equal(np.stack(parts), ref)
    for fn in (nk.mean_plain, nk.mean_weighted, nk.sum_kernel, nk.max_kernel,
               nk.min_kernel, nk.nearest_kernel, nk.mode_kernel, nk.mode_f2_kernel):
        assert fn.targetoptions["nogil"] is True
        assert fn.stats.cache_path is not None  # cache=True (numba's public Dispatcher.stats; None without a cache)


def test_missing_mask():
    data = np.array([[1.0, np.nan], [-9999.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(missing_mask(data, None), [[False, True], [False, False]])
    np.testing.assert_array_equal(missing_mask(data, -9999), [[False, True], [True, False]])
    ints = np.array([[0, 5], [7, 0]], dtype=np.uint16)
    np.testing.assert_array_equal(missing_mask(ints, 0), ints == 0)
    assert not missing_mask(ints, None).any()


def test_output_dtype():
    for dt in ("u1", "u2"):
        assert output_dtype("sum", np.dtype(dt)) == np.uint64
    for dt in ("i2", "i4", "i8"):
        assert output_dtype("sum", np.dtype(dt)) == np.int64
    for dt in ("f4", "f8"):
        assert output_dtype("sum", np.dtype(dt)) == np.dtype(dt)
    for method in METHODS:
        if method != "sum":
            for dt in ("u1", "u2", "i2", "i4", "i8", "f4", "f8"):
                assert output_dtype(method, np.dtype(dt)) == np.dtype(dt)


# ---------------------------------------------------------------- errors


def test_errors():
    data = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="method"):
        block_reduce(data, 2, "median", None)
    with pytest.raises(ValueError, match="method"):
        output_dtype("median", np.dtype("f4"))
    for factor in (0, -2, 2.0, None):
        with pytest.raises(ValueError, match="factor"):
            block_reduce(data, factor, "mean", None)
    for bad in (np.zeros(4, np.float32), np.float32(1.0)):
        with pytest.raises(ValueError, match="ndim"):
            block_reduce(bad, 2, "mean", None)
    with pytest.raises(ValueError, match="weight"):
        block_reduce(data, 2, "mean", None, weight=0)
    with pytest.raises(ValueError, match="shape"):
        block_reduce(data, 2, "mean", None, missing=np.zeros((4, 5), np.uint32))
    # fill values that integer data cannot hold
    for fill in (300, -1, 1.5):
        with pytest.raises(ValueError, match="fill_value"):
            block_reduce(np.zeros((4, 4), np.uint8), 2, "max", fill)
    # majority on integers needs a value to mark "no majority"
    with pytest.raises(ValueError, match="fill_value"):
        block_reduce(np.zeros((4, 4), np.int32), 2, "majority", None)
    # integer weighted mean without fill cannot mark a window with no valid weight
    with pytest.raises(ValueError, match="fill_value"):
        block_reduce(np.zeros((4, 4), np.int32), 2, "mean", None, missing=np.full((4, 4), 4, np.uint32), weight=4)


@pytest.mark.parametrize(
    "dtype", ["bool", "c8", "c16", "M8[s]", "m8[s]", "U3", "S3", "O"]
)
def test_unsupported_dtypes(dtype):
    data = np.zeros((4, 4), dtype=dtype)
    with pytest.raises(TypeError):
        block_reduce(data, 2, "mean", None)
    with pytest.raises(TypeError):
        output_dtype("max", np.dtype(dtype))


# -- writing into caller buffers (the level cache reduces straight into its blocks) ---------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "4d"])
def test_out_buffers_equal_fresh_results(method, layout):
    rng = np.random.default_rng(7)
    shape = (2, 3, 40, 52) if layout == "4d" else (40, 52)
    data = rng.integers(0, 5, shape).astype("f4") if method in ("mode", "majority") else rng.random(shape, dtype="f4")
    data[rng.random(shape) > 0.9] = np.nan
    want, want_missing = block_reduce(data, 2, method, None)
    big = np.full(shape[:-2] + (60, 80), -7, dtype=want.dtype)
    big_missing = np.full(big.shape, 99, dtype="u1")
    if layout == "strided":
        out, out_missing = big[5:25, 10:36], big_missing[5:25, 10:36]  # windows of a larger buffer
    else:
        out = np.empty(want.shape, dtype=want.dtype)
        out_missing = np.empty(want.shape, dtype="u1")
    got, got_missing = block_reduce(data, 2, method, None, out=out,
                                    out_missing=out_missing if method == "mean" else None)
    assert got is out
    np.testing.assert_array_equal(got, want)
    if method == "mean":
        assert got_missing is out_missing and got_missing.dtype == np.uint8
        np.testing.assert_array_equal(got_missing, want_missing)
    if layout == "strided":  # nothing outside the windows was touched
        outside = np.ones(big.shape, bool)
        outside[5:25, 10:36] = False
        assert (big[outside] == -7).all()
        if method == "mean":
            assert (big_missing[outside] == 99).all()


@pytest.mark.parametrize("mdtype", ["u1", "u2", "u4", "i8"])
def test_narrow_missing_counts_read_as_is(mdtype):
    rng = np.random.default_rng(3)
    level0 = rng.random((64, 96), dtype="f8")
    level0[level0 < 0.3] = np.nan
    l1, m1 = block_reduce(level0, 2, "mean", None)
    want, want_missing = block_reduce(l1, 2, "mean", None, missing=m1, weight=4)
    got, got_missing = block_reduce(l1, 2, "mean", None, missing=m1.astype(mdtype), weight=4)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_missing, want_missing)
    direct, direct_missing = block_reduce(level0, 4, "mean", None)
    np.testing.assert_allclose(got, direct, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(got_missing, direct_missing)


def test_out_buffer_errors():
    data = np.ones((8, 8), "f4")
    with pytest.raises(ValueError, match="out has shape"):
        block_reduce(data, 2, "mean", None, out=np.empty((3, 4), "f4"))
    with pytest.raises(TypeError, match="out has dtype"):
        block_reduce(data, 2, "mean", None, out=np.empty((4, 4), "f8"))
    with pytest.raises(TypeError, match="unsigned"):
        block_reduce(data, 2, "mean", None, out_missing=np.empty((4, 4), "i4"))
    with pytest.raises(ValueError, match="cannot hold counts up to"):
        block_reduce(data, 16, "mean", None, weight=4, out_missing=np.empty((0, 0), "u1"))
    ro = np.empty((4, 4), "f4")
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        block_reduce(data, 2, "max", None, out=ro)
