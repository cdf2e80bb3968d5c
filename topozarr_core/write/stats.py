"""Per-level timings of a write (``Pyramid.write(stats=True)``), in topozarr's shape.

Seconds are summed over the worker threads, as topozarr does, so they can exceed the wall time.
``read_s`` is the time spent getting a region's input (the source for level 0, the previous level
from the store or the in-memory cache otherwise), ``reduce_s`` the coarsening kernel (including
the reductions a cached level does ahead for the next levels: topozarr's "fused" reduce is also
counted at the level whose blocks are reduced), ``write_s`` encoding and storing the region.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

_FIELDS = ("read_s", "reduce_s", "write_s")


class RegionTimer:
    """Thread-safe per-level accumulator; region writers call :meth:`add`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._levels: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(_FIELDS + ("regions", "bytes"), 0))
        self._started: dict[int, float] = {}
        self._ended: dict[int, float] = {}

    def add(self, level: int, *, regions: int = 0, nbytes: int = 0, **seconds: float) -> None:
        """Add one region's numbers to ``level``'s row.

        :param level: the level index.
        :param regions: regions finished.
        :param nbytes: bytes written.
        :param seconds: seconds per field (``read_s``, ``reduce_s``, ``write_s``).
        """
        now = time.perf_counter()
        with self._lock:
            row = self._levels[level]
            for key, value in seconds.items():
                row[key] += value
            row["regions"] += regions
            row["bytes"] += nbytes
            self._ended[level] = now
            self._started.setdefault(level, now - sum(seconds.values()))

    def as_dict(self, workers: int, region_shapes: dict[int, dict[str, tuple[int, ...]]]) -> dict[str, dict[str, Any]]:
        """``{"<level>": {workers, region_shapes, wall_s, regions, skipped, bytes, read_s, reduce_s, write_s}}``."""
        out: dict[str, dict[str, Any]] = {}
        for level in sorted(set(self._levels) | set(region_shapes)):
            row = self._levels.get(level) or dict.fromkeys(_FIELDS + ("regions", "bytes"), 0)
            wall = self._ended.get(level, 0.0) - self._started.get(level, 0.0)
            out[str(level)] = {
                "workers": workers,
                "region_shapes": region_shapes.get(level, {}),
                "wall_s": round(max(0.0, wall), 3),
                "regions": int(row["regions"]),
                # topozarr's count of regions left unwritten because they held only the fill value; this
                # writer writes every region (zarr itself stores no chunk that holds only the fill value)
                "skipped": 0,
                "bytes": int(row["bytes"]),
                **{key: round(float(row[key]), 3) for key in _FIELDS},
            }
        return out


__all__ = ["RegionTimer"]
