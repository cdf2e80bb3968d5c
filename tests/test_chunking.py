import numpy as np
import pytest
import xarray as xr
import zarr

from topozarr_core.chunking import (
    DEFAULT_TARGET_CHUNK_BYTES,
    MAX_INNER_CHUNKS,
    MIN_SPATIAL_CHUNK,
    VALID_CHUNKS_PER_SHARD,
    VarEncoding,
    spatial_chunk_size,
    validate_chunks_per_shard,
    variable_encoding,
)


def test_constants():
    assert VALID_CHUNKS_PER_SHARD == (1, 2, 4, 8, 16, 32)
    assert DEFAULT_TARGET_CHUNK_BYTES == 512_000
    assert MIN_SPATIAL_CHUNK == 128
    assert MAX_INNER_CHUNKS == 128


# ---------------------------------------------------------------- spatial_chunk_size


@pytest.mark.parametrize(
    "itemsize, expected",
    [
        (4, 358),  # sqrt(128000) = 357.77
        (8, 252),  # sqrt(64000) = 252.98 -> nearest even 252
        (1, 716),  # sqrt(512000) = 715.54
        (2, 506),  # sqrt(256000) = 505.96
    ],
)
def test_spatial_chunk_size_defaults(itemsize, expected):
    assert spatial_chunk_size(itemsize) == expected
    assert spatial_chunk_size(np.dtype(f"u{itemsize}").itemsize) == expected


def test_spatial_chunk_size_is_even_and_floored():
    assert spatial_chunk_size(4, target_chunk_bytes=1000) == MIN_SPATIAL_CHUNK
    assert spatial_chunk_size(8, target_chunk_bytes=1) == MIN_SPATIAL_CHUNK
    # sqrt(4e6 / 4) = 1000 exactly; sqrt(1.01e6) = 1004.99 -> nearest even 1004
    assert spatial_chunk_size(4, target_chunk_bytes=4_000_000) == 1000
    assert spatial_chunk_size(1, target_chunk_bytes=1_010_000) == 1004
    for itemsize in (1, 2, 4, 8, 16):
        for target in (10_000, 100_000, 512_000, 2_000_000, 7_777_777):
            assert spatial_chunk_size(itemsize, target) % 2 == 0


@pytest.mark.parametrize(
    "source_chunk, expected",
    [
        (512, 512),  # ratio 1.43 -> k=1
        (358, 358),  # exact
        (1024, 512),  # ratio 2.86; 3 does not divide, nearest divisor k=2
        (2000, 400),  # ratio 5.59; 6 does not divide, nearest divisor k=5
        (1074, 358),  # ratio 3.0 -> k=3
        (1432, 358),  # ratio 4.0 -> k=4
        (100, 400),  # 100 * round(3.58)
        (300, 300),  # 300 * max(1, round(1.19))
        (200, 400),  # 200 * round(1.79)
        (1, 358),  # 1 * round(358)
        (257, 257),  # 257 < 358 -> 257 * round(1.39) = 257
        (1021, 1021),  # prime > edge: only k=1 keeps >= MIN (k=1021 -> 1)
        (256, 256),
    ],
)
def test_spatial_chunk_size_snaps_to_source_f4(source_chunk, expected):
    edge = spatial_chunk_size(4, source_chunk=source_chunk)
    assert edge == expected
    # nesting: one divides the other
    assert edge % source_chunk == 0 or source_chunk % edge == 0
    assert edge >= MIN_SPATIAL_CHUNK


def test_spatial_chunk_size_snap_tie_prefers_larger_chunk():
    # f8 edge 252; source 630 -> ratio 2.5; k=2 (315) and k=3 (210) tie -> k=2
    assert spatial_chunk_size(8, source_chunk=630) == 315


def test_spatial_chunk_size_snap_respects_min_floor():
    # edge 128 (floored); source 100 -> round(1.28)=1 would give 100 < 128 -> m=2
    assert spatial_chunk_size(4, target_chunk_bytes=1000, source_chunk=100) == 200
    # source 600 with edge 128: ratio 4.69 -> divisors 4 (150) and 5 (120 < MIN, excluded) -> 150
    assert spatial_chunk_size(4, target_chunk_bytes=1000, source_chunk=600) == 150


@pytest.mark.parametrize("bad", [0, -4])
def test_spatial_chunk_size_rejects_nonpositive(bad):
    with pytest.raises(ValueError):
        spatial_chunk_size(bad)
    with pytest.raises(ValueError):
        spatial_chunk_size(4, target_chunk_bytes=bad)
    with pytest.raises(ValueError):
        spatial_chunk_size(4, source_chunk=bad)


def test_spatial_chunk_size_rejects_non_int():
    with pytest.raises(TypeError):
        spatial_chunk_size(4.0)
    with pytest.raises(TypeError):
        spatial_chunk_size(4, source_chunk=True)


# ---------------------------------------------------------------- validate_chunks_per_shard


@pytest.mark.parametrize("ok", [None, 1, 2, 4, 8, 16, 32, np.int64(8)])
def test_validate_chunks_per_shard_ok(ok):
    validate_chunks_per_shard(ok)


@pytest.mark.parametrize("bad", [3, 0, 64, -4])
def test_validate_chunks_per_shard_value_error(bad):
    with pytest.raises(ValueError):
        validate_chunks_per_shard(bad)


@pytest.mark.parametrize("bad", ["4", True, False, 4.0])
def test_validate_chunks_per_shard_type_error(bad):
    with pytest.raises(TypeError):
        validate_chunks_per_shard(bad)


# ---------------------------------------------------------------- variable_encoding


def enc(dims, shape, c=4, edge=None, itemsize=4):
    edge = spatial_chunk_size(itemsize) if edge is None else edge
    return variable_encoding(tuple(dims), tuple(shape), itemsize, "y", "x", edge, c)


def test_large_2d_f4_defaults():
    e = enc("yx", (20000, 20000))
    assert e == VarEncoding(chunks=(358, 358), shards=(1432, 1432))


def test_3d_time_f4():
    e = enc(("time", "y", "x"), (32, 2048, 2048))
    assert e.chunks == (1, 358, 358)
    assert e.shards == (1, 1432, 1432)


def test_small_level_widens_time():
    e = enc(("time", "y", "x"), (32, 256, 256))
    assert e.chunks == (1, 256, 256)
    assert e.shards == (16, 256, 256)


def test_small_level_widening_limited_by_dim_size():
    e = enc(("time", "y", "x"), (8, 256, 256))
    assert e.chunks == (1, 256, 256)
    assert e.shards == (8, 256, 256)


def test_no_sharding():
    e = enc(("time", "y", "x"), (32, 2048, 2048), c=None)
    assert e.chunks == (1, 358, 358)
    assert e.shards is None
    assert e.to_xarray() == {"chunks": (1, 358, 358)}


def test_one_chunk_per_shard():
    e = enc(("time", "y", "x"), (32, 2048, 2048), c=1)
    assert e.shards == e.chunks == (1, 358, 358)
    e = enc("yx", (20000, 20000), c=1)
    assert e.shards == e.chunks == (358, 358)


def test_c32_spatial_multiplier_capped_by_array():
    e = enc("yx", (2048, 2048), c=32)
    # ceil(2048 / 358) = 6 chunks per side
    assert e.chunks == (358, 358)
    assert e.shards == (2148, 2148)


def test_c32_large_array_exceeds_inner_cap_spatially():
    e = enc(("time", "y", "x"), (10, 20000, 20000), c=32)
    # 32 * 32 = 1024 spatial chunks is allowed; no widening on top of it
    assert e.shards == (1, 358 * 32, 358 * 32)


def test_4d_widening_innermost_first():
    e = enc(("band", "time", "y", "x"), (2, 3, 100, 100), edge=358)
    assert e.chunks == (1, 1, 100, 100)
    # leftover 16: time gets 3, remaining 16 // 3 = 5, band gets min(2, 5) = 2
    assert e.shards == (2, 3, 100, 100)


def test_4d_widening_budget_runs_out():
    e = enc(("band", "time", "y", "x"), (10, 6, 100, 100), edge=358)
    # leftover 16: time 6, remaining 2, band 2
    assert e.shards == (2, 6, 100, 100)


def test_max_inner_chunks_cap():
    e = enc(("time", "y", "x"), (1000, 64, 64), c=32)
    assert e.chunks == (1, 64, 64)
    # leftover 1024 but total inner chunks per shard capped at 128
    assert e.shards == (128, 64, 64)


def test_max_inner_chunks_cap_with_spatial_multiplier():
    # spatial: ceil(1000 / 358) = 3 per side -> 9 spatial chunks; leftover 1024 // 9 = 113;
    # cap 128 // 9 = 14 -> time gets 14
    e = enc(("time", "y", "x"), (1000, 1000, 1000), c=32)
    assert e.chunks == (1, 358, 358)
    assert e.shards == (14, 1074, 1074)
    assert 14 * 9 <= MAX_INNER_CHUNKS


def test_spatial_dims_not_last():
    e = variable_encoding(("y", "x", "band"), (1000, 1000, 3), 4, "y", "x", 358, 4)
    assert e.chunks == (358, 358, 1)
    # spatial mult min(4, ceil(1000/358)=3) = 3 each -> 9; leftover 16 // 9 = 1
    assert e.shards == (1074, 1074, 1)


def test_spatial_dims_transposed_and_interleaved():
    e = variable_encoding(("x", "time", "y"), (300, 5, 200), 4, "y", "x", 358, 4)
    # square edge = min(358, max(200, 300)) = 300, clipped per dim
    assert e.chunks == (300, 1, 200)
    # spatial mult 1 each, leftover 16 -> time 5
    assert e.shards == (300, 5, 200)


def test_non_square_small_level_keeps_square_chunk_before_clipping():
    e = enc("yx", (50, 1000))
    assert e.chunks == (50, 358)
    # y: ceil(50/50)=1, x: ceil(1000/358)=3 -> shards (50, 1074)
    assert e.shards == (50, 1074)


def test_zero_size_dims():
    e = enc(("time", "y", "x"), (0, 256, 256))
    assert e.chunks == (1, 256, 256)
    assert e.shards == (1, 256, 256)
    e = enc(("time", "y", "x"), (4, 0, 0))
    assert e.chunks == (1, 1, 1)
    assert e.shards == (4, 1, 1)


def test_shards_are_multiples_of_chunks():
    for c in VALID_CHUNKS_PER_SHARD:
        for shape in [(7, 3, 1000, 777), (1, 1, 10, 10), (50, 2, 5000, 300)]:
            e = enc(("a", "b", "y", "x"), shape, c=c)
            assert all(s % ch == 0 for s, ch in zip(e.shards, e.chunks))
            assert e.shards[2] // e.chunks[2] <= c and e.shards[3] // e.chunks[3] <= c
            n = 1
            for s, ch in zip(e.shards, e.chunks):
                n *= s // ch
            spatial = (e.shards[2] // e.chunks[2]) * (e.shards[3] // e.chunks[3])
            assert n <= max(MAX_INNER_CHUNKS, spatial)
            assert n <= c * c


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(dims=("y",), shape=(10,)), ValueError),  # x missing
        (dict(dims=("y", "x"), shape=(10,)), ValueError),  # length mismatch
        (dict(chunks_per_shard=3), ValueError),
        (dict(chunks_per_shard="4"), TypeError),
        (dict(chunk_edge=0), ValueError),
        (dict(x_dim="y"), ValueError),
        (dict(shape=(10, -1)), ValueError),
    ],
)
def test_variable_encoding_rejects(kwargs, exc):
    args = dict(
        dims=("y", "x"), shape=(10, 10), itemsize=4, y_dim="y", x_dim="x", chunk_edge=358, chunks_per_shard=4
    )
    args.update(kwargs)
    with pytest.raises(exc):
        variable_encoding(**args)


# ---------------------------------------------------------------- xarray round trip


def test_to_xarray_shape():
    e = VarEncoding(chunks=(1, 256, 256), shards=(16, 256, 256))
    assert e.to_xarray() == {"chunks": (1, 256, 256), "shards": (16, 256, 256)}


@pytest.mark.parametrize("c", [None, 1, 4])
def test_to_xarray_roundtrip_through_zarr(tmp_path, c):
    data = np.arange(20 * 300 * 260, dtype="f4").reshape(20, 300, 260)
    ds = xr.Dataset({"v": (("time", "y", "x"), data)})
    e = variable_encoding(("time", "y", "x"), data.shape, data.dtype.itemsize, "y", "x", 128, c)
    path = tmp_path / "x.zarr"
    ds.to_zarr(path, zarr_format=3, encoding={"v": e.to_xarray()}, consolidated=False)
    arr = zarr.open_array(path / "v", mode="r")
    assert arr.chunks == e.chunks
    assert arr.shards == e.shards
    np.testing.assert_array_equal(arr[:], data)
    if c == 4:
        # y: ceil(300/128)=3, x: ceil(260/128)=3 -> 9 spatial; leftover 16 // 9 = 1
        assert e.shards == (1, 384, 384)
