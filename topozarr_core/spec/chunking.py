"""Chunk and shard heuristics for web-visualisation pyramids (sharded Zarr v3): topozarr 0.2.1's rules.

Pure functions on shapes: no I/O, no xarray/zarr imports. A topozarr user switching to this project
gets the same ``pyramid.encoding`` for the same dataset, so the rules are topozarr's, value for value
(``tests/contract/test_topozarr_contract_layout.py`` pins them against values measured from topozarr 0.2.1).

Model
-----
* **Spatial chunks** aim at ``target_chunk_bytes`` (512 KiB): the ideal edge is
  ``max(128, int(sqrt(target_chunk_bytes / itemsize)))`` (float32: 362, uint8: 724, float64: 256),
  and each spatial dim is split into ``ceil(size / ideal)`` *balanced* chunks, so no thin last chunk
  is left over (2000 px -> 334, 1000 -> 334, 500 -> 250; a dim of at most 128 px or at most the ideal
  edge is one chunk). The two spatial dims are sized independently.
* **Shards** hold ``min(chunks_per_shard, size // chunk)`` chunks along each spatial dim (at least
  one): only whole chunks count, so a small level does not get a shard far larger than the array.
* **Non-spatial dims** (time, band, ...) get chunk 1. The shard's byte budget,
  ``target_chunk_bytes * chunks_per_shard ** n_spatial``, widens them innermost first when the
  spatial part leaves room (a small raster, a coarse level), bounded by :data:`MAX_INNER_CHUNKS`
  inner chunks per shard.
* **A chunked source** (dask or a Zarr backend, see :func:`snap_to_source`): each spatial chunk is
  chosen so that its shard *divides* the source chunk, which is what xarray's ``safe_chunks`` asks of
  a Dask write of ``as_datatree()``; ``chunks_per_shard`` is an upper bound, lowered where that is
  what makes a shard divide. Failing that, a shard that is a whole multiple of the source chunk
  (each source chunk read once). A non-spatial shard is lowered to a divisor of the source chunk.
* **1-D coordinates** along a spatial dim are chunked as 1-D arrays (``target_chunk_bytes //
  itemsize`` elements, balanced) and never sharded; a coordinate that fits one chunk gets no entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral

#: Allowed number of inner chunks per shard, along each spatial dim.
VALID_CHUNKS_PER_SHARD = (1, 2, 4, 8, 16, 32)
#: Target uncompressed size of one inner chunk (topozarr's 512 KiB).
DEFAULT_TARGET_CHUNK_BYTES = 512 * 1024
#: Smallest chunk edge the heuristics choose (a dim this small or smaller is one chunk).
MIN_CHUNK = 128
#: Cap on inner chunks per shard when widening the non-spatial dims: the zarr v3 shard index costs
#: 16 B per inner chunk, so 128 keeps it at 2 KB, cheap next to the chunk it locates.
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


def ideal_chunk(itemsize: int, target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES) -> int:
    """Edge of a square chunk of about ``target_chunk_bytes``: ``max(128, int(sqrt(target / itemsize)))``.

    At the default target: uint8 -> 724, int16 -> 512, float32 -> 362, float64 -> 256.
    """
    itemsize = _require_positive_int("itemsize", itemsize)
    target_chunk_bytes = _require_positive_int("target_chunk_bytes", target_chunk_bytes)
    return max(MIN_CHUNK, int(math.sqrt(target_chunk_bytes / itemsize)))


def ideal_chunk_1d(itemsize: int, target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES) -> int:
    """Elements per chunk of a 1-D array (a coordinate) of about ``target_chunk_bytes``.

    :param itemsize: bytes per element.
    :param target_chunk_bytes: the chunk size to aim at.
    """
    itemsize = _require_positive_int("itemsize", itemsize)
    return max(MIN_CHUNK, _require_positive_int("target_chunk_bytes", target_chunk_bytes) // itemsize)


def balanced_chunk(size: int, ideal: int) -> int:
    """Chunk of a dim of ``size``: the whole dim when it is at most 128 or at most ``ideal``, else
    ``ceil(size / n)`` for ``n = ceil(size / ideal)`` chunks (at least 128), so chunks come out even."""
    if size <= MIN_CHUNK or size <= ideal:
        return size
    n = math.ceil(size / ideal)
    return max(MIN_CHUNK, math.ceil(size / n))


def shard_size(size: int, chunk: int, chunks_per_shard: int) -> int:
    """Shard of a spatial dim: ``min(chunks_per_shard, size // chunk)`` whole chunks, at least one."""
    return min(chunks_per_shard, max(1, size // chunk)) * chunk


def _best_chunk(shards: set[int] | list[int], cps: int, ideal: int) -> int | None:
    """The chunk nearest ``ideal`` (ties: the smaller) among ``shards`` split into ``cps`` chunks of
    at least 128 and within ``[ideal / 2, 2 * ideal]``."""
    valid = [s // cps for s in shards
             if s % cps == 0 and s // cps >= MIN_CHUNK and ideal / 2 <= s // cps <= ideal * 2]
    return min(valid, key=lambda c: (abs(c - ideal), c)) if valid else None


def snap_to_source(size: int, ideal: int, source_chunk: int,
                   chunks_per_shard: int | None) -> tuple[int, int] | None:
    """``(chunk, chunks_per_shard)`` for a spatial dim whose source is chunked by ``source_chunk``, or
    None when nothing fits (the plain :func:`balanced_chunk` then applies).

    First a shard that *divides* the source chunk, trying ``chunks_per_shard`` and then every smaller
    allowed value (largest first): a Dask write of the source chunks needs it (``safe_chunks``).
    Else a shard that is a whole multiple of the source chunk at ``chunks_per_shard`` (each source chunk
    is read once). The chunk is the one nearest ``ideal`` among those at least 128 and within
    ``[ideal / 2, 2 * ideal]``. A dim of at most 128 or at most ``ideal`` is one chunk: nothing to snap.
    float32 (ideal 362), ``chunks_per_shard=4``: source 1024 -> (256, 4); 512 -> (256, 2);
    2000 -> (250, 4); 100 -> (350, 4) (shard 1400 = 14 source chunks).

    :param size: the dim's length.
    :param ideal: the chunk length to aim at.
    :param source_chunk: the source's chunk length along the dim.
    :param chunks_per_shard: the chunks per shard along the dim (None: unsharded, treated as 1).
    """
    if source_chunk <= 0 or size <= MIN_CHUNK or size <= ideal:
        return None
    max_cps = chunks_per_shard or 1
    divisors = _divisors(source_chunk)
    for cps in sorted((c for c in VALID_CHUNKS_PER_SHARD if c <= max_cps), reverse=True):
        chunk = _best_chunk(divisors, cps, ideal)
        if chunk is not None:
            return chunk, cps
    max_mult = max(1, (2 * ideal * max_cps) // source_chunk + 1)  # no larger shard yields a chunk in band
    chunk = _best_chunk([source_chunk * m for m in range(1, max_mult + 1)], max_cps, ideal)
    return None if chunk is None else (chunk, max_cps)


def widen_non_spatial(shards: list[int], chunks: list[int], shape: tuple[int, ...], non_spatial: list[int],
                      itemsize: int, target_chunk_bytes: int, chunks_per_shard: int) -> list[int]:
    """``shards`` with the budget the spatial dims leave unused spent on the non-spatial dims (innermost
    first, chunks stay 1): the shard budget is ``target_chunk_bytes * chunks_per_shard ** n_spatial``
    bytes and at most :data:`MAX_INNER_CHUNKS` inner chunks. Nothing widens at ``chunks_per_shard=1``.

    :param shards: the shard shape so far.
    :param chunks: the chunk shape.
    :param shape: the array's shape.
    :param non_spatial: the indices of the non-spatial dims.
    :param itemsize: bytes per element.
    :param target_chunk_bytes: the chunk size aimed at.
    :param chunks_per_shard: the chunks per shard along each spatial dim.
    """
    out = list(shards)
    if chunks_per_shard <= 1 or not non_spatial:
        return out
    n_spatial = len(shape) - len(non_spatial)
    headroom = (target_chunk_bytes * chunks_per_shard**n_spatial) // (math.prod(out) * itemsize)
    inner = math.prod(s // c for s, c in zip(out, chunks))
    headroom = min(headroom, MAX_INNER_CHUNKS // inner)
    for i in reversed(non_spatial):
        if headroom <= 1:
            break
        take = max(1, min(headroom, shape[i]))
        out[i] = take
        headroom //= take
    return out


def variable_encoding(
    dims: tuple[str, ...],
    shape: tuple[int, ...],
    itemsize: int,
    y_dim: str,
    x_dim: str,
    chunks_per_shard: int | None,
    target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES,
    source_chunks: Mapping[str, int] | None = None,
) -> VarEncoding:
    """Chunks and shards of a variable over one or both spatial dims (anywhere in ``dims``).

    ``source_chunks`` maps dim names to the source's chunk along them (absent: not chunked, or the
    variables disagree). See the module docstring for the rules.

    :param dims: the variable's dims.
    :param shape: the variable's shape.
    :param itemsize: bytes per stored element.
    :param y_dim: the y dimension's name.
    :param x_dim: the x dimension's name.
    :param chunks_per_shard: chunks per shard along each spatial dim (None: unsharded).
    :param target_chunk_bytes: the chunk size to aim at.
    :param source_chunks: the source's chunk per dim name (absent: not chunked, or the variables disagree).
    """
    dims, shape = tuple(dims), tuple(shape)
    if len(dims) != len(shape):
        raise ValueError(f"dims {dims} and shape {shape} differ in length")
    if len(set(dims)) != len(dims):
        raise ValueError(f"duplicate dims in {dims}")
    if y_dim == x_dim:
        raise ValueError(f"y_dim and x_dim must differ, both are {y_dim!r}")
    if y_dim not in dims and x_dim not in dims:
        raise ValueError(f"neither spatial dim {y_dim!r} nor {x_dim!r} is in dims {dims}")
    for n in shape:
        if not _is_int(n) or n < 0:
            raise ValueError(f"shape must hold non-negative ints, got {shape}")
    shape = tuple(int(n) for n in shape)
    itemsize = _require_positive_int("itemsize", itemsize)
    ideal = ideal_chunk(itemsize, target_chunk_bytes)
    validate_chunks_per_shard(chunks_per_shard)
    cps = None if chunks_per_shard is None else int(chunks_per_shard)
    src = dict(source_chunks or {})

    chunks = [1] * len(shape)
    shards = [1] * len(shape)
    effective: list[int] = []  # chunks_per_shard per spatial dim, after snapping may lower it
    for i, dim in enumerate(dims):
        if dim not in (y_dim, x_dim):
            continue
        snapped = snap_to_source(shape[i], ideal, src[dim], cps) if dim in src else None
        chunk, dim_cps = snapped if snapped is not None else (balanced_chunk(shape[i], ideal), cps)
        chunks[i] = max(1, chunk)
        if dim_cps is not None:
            effective.append(dim_cps)
            shards[i] = shard_size(shape[i], chunks[i], dim_cps)
    if cps is None:
        return VarEncoding(chunks=tuple(chunks), shards=None)
    non_spatial = [i for i, d in enumerate(dims) if d not in (y_dim, x_dim)]
    shards = widen_non_spatial(shards, chunks, shape, non_spatial, itemsize, target_chunk_bytes, min(effective))
    for i in non_spatial:  # a shard divides the source chunk, so a Dask write of it is safe
        source = src.get(dims[i])
        if source is not None and source < shape[i]:
            shards[i] = max(d for d in _divisors(source) if d <= shards[i])
    return VarEncoding(chunks=tuple(chunks), shards=tuple(shards))


def coordinate_encoding(size: int, itemsize: int,
                        target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES) -> VarEncoding | None:
    """Chunks of a 1-D coordinate along a spatial dim (never sharded), or None when one chunk holds it.

    :param size: the coordinate's length.
    :param itemsize: bytes per element.
    :param target_chunk_bytes: the chunk size to aim at.
    """
    chunk = balanced_chunk(int(size), ideal_chunk_1d(itemsize, target_chunk_bytes))
    return VarEncoding(chunks=(chunk,), shards=None) if chunk < size else None


def level_source_chunks(source_chunks: Mapping[str, int] | None, factor: int,
                        spatial: tuple[str, str]) -> dict[str, int] | None:
    """The source chunks as a level coarsened by ``factor`` sees them: a spatial chunk divided by the
    factor when the factor divides it (``xarray.coarsen`` splits other blocks unevenly: nothing to snap
    to), non-spatial chunks as they are.

    :param source_chunks: the source's chunk per dim, or None (not chunked).
    :param factor: the level's factor relative to level 0.
    :param spatial: the two spatial dims' names.
    """
    if source_chunks is None:
        return None
    if any(source_chunks[d] % factor for d in spatial if d in source_chunks):
        return {d: c for d, c in source_chunks.items() if d not in spatial}
    return {d: c // factor if d in spatial else c for d, c in source_chunks.items()}


__all__ = ["VarEncoding", "DEFAULT_TARGET_CHUNK_BYTES", "VALID_CHUNKS_PER_SHARD", "MIN_CHUNK", "MAX_INNER_CHUNKS",
           "validate_chunks_per_shard", "ideal_chunk", "ideal_chunk_1d", "balanced_chunk", "shard_size",
           "snap_to_source", "widen_non_spatial", "variable_encoding", "coordinate_encoding",
           "level_source_chunks"]
