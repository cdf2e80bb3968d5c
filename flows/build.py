"""The ``build-pyramid`` flow: orchestration only; every decision lives in topozarr_core."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import wait

from .limits import ensure_limit_task
from .params import BuildParams
from .tasks import (
    commit_level,
    fork_level,
    initialise_target,
    plan_pyramid,
    publish_branch,
    publish_metadata,
    validate,
    write_batch,
)


class BatchesFailed(RuntimeError):
    """Some region batches failed after their retries; retry the flow run to redo only those."""


@flow(name="build-pyramid", persist_result=True)
def build_pyramid(params: BuildParams) -> dict[str, Any]:
    """Build (or rebuild) a multiscale GeoZarr pyramid from ``params.source`` into ``params.target``."""
    logger = get_run_logger()
    plan = plan_pyramid(params)
    ensure_limit_task(params.concurrency_limit, params.default_concurrency)
    init = initialise_target(params)
    staging = init["staging"]
    total = sum(lv["batches"] for lv in plan["levels"])
    progress = create_progress_artifact(0.0, description=f"region batches written ({total} in all)")
    done, rows = 0, []
    for lv in plan["levels"]:
        level = lv["level"]
        t0 = time.perf_counter()
        fork = fork_level(params, staging, key=f"L{level}") if staging else None
        futures = [
            write_batch.submit(params, level, i, fork, key=f"L{level}-B{i:05d}") for i in range(lv["batches"])
        ]
        wait(futures)
        failed = [f for f in futures if not f.state.is_completed()]
        if failed:
            raise BatchesFailed(f"level {level}: {len(failed)} of {len(futures)} batches failed; retry the run")
        results = [f.result() for f in futures]
        if staging:
            commit_level(params, staging, [r["fork"] for r in results], key=f"level-{level}")
        done += len(results)
        update_progress_artifact(progress, 100.0 * done / max(total, 1))
        seconds = time.perf_counter() - t0
        logger.info("level %d %s written: %d batches, %.1f MB, %.1f s", level, lv["shape"], len(results),
                    sum(r["bytes"] for r in results) / 1e6, seconds)
        rows.append({**{k: lv[k] for k in ("level", "factor", "shape", "chunks", "shards", "batches", "regions")},
                     "seconds": round(seconds, 2)})
    publish_metadata(params, staging)
    checked = validate(params, staging)
    snapshot = publish_branch(params, staging, init["base"]) if staging else None
    create_table_artifact(rows, key="pyramid-levels", description=f"{params.source} -> {params.target}")
    logger.info("pyramid complete: %d levels, %d spot checks passed", len(rows), checked["spot_checks"])
    return {"levels": rows, "snapshot": snapshot, "spot_checks": checked["spot_checks"],
            "fingerprint": plan["fingerprint"]}
