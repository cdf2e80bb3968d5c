"""Keep Python's cyclic garbage collector off the objects that existed before a write.

A process that imported xarray, dask, zarr (and Prefect) holds millions of tracked objects; the
region threads allocate enough for a full (generation 2) collection to start mid-write, which
walks all of them for ~0.1 s holding the GIL and stalls every worker. ``gc.freeze`` moves the
existing objects out of the collector's view (nothing is freed or kept differently: cycles among
them are found after ``gc.unfreeze``). Writes may overlap (the batch tasks of a flow run in
threads of one process): the first to start freezes, the last to end unfreezes.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_writers = 0


@contextlib.contextmanager
def old_objects_frozen() -> Iterator[None]:
    """Keep the objects that exist now out of the cyclic GC while the block runs (nested and concurrent uses count)."""
    global _writers
    with _lock:
        if _writers == 0:
            gc.freeze()
        _writers += 1
    try:
        yield
    finally:
        with _lock:
            _writers -= 1
            if _writers == 0:
                gc.unfreeze()
