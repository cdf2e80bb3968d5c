"""One thread pool per process for the tiles it runs at once, the tile that started first served first.

A runner's tasks (a flow's thread runner, a Dask worker's threads) may run several tiles in one
process. Their regions share one pool sized to the cores (:func:`shared_pool`), so the cores are not
oversubscribed. In a plain first-in-first-out pool those tiles would advance side by side and all
end late, the last of them alone on the cores; ``Pyramid.write`` instead runs a stage's tiles as one
graph and keeps every core busy to the end. :class:`TilePool` gives the same order to tiles run as
separate tasks: each run takes a :meth:`~TilePool.ticket` when it starts, and a free thread always
takes the waiting region of the lowest ticket. A later tile's regions fill the threads only while
the earlier tile waits on its own dependencies, so tiles end one after another, as in the core, and
fewer of them hold their in-memory levels at once.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

__all__ = ["TilePool", "shared_pool"]


class TilePool(Executor):
    """A thread pool that runs the call of the lowest priority first (ties: the order of submission).

    :param workers: the number of threads.
    :param thread_name_prefix: their names' prefix.
    """

    def __init__(self, workers: int, thread_name_prefix: str = "topozarr-tiles") -> None:
        # Each submission queues one job in a plain pool; the job runs whichever call is then first in
        # the heap, so the threads, their lifetime and shutdown stay the standard library's.
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix)
        self._heap: list[tuple[int, int, Future, Callable, tuple, dict]] = []
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._tickets = itertools.count()

    def ticket(self) -> int:
        """A new priority, after every one given before: take it when a tile's run starts."""
        return next(self._tickets)

    def submit_at(self, priority: int, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` behind every waiting call of a lower ``priority``.

        :param priority: the ticket of the run the call belongs to (lower runs first).
        :param fn: the callable.
        """
        future: Future = Future()
        with self._lock:
            heapq.heappush(self._heap, (priority, next(self._order), future, fn, args, kwargs))
        self._threads.submit(self._run_first)
        return future

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` behind every call waiting now (a priority after every ticket so far)."""
        return self.submit_at(next(self._tickets), fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads (see :meth:`concurrent.futures.Executor.shutdown`).

        :param wait: return only once every running call has ended.
        :param cancel_futures: cancel the calls that have not started.
        """
        if cancel_futures:
            with self._lock:
                waiting, self._heap = self._heap, []
            for entry in waiting:
                entry[2].cancel()
        self._threads.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _run_first(self) -> None:
        with self._lock:
            if not self._heap:  # cancelled by shutdown
                return
            _, _, future, fn, args, kwargs = heapq.heappop(self._heap)
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001  (handed to the caller through the future, as ThreadPoolExecutor does)
            future.set_exception(exc)
        else:
            future.set_result(result)


_SHARED: dict[int, TilePool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(workers: int | None = None) -> TilePool:
    """This process's pool for the tiles it runs at once (tasks of a thread runner, of a Dask worker):
    their regions share the cores instead of each tile starting a pool of its own.

    :param workers: the pool's threads (default: the CPU count); one pool per size is kept.
    """
    n = max(1, int(workers or os.cpu_count() or 1))
    with _SHARED_LOCK:
        pool = _SHARED.get(n)
        if pool is None:
            pool = _SHARED[n] = TilePool(n)
        return pool
