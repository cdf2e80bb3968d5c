"""What ``Pyramid.write(..., stats=True)`` returns: topozarr's per-level stats dict, with the write's summary.

topozarr 0.2.1's ``write(stats=True)`` returns a plain dict ``{"0": {...}, "1": {...}}`` and ``write()``
returns None. A :class:`WriteReport` *is* that dict (``report["0"]["write_s"]``, ``set(report)``,
``"0" in report``, ``len(report)``, ``json.dumps(report)`` and ``report == {...}`` all behave as on
topozarr's), and also carries the summary of the write as attributes (levels, regions, bytes, workers,
whether the root was published).
"""

from __future__ import annotations

from typing import Any


class WriteReport(dict):
    """Per-level stats of a completed ``Pyramid.write(..., stats=True)``, keyed ``"0"``, ``"1"``, ...

    Each value holds ``workers``, ``region_shapes``, ``wall_s``, ``regions``, ``skipped``, ``bytes``,
    ``read_s``, ``reduce_s`` and ``write_s`` (see :mod:`topozarr_core.write.stats`).

    Parameters (also attributes): ``stats`` the per-level dict; ``levels`` the levels written;
    ``regions`` how many regions were written; ``bytes_written`` their uncompressed bytes; ``workers``
    the thread pool size; ``kept_in_memory`` whether coarser levels were built from memory; ``io``
    ``"python"`` or ``"rust"``; ``published`` whether the root was published (False after a write that
    left levels unwritten).
    """

    def __init__(self, stats: dict[str, dict[str, Any]], *, levels: list[int], regions: int, bytes_written: int,
                 workers: int, kept_in_memory: bool, io: str, published: bool = True) -> None:
        super().__init__(stats)
        self.levels = list(levels)
        self.regions = int(regions)
        self.bytes_written = int(bytes_written)
        self.workers = int(workers)
        self.kept_in_memory = bool(kept_in_memory)
        self.io = io
        self.published = bool(published)

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """The per-level stats as a plain dict (what topozarr returns)."""
        return dict(self)

    def __repr__(self) -> str:
        return (f"WriteReport(levels={self.levels}, regions={self.regions}, bytes_written={self.bytes_written}, "
                f"workers={self.workers}, io={self.io!r}, published={self.published}, stats={dict.__repr__(self)})")


__all__ = ["WriteReport"]
