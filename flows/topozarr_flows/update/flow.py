"""The ``update-pyramid`` flow: append new entries (e.g. nightly time steps) to an existing pyramid.

Orchestration only; every decision lives in :mod:`topozarr_core.update.pyramid_update`. The steps mirror the
build flow: plan (all refusals happen here, before anything is written), then, holding the plain
Zarr target's lease for the rest of the run (:func:`topozarr_flows.runs.job.target_lease`): prepare (the root
becomes unpublished first), tiles (every level over the new entries, cut along the append dim) as retryable tasks under the same global
concurrency limit, finish (coordinates and carried variables along the append dim), validate
(against the root about to be published), publish the root metadata, and for Icechunk one
compare-and-swap publish of the user's branch. A failed validation leaves the root unpublished
(``topozarr:status = "updating"``) and the run Failed; the next update resumes it.

Icechunk: the update is staged on a private branch like a build, but every step after the first
*amends* the staging commit, so the user's branch gains exactly one snapshot per update. A run
with nothing to append writes and commits nothing.

Scheduled runs: the ``update-pyramid-nightly`` deployment (``deployments/prefect.yaml``) runs this
flow; at most one run at a time (a second update of the same plain Zarr pyramid is refused with
``TargetBusy`` by the lease).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from topozarr_core.plan.tiles import TilePlan
from topozarr_core.publish.steps import published_attrs
from topozarr_core.store import icechunk_txn
from topozarr_core.store.errors import redact
from topozarr_core.store.sources import open_source
from topozarr_core.store.targets import resolve_store
from topozarr_core.update.pyramid_update import PyramidUpdate, UpdateInfo, plan_update
from topozarr_core.validate.pyramid import validate_pyramid
from topozarr_flows.params import UpdateParams
from topozarr_flows.prefect_api.recovery import before_attempt, on_crashed
from topozarr_flows.runs.artifacts import quicklook_artifact
from topozarr_flows.runs.attempt_cache import AttemptCache
from topozarr_flows.runs.icechunk_stages import fork_stage, publish_branch
from topozarr_flows.runs.job import target_lease
from topozarr_flows.runs.task_options import RETRYING, RUN_CACHED, ensure_limit_task
from topozarr_flows.runs.tile_runs import TilesFailed, planned_tiles, run_tiles  # noqa: F401  (TilesFailed: what a failed run raises)
from topozarr_flows.runs.tile_writes import write_one_tile


class BranchMoved(RuntimeError):
    """The Icechunk branch moved between planning and staging; nothing was written. Run again."""


# -- per-process job cache ------------------------------------------------------------------------


@dataclass
class UpdateJob:
    """What every task of an update run needs, derived once per process: its parameters, the planned update and its tiles."""
    params: UpdateParams
    update: PyramidUpdate
    plan: TilePlan


_jobs: AttemptCache[UpdateJob] = AttemptCache()


def load_update_job(params: UpdateParams, info: dict) -> UpdateJob:
    """The source, the planned update and its tile plan, re-derived deterministically once per process
    and flow-run attempt (:mod:`topozarr_flows.runs.attempt_cache`).

    :param params: the flow's parameters.
    :param info: the planned update's info (:meth:`~topozarr_core.update.pyramid_update.UpdateInfo.to_dict`).
    """
    def build() -> UpdateJob:
        ds = open_source(params.source, params.variables)
        update = PyramidUpdate.from_info(ds, UpdateInfo.from_dict(info))
        return UpdateJob(params, update, _tile_plan(params, update))

    return _jobs.get(params.model_dump_json() + json.dumps(info, sort_keys=True), build)


def _tile_plan(params: UpdateParams, update: PyramidUpdate) -> TilePlan:
    return update.tile_plan(max_region_bytes=params.max_region_bytes, max_tile_bytes=params.max_tile_bytes,
                            max_tiles=params.max_task_runs)


def _zarr_store(params: UpdateParams) -> Any:
    return resolve_store(params.target)


# -- tasks ----------------------------------------------------------------------------------------




@task(name="plan-update", **RUN_CACHED)
def plan_update_task(params: UpdateParams, key: str = "plan") -> dict:
    """Open source and pyramid, check the source extends it, plan; every refusal happens here.

    :param params: the flow's parameters.
    :param key: the last part of the task's run-scoped cache key
        (:func:`~topozarr_flows.runs.task_options.run_scoped_key`): one planning per flow run.
    """
    ds = open_source(params.source, params.variables)
    target = params.icechunk
    snapshot = None
    if target is None:
        store = _zarr_store(params)
    else:
        repo = target.open_repo(create=False)
        session = repo.readonly_session(branch=params.branch)
        store, snapshot = session.store, session.snapshot_id
    update = plan_update(ds, store, params.append_dim, crs=params.crs, verify_samples=params.verify_samples)
    info = update.info
    plan = _tile_plan(params, update)
    regions = plan.region_plan(plan.tiles)
    levels = [{"level": lp.level, "regions": lp.n_regions} for lp in regions.levels]
    get_run_logger().info(
        "planned update of %s along %r: %d -> %d entries%s, %d regions in %d tiles%s; history: %d level-0 "
        "chunks equal the source's", redact(params.target), info.append_dim, info.old_length, info.new_length,
        " (resuming an interrupted update)" if info.resumed else "", sum(lv["regions"] for lv in levels),
        len(plan.tiles),
        f", relaying out {[f'L{lvl}/{v}' for lvl, v in info.relayout]}" if info.relayout else "",
        info.verified_chunks)
    return {"info": info.to_dict(), "levels": levels, "changed": info.changed, "snapshot": snapshot,
            "fingerprint": plan.fingerprint(), **planned_tiles(plan)}


@task(name="prepare-update", **RUN_CACHED, **RETRYING)
def prepare_update(params: UpdateParams, info: dict, planned_snapshot: str | None, key: str = "prepare") -> dict:
    """Unpublish the root, grow / relay out the arrays; for Icechunk on a staging branch, as its one commit.

    :param params: the flow's parameters.
    :param info: the planned update's info.
    :param planned_snapshot: the Icechunk branch head that planning read (None for plain Zarr); a branch
        that moved since is refused.
    :param key: the last part of the task's run-scoped cache key: one preparation per flow run.
    :returns: ``{"staging", "base"}`` (both None for plain Zarr).
    """
    job = load_update_job(params, info)
    target = params.icechunk
    if target is None:
        job.update.prepare(_zarr_store(params))
        return {"staging": None, "base": None}
    from prefect.runtime import flow_run

    staging, base = icechunk_txn.begin(target, str(flow_run.id))
    if base != planned_snapshot:
        raise BranchMoved(f"branch {params.branch!r} moved from {planned_snapshot} to {base} after planning; "
                          "nothing was written, run the update again")
    session = icechunk_txn.writable(target, staging)
    if session.snapshot_id != base:  # a retried run: the staging commit exists already
        return {"staging": staging, "base": base}
    job.update.prepare(session.store)
    session.commit(_message(job.update.info), allow_empty=True)
    return {"staging": staging, "base": base}


@task(name="write-update-tile", task_run_name="tile-{key}", **RUN_CACHED, **RETRYING)
def write_update_tile(params: UpdateParams, info: dict, key: str, fork: Any = None, fingerprint: str = "") -> dict:
    """Write one tile of the update while holding one slot of the global limit.

    :param params: the flow's parameters.
    :param info: the planned update's info.
    :param key: the tile's key; also the last part of the task's run-scoped cache key, so a retried flow
        run rewrites only the tiles that did not complete.
    :param fork: the stage's Icechunk fork, or None (plain Zarr).
    :param fingerprint: the tile plan's fingerprint from planning; a different plan now (the source
        changed since) refuses the tile. Empty: not checked.
    """
    job = load_update_job(params, info)
    return write_one_tile(job.plan, job.update.pyramid.ds, key, io=params.io, limit=params.concurrency_limit,
                          fork=fork, store=lambda: _zarr_store(params), fingerprint=fingerprint)


@task(name="amend-stage", **RUN_CACHED, **RETRYING)
def amend_stage(params: UpdateParams, info: dict, staging: str, forks: list[Any], key: str, last: bool = False) -> dict:
    """Merge this stage's forks into the staging branch, amending its single update commit; unless
    ``last``, also fork the result for the next stage's tiles.

    :param params: the flow's parameters.
    :param info: the planned update's info (the commit message).
    :param staging: the Icechunk staging branch.
    :param forks: the stage's tiles' forks.
    :param key: the last part of the task's run-scoped cache key (``stage-<n>``).
    :param last: the last stage (no fork for a next one).
    """
    session = icechunk_txn.writable(params.icechunk, staging)
    if forks:
        session.merge(*forks)
    snap = session.amend(_message(UpdateInfo.from_dict(info)), allow_empty=True)
    return {"snapshot": snap, "fork": None if last else icechunk_txn.fork(params.icechunk, staging)}


@task(name="finish-update", **RUN_CACHED, **RETRYING)
def finish_update(params: UpdateParams, info: dict, staging: str | None, key: str = "finish") -> dict:
    """Replace the coordinates / carried variables along the append dim (Icechunk: amend the staging
    commit). The root stays unpublished.

    :param params: the flow's parameters.
    :param info: the planned update's info.
    :param staging: the Icechunk staging branch, or None (plain Zarr).
    :param key: the last part of the task's run-scoped cache key: once per flow run.
    """
    job = load_update_job(params, info)
    return _on_target(params, staging, job, job.update.finish)


@task(name="validate-pyramid", **RUN_CACHED)
def validate_update(params: UpdateParams, info: dict, staging: str | None, key: str = "validate") -> dict:
    """Layout, convention schemas and value spot checks of the updated pyramid against the source,
    before its root is published: the root checked is the one ``publish-update-metadata`` will write.

    :param params: the flow's parameters.
    :param info: the planned update's info.
    :param staging: the Icechunk staging branch, or None (plain Zarr).
    :param key: the last part of the task's run-scoped cache key: once per flow run.
    """
    job = load_update_job(params, info)
    if staging is None:
        store = _zarr_store(params)
    else:
        store = params.icechunk.open_repo(create=False).readonly_session(branch=staging).store
    report = validate_pyramid(job.update.pyramid, store, samples_per_level=params.validate_samples,
                              root_attrs=published_attrs(job.update.spec))
    report.raise_for_errors()
    return {"spot_checks": report.spot_checks, "levels": len(report.levels)}


@task(name="publish-update-metadata", **RUN_CACHED, **RETRYING)
def publish_update_metadata(params: UpdateParams, info: dict, staging: str | None, key: str = "metadata") -> dict:
    """Write the published root (the last write to the pyramid; Icechunk: amend the staging commit).

    :param params: the flow's parameters.
    :param info: the planned update's info.
    :param staging: the Icechunk staging branch, or None (plain Zarr).
    :param key: the last part of the task's run-scoped cache key: once per flow run.
    """
    job = load_update_job(params, info)
    return _on_target(params, staging, job, job.update.publish)


def _on_target(params: UpdateParams, staging: str | None, job: UpdateJob, step: Any) -> Any:
    """Run ``step(store)`` on the plain Zarr target, or on the staging branch amending its one commit."""
    if staging is None:
        return step(_zarr_store(params))
    session = icechunk_txn.writable(params.icechunk, staging)
    out = step(session.store)
    session.amend(_message(job.update.info), allow_empty=True)
    return out


def _message(info: UpdateInfo) -> str:
    return f"topozarr: update {info.append_dim} {info.old_length} -> {info.new_length}"


# -- the flow -------------------------------------------------------------------------------------


@flow(name="update-pyramid", persist_result=True, on_crashed=[on_crashed])
def update_pyramid(params: UpdateParams) -> dict[str, Any]:
    """Append the new ``params.append_dim`` entries of ``params.source`` to the pyramid ``params.target``.

    Writes only what changes (the new entries' regions at every level, and arrays whose layout must
    change); running it again with the same source writes nothing. The result equals a build from
    the grown source.

    :param params: the source, the pyramid and how to run (validated before any task runs); the
        layout options come from the pyramid itself.
    :returns: a summary: the append dim, old and new lengths, levels and regions written.
    """
    logger = get_run_logger()
    before_attempt(params.concurrency_limit)
    planned = plan_update_task(params)
    info = planned["info"]
    summary = {"append_dim": info["append_dim"], "old_length": info["old_length"],
               "new_length": info["new_length"], "relayout": info["relayout"]}
    if not planned["changed"]:
        logger.info("nothing to update: the pyramid already holds all %d %r entries of the source",
                    info["new_length"], info["append_dim"])
        return {**summary, "changed": False, "regions": 0, "levels": [], "snapshot": planned["snapshot"],
                "spot_checks": 0}
    slots = ensure_limit_task(params.concurrency_limit, params.default_concurrency)
    with target_lease(params):
        prep = prepare_update(params, info, planned["snapshot"])
        staging = prep["staging"]
        rows = run_tiles(
            planned,
            lambda key, fork: write_update_tile.submit(params, info, key, fork, fingerprint=planned["fingerprint"]),
            fork=(lambda stage: fork_stage(params, staging, key=f"S{stage}")) if staging else None,
            commit=(lambda stage, forks, last: amend_stage(params, info, staging, forks, key=f"stage-{stage}",
                                                           last=last)["fork"]) if staging else None,
            description="update tiles written",
            in_flight=slots,
        )
        finish_update(params, info, staging)
        checked = validate_update(params, info, staging)
        publish_update_metadata(params, info, staging)
        snapshot = publish_branch(params, staging, prep["base"]) if staging else None
        quicklook_artifact(params)
    create_table_artifact(rows, key="pyramid-update", description=redact(f"{params.source} -> {params.target}"))
    logger.info("update complete: %r %d -> %d, %d regions", info["append_dim"], info["old_length"],
                info["new_length"], sum(r["regions"] for r in rows))
    return {**summary, "changed": True, "regions": sum(r["regions"] for r in rows), "levels": rows,
            "snapshot": snapshot, "spot_checks": checked["spot_checks"], "fingerprint": planned["fingerprint"],
            "verified_chunks": info.get("verified_chunks", 0), "resumed": info.get("resumed", False)}
