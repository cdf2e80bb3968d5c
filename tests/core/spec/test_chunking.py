"""Chunk and shard heuristics: topozarr 0.2.1's rules, value for value.

Every expected value below was measured by running topozarr 0.2.1's own ``topozarr.chunking`` functions
and its per-variable encoding on the same inputs (shapes, itemsizes, chunks_per_shard, targets, source
chunks); this project's functions must give the same numbers.
"""

import numpy as np
import pytest
import xarray as xr
import zarr

from topozarr_core.spec.chunking import (
    DEFAULT_TARGET_CHUNK_BYTES,
    MAX_INNER_CHUNKS,
    MIN_CHUNK,
    VALID_CHUNKS_PER_SHARD,
    VarEncoding,
    balanced_chunk,
    coordinate_encoding,
    ideal_chunk,
    ideal_chunk_1d,
    level_source_chunks,
    shard_size,
    snap_to_source,
    validate_chunks_per_shard,
    variable_encoding,
)


def test_constants():
    assert VALID_CHUNKS_PER_SHARD == (1, 2, 4, 8, 16, 32)
    assert DEFAULT_TARGET_CHUNK_BYTES == 524288  # topozarr's 512 KiB
    assert MIN_CHUNK == 128
    assert MAX_INNER_CHUNKS == 128


# ---------------------------------------------------------------- ideal edges, balanced chunks, shards


@pytest.mark.parametrize("itemsize, edge, edge_1d", [(1, 724, 524288), (2, 512, 262144), (4, 362, 131072),
                                                     (8, 256, 65536)])
def test_ideal_edges(itemsize, edge, edge_1d):
    assert ideal_chunk(itemsize) == edge
    assert ideal_chunk_1d(itemsize) == edge_1d


def test_ideal_edge_floor_and_other_targets():
    assert ideal_chunk(4, 1000) == 128
    assert ideal_chunk(1, 4_000_000) == 2000


@pytest.mark.parametrize("size, ideal, chunk", [
    (2000, 362, 334), (1000, 362, 334), (500, 362, 250), (362, 362, 362), (363, 362, 182), (129, 362, 129),
    (128, 362, 128), (100, 50, 100), (200, 100, 128), (257, 100, 128), (70000, 65536, 35000), (1, 362, 1)])
def test_balanced_chunk(size, ideal, chunk):
    assert balanced_chunk(size, ideal) == chunk


@pytest.mark.parametrize("size, chunk, cps, shard", [
    (2000, 334, 4, 1336), (1000, 334, 4, 668), (500, 250, 4, 500), (100, 100, 4, 100), (1500, 300, 16, 1500),
    (3000, 334, 32, 2672), (300, 300, 1, 300)])
def test_shard_size(size, chunk, cps, shard):
    assert shard_size(size, chunk, cps) == shard


@pytest.mark.parametrize("size, ideal, source, cps, expected", [
    (4096, 362, 1024, 4, (256, 4)),
    (4096, 362, 512, 4, (256, 2)),
    (4096, 362, 2000, 4, (250, 4)),
    (4096, 362, 100, 4, (350, 4)),
    (4096, 362, 256, 4, (256, 1)),
    (4096, 362, 300, 4, (300, 1)),
    (4096, 362, 750, 4, (375, 2)),
    (4096, 362, 1000, 16, (250, 4)),
    (4096, 362, 1000, None, (250, 1)),
    (300, 362, 100, 4, None),
    (4096, 362, 7, 4, (364, 4)),
    (4096, 362, 5000, 4, (250, 4)),
    (4096, 256, 4096, 4, (256, 4)),
    (1024, 362, 128, 4, (352, 4)),
    (4096, 362, 1, 4, (362, 4)),
])
def test_snap_to_source(size, ideal, source, cps, expected):
    assert snap_to_source(size, ideal, source, cps) == expected
    if expected is not None and expected[0] * expected[1] <= source:
        assert source % (expected[0] * expected[1]) == 0  # the shard divides the source chunk


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


@pytest.mark.parametrize("bad", [0, -1])
def test_ideal_chunk_rejects_nonpositive(bad):
    with pytest.raises(ValueError):
        ideal_chunk(bad)
    with pytest.raises(ValueError):
        ideal_chunk(4, target_chunk_bytes=bad)


def test_ideal_chunk_rejects_non_int():
    with pytest.raises(TypeError):
        ideal_chunk(4.0)
    with pytest.raises(TypeError):
        ideal_chunk(True)


# ---------------------------------------------------------------- variable_encoding


#: (dims, shape, itemsize, chunks_per_shard, target_chunk_bytes, source chunks, topozarr's chunks, its shards)
TOPOZARR_LAYOUTS = [
    (('y', 'x'), (20000, 20000), 4, 4, 524288, None, (358, 358), (1432, 1432)),
    (('time', 'y', 'x'), (32, 2048, 2048), 4, 4, 524288, None, (1, 342, 342), (1, 1368, 1368)),
    (('time', 'y', 'x'), (32, 256, 256), 4, 4, 524288, None, (1, 256, 256), (32, 256, 256)),
    (('time', 'y', 'x'), (8, 256, 256), 4, 4, 524288, None, (1, 256, 256), (8, 256, 256)),
    (('time', 'y', 'x'), (32, 2048, 2048), 4, None, 524288, None, (1, 342, 342), None),
    (('time', 'y', 'x'), (32, 2048, 2048), 4, 1, 524288, None, (1, 342, 342), (1, 342, 342)),
    (('y', 'x'), (2048, 2048), 4, 32, 524288, None, (342, 342), (1710, 1710)),
    (('time', 'y', 'x'), (10, 20000, 20000), 4, 32, 524288, None, (1, 358, 358), (1, 11456, 11456)),
    (('band', 'time', 'y', 'x'), (2, 3, 100, 100), 4, 4, 524288, None, (1, 1, 100, 100), (2, 3, 100, 100)),
    (('band', 'time', 'y', 'x'), (10, 6, 100, 100), 4, 4, 524288, None, (1, 1, 100, 100), (10, 6, 100, 100)),
    (('time', 'y', 'x'), (1000, 64, 64), 4, 32, 524288, None, (1, 64, 64), (128, 64, 64)),
    (('time', 'y', 'x'), (1000, 1000, 1000), 4, 32, 524288, None, (1, 334, 334), (32, 668, 668)),
    (('y', 'x', 'band'), (1000, 1000, 3), 4, 4, 524288, None, (334, 334, 1), (668, 668, 3)),
    (('x', 'time', 'y'), (300, 5, 200), 4, 4, 524288, None, (300, 1, 200), (300, 5, 200)),
    (('y', 'x'), (50, 1000), 4, 4, 524288, None, (50, 334), (50, 668)),
    (('time', 'y', 'x'), (2920, 25, 53), 4, 4, 524288, None, (1, 25, 53), (128, 25, 53)),
    (('time', 'x'), (4, 200000), 4, 4, 524288, None, (1, 362), (4, 1448)),
    (('y',), (3000,), 2, 4, 524288, None, (500,), (2000,)),
    (('time', 'y', 'x'), (300, 500, 500), 4, 4, 524288, {'time': 7, 'y': 500, 'x': 500}, (1, 250, 250), (1, 500, 500)),
    (('time', 'y', 'x'), (20, 2000, 2000), 4, 4, 524288, {'time': 5, 'y': 500, 'x': 500}, (1, 250, 250), (1, 500, 500)),
    (('y', 'x'), (4096, 4096), 4, 4, 524288, {'y': 512, 'x': 1024}, (256, 256), (512, 1024)),
    (('y', 'x'), (4096, 4096), 1, 8, 524288, {'y': 2048, 'x': 2048}, (512, 512), (2048, 2048)),
    (('time', 'y', 'x'), (20, 300, 260), 4, 4, 65536, None, (1, 128, 128), (4, 256, 256)),
    (('y', 'x'), (3000, 3000), 8, 4, 100000, None, (128, 128), (512, 512)),
]


@pytest.mark.parametrize("dims, shape, itemsize, cps, target, source, chunks, shards", TOPOZARR_LAYOUTS)
def test_variable_encoding_is_topozarrs(dims, shape, itemsize, cps, target, source, chunks, shards):
    assert variable_encoding(dims, shape, itemsize, "y", "x", cps, target, source) == VarEncoding(chunks, shards)


def test_shards_are_multiples_of_chunks():
    for c in VALID_CHUNKS_PER_SHARD:
        for shape in [(7, 3, 1000, 777), (1, 1, 10, 10), (50, 2, 5000, 300)]:
            e = variable_encoding(("a", "b", "y", "x"), shape, 4, "y", "x", c)
            assert all(s % ch == 0 for s, ch in zip(e.shards, e.chunks))
            assert e.shards[2] // e.chunks[2] <= c and e.shards[3] // e.chunks[3] <= c
            n = 1
            for s, ch in zip(e.shards, e.chunks):
                n *= s // ch
            spatial = (e.shards[2] // e.chunks[2]) * (e.shards[3] // e.chunks[3])
            assert n <= max(MAX_INNER_CHUNKS, spatial)


def test_coordinate_encoding():
    assert coordinate_encoding(70000, 8) == VarEncoding(chunks=(35000,), shards=None)  # 65536 per chunk, balanced
    assert coordinate_encoding(200000, 8) == VarEncoding(chunks=(50000,), shards=None)
    assert coordinate_encoding(65536, 8) is None  # one chunk holds it: no entry
    assert coordinate_encoding(70000, 4) is None


def test_level_source_chunks():
    src = {"time": 7, "y": 512, "x": 1024}
    assert level_source_chunks(src, 1, ("y", "x")) == src
    assert level_source_chunks(src, 4, ("y", "x")) == {"time": 7, "y": 128, "x": 256}
    assert level_source_chunks(src, 3, ("y", "x")) == {"time": 7}  # 3 splits the blocks unevenly
    assert level_source_chunks(None, 2, ("y", "x")) is None


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(dims=("t",), shape=(10,)), ValueError),  # no spatial dim
        (dict(dims=("y", "x"), shape=(10,)), ValueError),  # length mismatch
        (dict(chunks_per_shard=3), ValueError),
        (dict(chunks_per_shard="4"), TypeError),
        (dict(itemsize=0), ValueError),
        (dict(x_dim="y"), ValueError),
        (dict(shape=(10, -1)), ValueError),
    ],
)
def test_variable_encoding_rejects(kwargs, exc):
    args = dict(dims=("y", "x"), shape=(10, 10), itemsize=4, y_dim="y", x_dim="x", chunks_per_shard=4)
    args.update(kwargs)
    with pytest.raises(exc):
        variable_encoding(**args)


# ---------------------------------------------------------------- xarray round trip


def test_to_xarray_shape():
    e = VarEncoding(chunks=(1, 256, 256), shards=(16, 256, 256))
    assert e.to_xarray() == {"chunks": (1, 256, 256), "shards": (16, 256, 256)}
    assert VarEncoding(chunks=(1, 256, 256), shards=None).to_xarray() == {"chunks": (1, 256, 256)}


@pytest.mark.parametrize("c", [None, 1, 4])
def test_to_xarray_roundtrip_through_zarr(tmp_path, c):
    data = np.arange(20 * 300 * 260, dtype="f4").reshape(20, 300, 260)
    ds = xr.Dataset({"v": (("time", "y", "x"), data)})
    e = variable_encoding(("time", "y", "x"), data.shape, data.dtype.itemsize, "y", "x", c, 128 * 128 * 4)
    path = tmp_path / "x.zarr"
    ds.to_zarr(path, zarr_format=3, encoding={"v": e.to_xarray()}, consolidated=False)
    arr = zarr.open_array(path / "v", mode="r")
    assert arr.chunks == e.chunks == (1, 128, 128)
    assert arr.shards == e.shards
    np.testing.assert_array_equal(arr[:], data)
    if c == 4:  # topozarr's: 2 whole chunks per spatial dim, the byte budget left widens time by 4
        assert e.shards == (4, 256, 256)
