"""A per-process cache of what the tasks of one flow-run attempt derive from its parameters.

Why per attempt: a worker process (a Dask worker, a long-lived served process, a notebook) outlives
flow runs. Keyed by the parameters alone, a cached source and plan would serve tomorrow's run of the
same deployment, and a retry after the source changed would write the old plan over the new data
instead of being refused (the tile tasks compare the plan's fingerprint with the one of planning).
Keyed by the flow run and its attempt (``run_count``), each attempt derives them once per process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from prefect.runtime import flow_run

#: entries kept per process: the attempts a worker serves at once, with room to spare
KEEP = 4


def current_attempt() -> str:
    """``<flow run id>#<run count>`` of the flow run this code runs in (``-`` outside of one).

    In a task on a Dask worker, Prefect reads the run count from the API: one request per call."""
    run_id = flow_run.id
    return f"{run_id}#{flow_run.run_count}" if run_id else "-"


class AttemptCache[T]:
    """Values built once per flow-run attempt and key, the last :data:`KEEP` kept."""

    def __init__(self) -> None:
        self._values: OrderedDict[tuple[str, str], T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, build: Callable[[], T]) -> T:
        """The value of ``key`` in the current attempt, built by ``build()`` the first time.

        :param key: what the value is derived from (the parameters as JSON).
        :param build: derives the value (called under the cache's lock, so once per attempt and key).
        """
        full = (current_attempt(), key)
        with self._lock:
            value = self._values.get(full)
            if value is None:
                value = self._values[full] = build()
                while len(self._values) > KEEP:
                    self._values.popitem(last=False)
            else:
                self._values.move_to_end(full)
            return value
