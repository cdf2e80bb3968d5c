"""Each level is checked as soon as it is written, in the background, while coarser ones are written.

Before any level is complete, the same thread computes the spot checks' references from the source
(``prepare``: :class:`topozarr_core.validate.spot_checks.SpotReferences`), so a check once a level is
written only reads its windows back. A 1 GB build is one tile whose levels all complete when it ends:
its checks took 0.38 s after it, 0.27 s of them the references.

``validate-pyramid`` used to read every level back after the last one was written: 0.4-0.7 s on the
critical path of a 1 GB build, while the cores had little else to do in the pipeline's tail. Now the
flow hands each level to :meth:`RunChecks.level_written` when it is complete (Zarr: its last tile
ended; Icechunk: its commit), one background thread per flow run checks it
(:func:`topozarr_core.validate.pyramid.check_level`), and ``validate-pyramid`` takes the finished checks
(:func:`take`) and reads only what is left: the root attributes to be published, and any level whose
background check did not run or raised (it is checked again there, so an error is reported, not lost).

Nothing writes a level of the run again once it is complete, so a check made then is the one the
end would make (the same windows: they depend on the seed and the level only). The checks live in
the flow's process; tasks on other machines never see them, and ``validate-pyramid`` (called by the
flow, in its process) always does.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from topozarr_core.validate.pyramid import LevelCheck


class RunChecks:
    """The background checks of one flow-run attempt's levels."""

    def __init__(self, check: Callable[[int], LevelCheck], prepare: Callable[[], object] | None = None) -> None:
        """:param check: checks one level; run in one background thread.
        :param prepare: runs first in that thread (the checks' references); its failure only costs time.
        """
        self._check = check
        # one thread: a check is small, and it must not take cores from the tiles still writing
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topozarr-level-check")
        self._futures: dict[int, Future] = {}
        self._lock = threading.Lock()
        # the flow run's context (made in the flow's thread): without it the thread is in no flow run, and
        # what it derives per attempt (the Job: source, plan, references) would be built again, keyed by
        # no attempt, and could serve a later run of the same parameters in a long-lived process
        self._context = contextvars.copy_context()
        self._prepared = self._submit(prepare) if prepare is not None else None

    def _submit(self, fn: Callable, *args: object) -> Future:
        return self._pool.submit(self._context.copy().run, fn, *args)

    def prepared(self) -> bool:
        """Wait for ``prepare``; whether it ended without an error (False also when there is none)."""
        if self._prepared is None:
            return False
        try:
            self._prepared.result()
        except Exception:  # noqa: BLE001 -- the checks compute what it did not
            return False
        return True

    def level_written(self, level: int) -> None:
        """Start checking ``level`` (once; a level reported again is not checked twice)."""
        with self._lock:
            if level not in self._futures:
                self._futures[level] = self._submit(self._check, level)

    def results(self) -> dict[int, LevelCheck]:
        """The finished checks, waiting for those started (and for ``prepare``, whose references the
        checks still to make use); a check that raised is left out."""
        self.prepared()
        with self._lock:
            futures = dict(self._futures)
        out = {}
        for level, future in futures.items():
            try:
                out[level] = future.result()
            except Exception:  # noqa: BLE001 -- validate-pyramid checks that level itself and says why
                continue
        return out

    def close(self) -> None:
        """Stop the checks: those not started are cancelled, running ones are not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)


_runs: dict[str, RunChecks] = {}
_guard = threading.Lock()


@contextmanager
def checking(run_id: str, check: Callable[[int], LevelCheck],
             prepare: Callable[[], object] | None = None) -> Iterator[RunChecks]:
    """Background checks for flow run ``run_id`` while the block runs; dropped when it ends.

    :param run_id: the flow run's id.
    :param check: checks one level.
    :param prepare: runs in the background before any check (see the module docstring).
    """
    checks = RunChecks(check, prepare)
    with _guard:
        previous = _runs.pop(run_id, None)
        _runs[run_id] = checks
    if previous is not None:
        previous.close()
    try:
        yield checks
    finally:
        with _guard:
            if _runs.get(run_id) is checks:
                del _runs[run_id]
        checks.close()


def take(run_id: str) -> dict[int, LevelCheck]:
    """The finished level checks of ``run_id`` in this process (empty when there are none)."""
    with _guard:
        checks = _runs.get(run_id)
    return checks.results() if checks is not None else {}
