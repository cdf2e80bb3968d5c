"""Global concurrency limits: make sure the limit the write tasks acquire exists.

A missing Prefect global concurrency limit silently limits nothing; the tasks acquire theirs with
``strict=True`` (missing -> error), and the flow creates it with ``default_concurrency`` slots when
``infra/setup-prefect.sh`` has not.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectNotFound


def ensure_limit(name: str, slots: int) -> tuple[int, bool]:
    """(slots of the limit, whether it was created now)."""
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            return slots, True
        if not found.active:
            raise RuntimeError(f"global concurrency limit {name!r} exists but is inactive: it would limit nothing")
        return found.limit, False


@task(name="ensure-concurrency-limit")
def ensure_limit_task(name: str, slots: int) -> int:
    limit, created = ensure_limit(name, slots)
    get_run_logger().info("%s concurrency limit %r with %d slots", "created" if created else "using", name, limit)
    return limit
