"""The GC pause of writes (``old_objects_frozen``) stays on while any overlapping write runs (the
flow's tiles without stage barriers: tests/flows/runs/test_pipeline.py)."""

from __future__ import annotations

import gc
import threading

from topozarr_core.write.gc_pause import old_objects_frozen


def test_gc_stays_frozen_while_any_overlapping_write_runs():
    inside = threading.Event()
    leave = threading.Event()

    def other_write():
        with old_objects_frozen():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other_write)
    with old_objects_frozen():
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the objects of this process (pytest, xarray, prefect, ...)
        t.start()
        inside.wait(10)
    assert gc.get_freeze_count() > frozen * 0.9  # the other write still runs: still frozen (a few were freed)
    leave.set()
    t.join()
    assert gc.get_freeze_count() < frozen / 2  # the last write to end gave them back to the collector
