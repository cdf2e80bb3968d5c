"""Chunk and shard heuristics for web-visualisation pyramids (sharded Zarr v3).

Pure functions on shapes: no I/O, no xarray/zarr imports.

Model
-----
* Inner chunks are square in the two spatial dims and about
  ``DEFAULT_TARGET_CHUNK_BYTES`` (~500 KB) uncompressed, so a browser tile fetch
  pulls one chunk. Every non-spatial dim (time, band, ...) gets chunk 1, so a
  client reading one time step reads only that step.
* Shards group ``chunks_per_shard`` x ``chunks_per_shard`` spatial chunks (fewer
  when the level is small), and any shard budget left over is spent widening
  the non-spatial dims, so a small level does not end up as thousands of tiny
  shard objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

#: Allowed number of inner chunks per shard, along each spatial dim.
VALID_CHUNKS_PER_SHARD = (1, 2, 4, 8, 16, 32)
#: Target uncompressed size of one inner chunk ("~500 KB").
DEFAULT_TARGET_CHUNK_BYTES = 512_000
#: Smallest spatial chunk edge :func:`spatial_chunk_size` returns.
MIN_SPATIAL_CHUNK = 128
#: Cap on inner chunks per shard when widening the non-spatial dims (never shrinks the spatial part).
MAX_INNER_CHUNKS = 128


@dataclass(frozen=True)
class VarEncoding:
    """Chunk/shard shape for one variable, per dim in the variable's dim order."""

    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None  # None = no sharding

    def to_xarray(self) -> dict:
        """Encoding entry for ``Dataset.to_zarr(zarr_format=3, encoding={name: ...})``."""
        enc: dict = {"chunks": tuple(self.chunks)}
        if self.shards is not None:
            enc["shards"] = tuple(self.shards)
        return enc


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _require_positive_int(name: str, value) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def validate_chunks_per_shard(chunks_per_shard) -> None:
    """Raise unless ``chunks_per_shard`` is None or one of :data:`VALID_CHUNKS_PER_SHARD`.

    TypeError for a non-int (``bool`` is rejected, ``numpy`` integers are accepted);
    ValueError for an int outside the allowed set.
    """
    if chunks_per_shard is None:
        return
    if not _is_int(chunks_per_shard):
        raise TypeError(
            f"chunks_per_shard must be an int or None, got {type(chunks_per_shard).__name__}: "
            f"{chunks_per_shard!r}"
        )
    if int(chunks_per_shard) not in VALID_CHUNKS_PER_SHARD:
        raise ValueError(
            f"chunks_per_shard must be one of {VALID_CHUNKS_PER_SHARD} or None, got {chunks_per_shard}"
        )


def spatial_chunk_size(
    itemsize: int,
    target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES,
    source_chunk: int | None = None,
) -> int:
    """Edge of a square spatial chunk of about ``target_chunk_bytes``.

    Without ``source_chunk``::

        edge = max(MIN_SPATIAL_CHUNK, 2 * round(sqrt(target_chunk_bytes / itemsize) / 2))

    i.e. the square root rounded to the nearest *even* number, floored at
    ``MIN_SPATIAL_CHUNK``. At the default target: uint8 -> 716, int16 -> 506,
    float32 -> 358, float64 -> 252.

    With ``source_chunk`` (the source is chunked along y/x; pass the smaller of the
    two source chunk edges) the edge is snapped so output chunks nest with source
    chunks, letting each output chunk be built from whole source chunks or each
    source chunk split into whole output chunks:

    * ``source_chunk >= edge``: ``edge = source_chunk // k`` where ``k`` is the
      divisor of ``source_chunk`` nearest to ``source_chunk / edge`` (ties go to the
      smaller ``k``, i.e. the larger chunk), considering only divisors that keep
      ``edge >= MIN_SPATIAL_CHUNK`` (``k = 1`` always qualifies). When
      ``round(source_chunk / edge)`` divides ``source_chunk`` this is that ``k``.
      float32: 512 -> 512 (k=1), 1024 -> 512 (k=2; ratio 2.86, 3 does not divide),
      2000 -> 400 (k=5; ratio 5.59, 6 does not divide).
    * ``source_chunk < edge``: ``edge = source_chunk * m`` with
      ``m = max(1, round(edge / source_chunk))``, raised if needed to the smallest
      multiple that is ``>= MIN_SPATIAL_CHUNK``. float32: 100 -> 400 (m=4).

    The snapped edge need not be even.
    """
    itemsize = _require_positive_int("itemsize", itemsize)
    target_chunk_bytes = _require_positive_int("target_chunk_bytes", target_chunk_bytes)
    edge = 2 * round(math.sqrt(target_chunk_bytes / itemsize) / 2)
    edge = max(MIN_SPATIAL_CHUNK, edge)
    if source_chunk is None:
        return edge

    source_chunk = _require_positive_int("source_chunk", source_chunk)
    if source_chunk >= edge:
        ratio = source_chunk / edge
        candidates = [k for k in _divisors(source_chunk) if source_chunk // k >= MIN_SPATIAL_CHUNK]
        k = min(candidates, key=lambda k: (abs(k - ratio), k))
        return source_chunk // k
    m = max(1, round(edge / source_chunk), math.ceil(MIN_SPATIAL_CHUNK / source_chunk))
    return source_chunk * m


def variable_encoding(
    dims: tuple[str, ...],
    shape: tuple[int, ...],
    itemsize: int,
    y_dim: str,
    x_dim: str,
    chunk_edge: int,
    chunks_per_shard: int | None,
) -> VarEncoding:
    """Chunks and shards for one variable with spatial dims ``y_dim``/``x_dim`` (anywhere in ``dims``).

    Chunks: both spatial dims get ``e = min(chunk_edge, max(ny, nx))`` (square), each then
    clipped to its own dim size (and to at least 1); every non-spatial dim gets 1.

    Shards (``chunks_per_shard = c``; ``None`` -> no sharding):

    * each spatial dim: ``chunk * min(c, ceil(size / chunk))`` (at least one chunk), so a small
      level does not get a shard far larger than the array;
    * leftover budget ``L = (c * c) // (spatial chunks per shard)`` widens the non-spatial dims,
      innermost (last in dim order) first: multiplier ``m = min(size, L, MAX_INNER_CHUNKS // n)``
      (at least 1) where ``n`` is the running number of inner chunks per shard; then ``L //= m``.
      The ``MAX_INNER_CHUNKS`` cap only limits this widening: the spatial count alone may
      exceed it (c=32 gives up to 1024).

    ``itemsize`` is validated but does not change the result (the edge already encodes it).
    """
    dims = tuple(dims)
    shape = tuple(shape)
    if len(dims) != len(shape):
        raise ValueError(f"dims {dims} and shape {shape} differ in length")
    if len(set(dims)) != len(dims):
        raise ValueError(f"duplicate dims in {dims}")
    if y_dim == x_dim:
        raise ValueError(f"y_dim and x_dim must differ, both are {y_dim!r}")
    for name in (y_dim, x_dim):
        if name not in dims:
            raise ValueError(f"spatial dim {name!r} not in dims {dims}")
    for n in shape:
        if not _is_int(n) or n < 0:
            raise ValueError(f"shape must hold non-negative ints, got {shape}")
    shape = tuple(int(n) for n in shape)
    _require_positive_int("itemsize", itemsize)
    chunk_edge = _require_positive_int("chunk_edge", chunk_edge)
    validate_chunks_per_shard(chunks_per_shard)

    iy, ix = dims.index(y_dim), dims.index(x_dim)
    spatial = {iy, ix}
    edge = min(chunk_edge, max(shape[iy], shape[ix]))
    chunks = [max(1, min(edge, n)) if i in spatial else 1 for i, n in enumerate(shape)]

    if chunks_per_shard is None:
        return VarEncoding(chunks=tuple(chunks), shards=None)

    c = int(chunks_per_shard)
    mult = [1] * len(shape)
    for i in (iy, ix):
        mult[i] = max(1, min(c, math.ceil(shape[i] / chunks[i])))
    n_inner = mult[iy] * mult[ix]
    budget = (c * c) // n_inner
    for i in reversed(range(len(shape))):
        if i in spatial:
            continue
        m = max(1, min(shape[i], budget, MAX_INNER_CHUNKS // n_inner))
        mult[i] = m
        budget //= m
        n_inner *= m
    shards = tuple(ch * m for ch, m in zip(chunks, mult))
    return VarEncoding(chunks=tuple(chunks), shards=shards)
