"""Task retries that leave object-store outages to the core: ``retry_condition_fn`` of the flows' tasks.

An :class:`~topozarr_core.store.retrying_store.ObjectStoreUnavailable` means the core already retried the
endpoint for the whole ``TOPOZARR_S3_RETRY_TIMEOUT``. Retrying the task as well multiplied that
(initialise-target: 4 attempts of 2-4 minutes each, over 10 minutes before the run failed), and once
one operation gave up, the core fails every further one on that endpoint at once
(:mod:`topozarr_core.store.outages`): so such a task fails for good, the run ends Failed within about the
retry timeout, and ``topozarr-flows retry`` (or the UI's Retry) resumes it once the endpoint is back.
A failure that says so itself (:class:`NotRetryable`, such as a source that changed since the run was
planned) is not retried either. Every other failure keeps the task's retry policy.
"""

from __future__ import annotations

from typing import Any

from topozarr_core.store.retrying_store import ObjectStoreUnavailable


class NotRetryable(RuntimeError):
    """A task failure that retrying the task cannot fix: the task fails at once, the run ends Failed."""


def retry_unless_unavailable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: False (no retry) when the task failed with ``ObjectStoreUnavailable``
    or a :class:`NotRetryable`.

    :param task: the task.
    :param task_run: its run.
    :param state: the Failed state (its data is the exception).
    """
    err = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(err, (ObjectStoreUnavailable, NotRetryable))


__all__ = ["NotRetryable", "retry_unless_unavailable"]
