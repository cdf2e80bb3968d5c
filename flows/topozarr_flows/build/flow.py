"""The ``build-pyramid`` flow: orchestration only; every decision lives in topozarr_core."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from topozarr_core.store.errors import redact
from topozarr_flows.build.tasks import (
    check_written_level,
    commit_stage,
    initialise_target,
    plan_pyramid,
    prepare_spot_references,
    publish_metadata,
    validate,
    write_tile,
)
from topozarr_flows.params import BuildParams
from topozarr_flows.prefect_api.recovery import before_attempt, on_crashed
from topozarr_flows.runs import level_checks
from topozarr_flows.runs.artifacts import quicklook_artifact
from topozarr_flows.runs.icechunk_stages import fork_stage, publish_branch
from topozarr_flows.runs.job import target_lease
from topozarr_flows.runs.task_options import ensure_limit_task
from topozarr_flows.runs.tile_runs import TilesFailed, run_tiles  # noqa: F401  (TilesFailed: what a failed run raises)


@flow(name="build-pyramid", persist_result=True, on_crashed=[on_crashed])
def build_pyramid(params: BuildParams) -> dict[str, Any]:
    """Build (or rebuild) a multiscale GeoZarr pyramid from ``params.source`` into ``params.target``.

    :param params: what to build from where to where, and how (validated before any task runs).
    """
    logger = get_run_logger()
    before_attempt(params.concurrency_limit)
    plan = plan_pyramid(params)
    slots = ensure_limit_task(params.concurrency_limit, params.default_concurrency)
    with target_lease(params):
        init = initialise_target(params)
        staging = init["staging"]
        # each complete level is checked in the background (references first); validate-pyramid takes those checks
        check = partial(check_written_level, params, staging)
        with level_checks.checking(str(flow_run.id), check, partial(prepare_spot_references, params)) as checks:
            rows = run_tiles(
                plan,
                lambda key, fork: write_tile.submit(params, key, fork, fingerprint=plan["fingerprint"]),
                fork=(lambda stage: fork_stage(params, staging, key=f"S{stage}")) if staging else None,
                commit=(lambda stage, forks, last: commit_stage(params, staging, forks, key=f"stage-{stage}",
                                                                last=last)["fork"]) if staging else None,
                in_flight=slots,  # (one more would only wait for a slot)
                level_written=checks.level_written,
            )
            checked = validate(params, staging)
        publish_metadata(params, staging)
        snapshot = publish_branch(params, staging, init["base"]) if staging else None
        quicklook_artifact(params)
    create_table_artifact(rows, key="pyramid-levels", description=redact(f"{params.source} -> {params.target}"))
    logger.info("pyramid complete: %d levels, %d spot checks passed", len(rows), checked["spot_checks"])
    return {"levels": rows, "snapshot": snapshot, "spot_checks": checked["spot_checks"],
            "fingerprint": plan["fingerprint"]}
