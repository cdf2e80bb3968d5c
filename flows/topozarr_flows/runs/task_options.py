"""What every task of both flows shares: run-scoped result caching, the retry policy, the write limit.

Cache keys are scoped to the flow run, so retrying a failed run (the UI's Retry) reuses every completed
task's persisted result and redoes only what failed; a new run starts fresh. A task retries on its own
(``RETRYING``) except when the core gave up on an outage (then a retry would only wait again).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from topozarr_flows.prefect_api.outage_retries import retry_unless_unavailable
from topozarr_flows.prefect_api.slots import ensure_limit


def run_scoped_key(ctx: TaskRunContext, parameters: dict[str, Any]) -> str:
    """<flow run>/<task>/<parameters digest>/<key>: computed from the parameters alone (never opens the
    source, so a missing source fails once, in planning); session objects never enter the key.

    :param ctx: the task run's context.
    :param parameters: the task's parameters (``params`` and ``key`` are used).
    """
    params = parameters["params"]
    digest = hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:16]
    return f"{ctx.task_run.flow_run_id}/{ctx.task.name}/{digest}/{parameters.get('key', '')}"


RUN_CACHED = dict(cache_key_fn=run_scoped_key, persist_result=True)
#: Seconds of the first retry delay (doubling after); TOPOZARR_RETRY_DELAY overrides it (tests use 0).
RETRY_DELAY = float(os.environ.get("TOPOZARR_RETRY_DELAY", "2"))
RETRYING = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=RETRY_DELAY) if RETRY_DELAY else 0,
                retry_jitter_factor=0.5 if RETRY_DELAY else None,
                retry_condition_fn=retry_unless_unavailable)  # an outage the core gave up on: no retry


@task(name="ensure-concurrency-limit")
def ensure_limit_task(name: str, slots: int) -> int:
    """The slots of the write limit, creating it with ``slots`` when it does not exist (a missing
    limit would limit nothing).

    :param name: the limit's name.
    :param slots: the slots of a new limit.
    """
    limit, created = ensure_limit(name, slots)
    get_run_logger().info("%s concurrency limit %r with %d slots", "created" if created else "using", name, limit)
    return limit
