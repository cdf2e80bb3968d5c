"""Initialise pyramid levels while the first level's regions run, not all up front.

Creating a level (group, coordinates, empty arrays) is pure-Python metadata work: ~15 ms for the
level xarray builds, ~8 ms for each level derived from it (:mod:`topozarr_core.layout.level_documents`), most of it
GIL-bound. Done up front for every level it is serial time before any region starts. The
executor's own thread instead creates one level at a time between two waits for regions
(:meth:`LevelInitialiser.step`), while the regions in flight keep the cores busy, and asks
:meth:`LevelInitialiser.ready` before submitting a level's first region, so a level always exists
before it is written. (A background thread doing the same was slower: starved of
the GIL for a second, it made the region threads hand the GIL back and forth all that time.)

Only stores known to take metadata listing and writes concurrently with chunk writes are
initialised on the way (local paths, obstore-backed object stores). Others, Icechunk sessions
in particular (a group listing while chunk writes are in flight deadlocks icechunk 2.3), get every
level created up front, as before.
"""

from __future__ import annotations

import threading
from typing import Any

import xarray as xr
import zarr

from topozarr_core.layout.level_documents import LevelDocuments
from topozarr_core.publish.steps import initialise_level
from topozarr_core.spec.pyramid_spec import PyramidSpec


class LevelInitialiser:
    """``ready(level)`` creates a level in the target the first time it is asked for."""

    def __init__(self, store: Any, ds: xr.Dataset, spec: PyramidSpec, levels: list[int],
                 docs: LevelDocuments | None = None) -> None:
        """:param store: the target zarr store.
        :param ds: the source dataset.
        :param spec: the pyramid's spec.
        :param levels: the levels to create.
        :param docs: the write's staged level documents, or None (a new one).
        """
        self.store, self.ds, self.spec = store, ds, spec
        self.pending = set(levels)
        self.docs = docs or LevelDocuments(ds, spec)
        self._lock = threading.Lock()
        if not interleavable(store):
            for level in sorted(levels):
                self.ready(level)

    def ready(self, level: int) -> None:
        """Make sure ``level`` exists in the target."""
        with self._lock:
            if level in self.pending:
                initialise_level(self.store, self.ds, self.spec, level, self.docs)
                self.pending.discard(level)

    def step(self) -> bool:
        """Create the finest level not created yet; returns whether any is left."""
        with self._lock:
            pending = sorted(self.pending)
        if pending:
            self.ready(pending[0])
        return len(pending) > 1


def interleavable(store: Any) -> bool:
    """Whether levels may be created in ``store`` while regions are being written to it."""
    return isinstance(store, (zarr.storage.LocalStore, zarr.storage.ObjectStore))
