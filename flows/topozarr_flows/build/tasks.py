"""Prefect tasks of the build flow: thin wrappers that call topozarr_core. Each returns small values,
never arrays.

Caching and retries: :mod:`topozarr_flows.runs.task_options`. A tile task retries on its own: a tile
owns every shard it writes, so a transient fault costs that tile only.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from topozarr_core.publish.steps import published_attrs
from topozarr_core.store import icechunk_txn
from topozarr_core.store.errors import redact
from topozarr_core.validate.pyramid import LevelCheck, check_level, validate_pyramid
from topozarr_flows.params import BuildParams
from topozarr_flows.runs import level_checks
from topozarr_flows.runs.job import load_job
from topozarr_flows.runs.task_options import RETRYING, RUN_CACHED
from topozarr_flows.runs.tile_runs import planned_tiles
from topozarr_flows.runs.tile_writes import write_one_tile


@task(name="plan-pyramid", **RUN_CACHED)
def plan_pyramid(params: BuildParams, key: str = "plan") -> dict:
    """Open the source, plan the tiles, and check the target (read-only): every bad input fails here,
    before anything is written. A retry of the same flow run reuses this task's result, so it does not
    re-check a target the run itself has started writing.

    :param params: the flow's parameters.
    :param key: the last part of the task's run-scoped cache key (:func:`~topozarr_flows.runs.task_options.run_scoped_key`):
        one planning per flow run.
    :returns: the plan's fingerprint, the levels and the tiles (plain data).
    """
    job = load_job(params)
    job.check_target()
    plan = job.plan
    first = plan.variables[0]
    levels = [{
        "level": lvl,
        "factor": plan.factors[lvl],
        "variable": first.name,
        "dims": list(first.dims),
        "shape": list(first.shapes[lvl]),
        "chunks": list(first.encodings[lvl].chunks),
        "shards": list(first.encodings[lvl].shards or []),
    } for lvl in plan.levels]
    logger = get_run_logger()
    for row in plan.summary():
        logger.info("stage %d: %d tiles of %s, levels %s from %s (up to %.0f MB each)", row["stage"], row["tiles"],
                    ", ".join(row["variables"]), row["levels"], row["reads"], row["max_tile_MB"])
    logger.info("planned %d levels in %d tiles for %s", len(levels), len(plan.tiles), redact(params.source))
    return {"fingerprint": plan.fingerprint(), "levels": levels, **planned_tiles(plan)}


@task(name="initialise-target", **RUN_CACHED, **RETRYING)
def initialise_target(params: BuildParams, key: str = "init") -> dict:
    """Create arrays and coordinates; for Icechunk on a staging branch committed once.

    :param params: the flow's parameters.
    :param key: the last part of the task's run-scoped cache key: one initialisation per flow run.
    :returns: ``{"staging", "base"}``: the Icechunk staging branch and the user's branch head it started
        from (both None for plain Zarr).
    """
    job = load_job(params)
    target = job.icechunk
    if target is None:
        job.initialise(job.zarr_store())
        return {"staging": None, "base": None}
    from prefect.runtime import flow_run

    staging, base = icechunk_txn.begin(target, str(flow_run.id))
    session = icechunk_txn.writable(target, staging)
    job.initialise(session.store)
    session.commit("topozarr: initialise pyramid", allow_empty=True)
    return {"staging": staging, "base": base}


@task(name="write-tile", task_run_name="tile-{key}", **RUN_CACHED, **RETRYING)
def write_tile(params: BuildParams, key: str, fork: Any = None, fingerprint: str = "") -> dict:
    """Write every shard of one tile (:mod:`topozarr_core.plan.tiles`) while holding one slot of the write
    limit. With an Icechunk ``fork`` the tile writes into its own copy of it (as on a remote worker)
    and returns that copy for merging.

    :param params: the flow's parameters.
    :param key: the tile's key (``S0-00003``); also the last part of the task's run-scoped cache key, so a
        retried flow run rewrites only the tiles that did not complete.
    :param fork: the stage's Icechunk fork, or None (plain Zarr: the tile writes to the target).
    :param fingerprint: the plan's fingerprint from planning; a different plan now (the source changed
        since) refuses the tile. Empty: not checked.
    """
    job = load_job(params)
    return write_one_tile(job.plan, job.pyramid.ds, key, io=params.io, limit=params.concurrency_limit, fork=fork,
                          store=job.zarr_store, fingerprint=fingerprint)


@task(name="commit-stage", **RUN_CACHED, **RETRYING)
def commit_stage(params: BuildParams, staging: str, forks: list[Any], key: str, last: bool = False) -> dict:
    """Merge this stage's forks and commit them to the staging branch; unless ``last``, also fork that
    commit for the next stage's tiles (they read the levels it holds).

    :param params: the flow's parameters.
    :param staging: the Icechunk staging branch.
    :param forks: the stage's tiles' forks.
    :param key: the last part of the task's run-scoped cache key (``stage-<n>``), also in the commit message.
    :param last: the last stage (no fork for a next one).
    """
    target = load_job(params).icechunk
    snap = icechunk_txn.merge_and_commit(target, staging, forks, f"topozarr: {key}")
    get_run_logger().info("committed %s to %s as %s", key, staging, snap)
    return {"snapshot": snap, "fork": None if last else icechunk_txn.fork(target, staging)}


@task(name="publish-metadata", **RUN_CACHED, **RETRYING)
def publish_metadata(params: BuildParams, staging: str | None, key: str = "metadata") -> dict:
    """Write the root multiscales metadata (for Icechunk: commit it on the staging branch).

    :param params: the flow's parameters.
    :param staging: the Icechunk staging branch, or None (plain Zarr).
    :param key: the last part of the task's run-scoped cache key: one publication per flow run.
    :returns: the root attributes written.
    """
    job = load_job(params)
    if staging is None:
        return job.pyramid.publish(job.zarr_store())
    session = icechunk_txn.writable(job.icechunk, staging)
    attrs = job.pyramid.publish(session.store)
    session.commit("topozarr: publish metadata", allow_empty=True)
    return attrs


def _validation_store(job: Any, staging: str | None) -> Any:
    """What validation reads: the Zarr target, or the Icechunk staging branch's head (read-only)."""
    if staging is None:
        return job.zarr_store()
    return job.icechunk.open_repo(create=False).readonly_session(branch=staging).store


def check_written_level(params: BuildParams, staging: str | None, level: int) -> LevelCheck:
    """Check one complete level (run in the background by :mod:`topozarr_flows.runs.level_checks`, not a task).

    :param params: the flow's parameters.
    :param staging: the Icechunk staging branch, or None (plain Zarr).
    :param level: the level index.
    """
    job = load_job(params)
    return check_level(job.pyramid, _validation_store(job, staging), level, samples_per_level=params.validate_samples,
                       references=job.references)


def prepare_spot_references(params: BuildParams) -> int:
    """Compute the spot checks' references from the source while the tiles write (in the background, not a task).

    :param params: the flow's parameters.
    :returns: how many references are held.
    """
    job = load_job(params)
    return job.references.prepare(job.pyramid, samples_per_level=params.validate_samples)


@task(name="validate-pyramid", **RUN_CACHED)
def validate(params: BuildParams, staging: str | None, key: str = "validate") -> dict:
    """Shapes, chunking, convention schemas and value spot-checks against the source, before the root
    is published (the root attributes checked are those ``publish-metadata`` will write). Levels the
    flow already checked in the background once written (:mod:`topozarr_flows.runs.level_checks`) are not read again.

    :param params: the flow's parameters.
    :param staging: the Icechunk staging branch, or None (plain Zarr).
    :param key: the last part of the task's run-scoped cache key: one validation per flow run.
    """
    from prefect.runtime import flow_run

    job = load_job(params)
    report = validate_pyramid(job.pyramid, _validation_store(job, staging), samples_per_level=params.validate_samples,
                              root_attrs=published_attrs(job.pyramid.spec),
                              checked_levels=level_checks.take(str(flow_run.id)), references=job.references)
    report.raise_for_errors()
    return {"spot_checks": report.spot_checks, "levels": len(report.levels)}


