"""Endpoints an object-store operation gave up on, process-wide: the others fail fast.

Why: an operation gives up after ``TOPOZARR_S3_RETRY_TIMEOUT`` seconds of transient failures. A write
has many operations in flight, and a flow has batches waiting to start; each would wait out its own
whole timeout, one wave after another, so a long outage took the timeout times the number of waves
(116 s for a 6 s timeout and 8 batches) to fail a run. Once one operation on an endpoint gave up:

* the attempts in flight on that endpoint are cancelled, and their operations give up too;
* a new operation first sends one quick probe request (no retries, a few seconds at most) and gives
  up at once if the endpoint still does not answer; for a second after a probe that got no answer at
  all (a hung endpoint: each probe takes its whole timeout, so the batches still to start would add
  one probe timeout per wave), new operations give up without probing again;
* the first request that succeeds (or gets any answer, e.g. "not found") clears the record.

The record is per process (a Dask or process-pool worker keeps its own) and keyed by the endpoint a
store talks to (URL of the service and bucket), so other endpoints are not affected.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class EndpointGaveUp(Exception):
    """An attempt was cancelled because another operation on its endpoint gave up."""

    def __init__(self, seconds_ago: float) -> None:
        """:param seconds_ago: how long ago the other operation gave up."""
        super().__init__(f"another request to this endpoint gave up {seconds_ago:.0f} s ago")
        self.seconds_ago = seconds_ago


class AttemptDeadline(Exception):
    """An attempt did not end before its operation's deadline."""


class EndpointOutages:
    """Which endpoints an operation gave up on, and the attempts in flight on each (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gave_up: dict[str, float] = {}  # endpoint -> monotonic time an operation gave up
        self._probe_failed: dict[str, float] = {}  # endpoint -> monotonic time a probe last failed
        self._in_flight: dict[str, set[asyncio.Task]] = {}
        self._cut: set[asyncio.Task] = set()

    def gave_up_ago(self, endpoint: str) -> float | None:
        """Seconds since an operation on ``endpoint`` gave up (None: none did, or a request succeeded since)."""
        with self._lock:
            at = self._gave_up.get(endpoint)
        return None if at is None else time.monotonic() - at

    def give_up(self, endpoint: str) -> None:
        """Record that an operation on ``endpoint`` gave up, and cancel the attempts in flight there."""
        with self._lock:
            self._gave_up.setdefault(endpoint, time.monotonic())
            victims = list(self._in_flight.get(endpoint, ()))
            self._cut.update(victims)
        for task in victims:  # a task belongs to its own event loop, maybe another thread's
            try:
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # that loop is closed: the attempt is over anyway
                pass

    def probe_failed(self, endpoint: str) -> None:
        """A probe of ``endpoint`` got no answer (see :meth:`probe_failed_within`)."""
        with self._lock:
            self._probe_failed[endpoint] = time.monotonic()

    def probe_failed_within(self, endpoint: str, seconds: float) -> bool:
        """Whether a probe of ``endpoint`` failed less than ``seconds`` ago."""
        with self._lock:
            at = self._probe_failed.get(endpoint)
        return at is not None and time.monotonic() - at < seconds

    def answered(self, endpoint: str) -> None:
        """The endpoint answered a request: operations wait out their whole retry timeout again."""
        if endpoint in self._gave_up:  # (read without the lock: the common case costs nothing)
            with self._lock:
                self._gave_up.pop(endpoint, None)
                self._probe_failed.pop(endpoint, None)

    def clear(self) -> None:
        """Forget every record (tests)."""
        with self._lock:
            self._gave_up.clear()
            self._probe_failed.clear()

    async def attempt(self, endpoint: str, call: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run one attempt of an operation on ``endpoint``: raises :class:`EndpointGaveUp` when another
        operation there gives up meanwhile, :class:`AttemptDeadline` after ``timeout`` seconds.

        :param endpoint: the service and bucket the operation talks to.
        :param call: starts the attempt.
        :param timeout: seconds the attempt may take (None: no limit).
        """
        task = asyncio.ensure_future(call())
        with self._lock:
            self._in_flight.setdefault(endpoint, set()).add(task)
        try:
            done, _ = await asyncio.wait({task}, timeout=None if timeout is None else max(timeout, 0.0))
            if not done:
                raise AttemptDeadline()
            return task.result()
        except asyncio.CancelledError:
            with self._lock:
                cut, at = task in self._cut, self._gave_up.get(endpoint)
            current = asyncio.current_task()
            if not cut or (current is not None and current.cancelling()):
                raise  # the caller itself was cancelled, not (only) the attempt by give_up
            raise EndpointGaveUp(0.0 if at is None else time.monotonic() - at) from None
        finally:
            if not task.done():
                task.cancel()
            with self._lock:
                self._in_flight.get(endpoint, set()).discard(task)
                self._cut.discard(task)


#: The process-wide record every retrying object store uses.
OUTAGES = EndpointOutages()

__all__ = ["OUTAGES", "EndpointOutages", "EndpointGaveUp", "AttemptDeadline"]
