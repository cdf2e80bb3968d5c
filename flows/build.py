"""The ``build-pyramid`` flow: orchestration only; every decision lives in topozarr_core."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from topozarr_core.targets import redact

from . import level_checks
from .recovery import before_attempt, on_crashed
from . import heartbeat_exit  # noqa: F401  (a run returns when it ends: see the module)
from .artifacts import quicklook_artifact
from .batches import BatchesFailed  # noqa: F401  (what a failed run raises)
from .batches import run_levels, runs_in_this_process
from .job import attempt_depends, drop_run_cache, target_lease
from .limits import ensure_limit_task
from .params import BuildParams
from .tasks import (
    check_written_level,
    commit_level,
    fork_level,
    initialise_target,
    plan_pyramid,
    publish_branch,
    publish_metadata,
    validate,
    write_batch,
)


@flow(name="build-pyramid", persist_result=True, on_crashed=[on_crashed])
def build_pyramid(params: BuildParams) -> dict[str, Any]:
    """Build (or rebuild) a multiscale GeoZarr pyramid from ``params.source`` into ``params.target``."""
    logger = get_run_logger()
    before_attempt()
    plan = plan_pyramid(params)
    slots = ensure_limit_task(params.concurrency_limit, params.default_concurrency)
    with target_lease(params):
        init = initialise_target(params)
        staging = init["staging"]
        shared = runs_in_this_process()  # then the batch tasks share one level cache (see write_batch)
        # each complete level is checked in the background; validate-pyramid takes those checks
        check = partial(check_written_level, params, staging)
        with level_checks.checking(str(flow_run.id), check) as checks:
            try:
                depends, cache_only = attempt_depends(params, plan.get("depends"), shared)
                rows = run_levels(
                    plan["levels"],
                    lambda level, i, fork: write_batch.submit(params, level, i, fork, key=f"L{level}-B{i:05d}",
                                                             fingerprint=plan["fingerprint"], shared=shared,
                                                             cache_only=cache_only),
                    fork=(lambda level: fork_level(params, staging, key=f"L{level}")) if staging else None,
                    commit=(lambda level, forks, last: commit_level(params, staging, forks, key=f"level-{level}",
                                                                    last=last)["fork"]) if staging else None,
                    depends=depends,  # (a run planned by an older version has none: level by level)
                    in_flight=slots,  # (one more would only poll the server for a slot)
                    level_written=checks.level_written,
                    reads_target=not cache_only,  # (Icechunk: then levels are committed as they complete)
                )
            finally:
                drop_run_cache(params)
            checked = validate(params, staging)
        publish_metadata(params, staging)
        snapshot = publish_branch(params, staging, init["base"]) if staging else None
        quicklook_artifact(params)
    create_table_artifact(rows, key="pyramid-levels", description=redact(f"{params.source} -> {params.target}"))
    logger.info("pyramid complete: %d levels, %d spot checks passed", len(rows), checked["spot_checks"])
    return {"levels": rows, "snapshot": snapshot, "spot_checks": checked["spot_checks"],
            "fingerprint": plan["fingerprint"]}
