"""Per-process cache of what every task derives from the parameters: source, pyramid, plan, store.

Tasks receive only plain parameters; each process (thread-pool runner, Dask worker, a resumed run)
re-derives the same deterministic plan from them, so nothing unpicklable crosses task boundaries.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from topozarr_core import Pyramid, RegionPlan, create_pyramid, icechunk_txn
from topozarr_core.executor import shared_cache_for
from topozarr_core.level_cache import LevelCache
from topozarr_core.plan import cap_batches
from topozarr_core.icechunk_txn import IcechunkTarget
from topozarr_core.lease import lease_for
from topozarr_core.sources import open_source
from topozarr_core.target_contract import check_target
from topozarr_core.targets import resolve_store

from .batches import reads_only_cache, run_depends
from .params import BuildParams


@dataclass
class Job:
    params: BuildParams
    pyramid: Pyramid
    plan: RegionPlan
    #: batches the plan had before ``max_task_runs`` capped it
    asked_batches: int = 0
    #: (flow run id, the level cache its batch tasks share here), see :meth:`run_cache`
    _run_cache: tuple[str, LevelCache | None] | None = None

    @property
    def icechunk(self) -> IcechunkTarget | None:
        if self.params.target_format != "icechunk":
            return None
        return IcechunkTarget(self.params.target, self.params.branch)

    def zarr_store(self) -> Any:
        return resolve_store(self.params.target)

    def run_cache(self, run_id: str) -> LevelCache | None:
        """The level cache the batch tasks of flow run ``run_id`` share in this process (None when it
        might not fit in RAM). Only the latest run's is kept: a new run (or a rerun's fresh process)
        starts empty and its tasks compute whatever they find incomplete from the store."""
        with _lock:
            if self._run_cache is None or self._run_cache[0] != run_id:
                self._run_cache = (run_id, shared_cache_for(self.plan))
            return self._run_cache[1]

    def drop_run_cache(self) -> None:
        with _lock:
            self._run_cache = None

    def check_target(self) -> None:
        """Read-only check that the target can take this pyramid in this mode (creates nothing)."""
        levels = [lp.level for lp in self.plan.levels]
        if self.icechunk is not None:
            icechunk_txn.check_target(self.icechunk, self.pyramid.spec, self.params.mode, levels)
        else:
            check_target(resolve_store(self.params.target, read_only=True), self.pyramid.spec, self.params.mode,
                         levels, ds=self.pyramid.ds, sources=(self.params.source,),
                         overwrite_foreign=self.params.overwrite_foreign)

    def initialise(self, store: Any) -> None:
        levels = [lp.level for lp in self.plan.levels]
        self.pyramid.initialise(store, mode=self.params.mode, levels=levels,
                                overwrite_foreign=self.params.overwrite_foreign, sources=(self.params.source,))


@contextmanager
def target_lease(params: Any) -> Iterator[None]:
    """Hold the lease of a plain Zarr target for the whole flow run (Icechunk needs none). The
    owner is the flow run, so a retry of the same run reclaims the lease a killed attempt left."""
    if params.target_format == "icechunk":
        yield
        return
    from prefect.runtime import flow_run

    with lease_for(resolve_store(params.target), owner=f"flow-run/{flow_run.id}"):
        yield


_jobs: dict[str, Job] = {}
_lock = threading.Lock()


def load_job(params: BuildParams) -> Job:
    key = params.model_dump_json()
    with _lock:
        job = _jobs.get(key)
        if job is None:
            job = _jobs[key] = _build(params)
        return job


def attempt_depends(params: BuildParams, depends: list[list] | None, shared: bool) -> tuple[list[list] | None, bool]:
    """The batch edges this attempt of the flow run follows, and whether its batches write from the
    shared level cache only (:func:`flows.batches.run_depends`). On Icechunk only when then no batch
    reads the target (:func:`flows.batches.reads_only_cache`): its levels need not be committed in
    order; otherwise each level's writers read the commit of the level below."""
    if not shared:
        return depends, False
    from prefect.runtime import flow_run

    job = load_job(params)
    cache = job.run_cache(str(flow_run.id))
    edges, cache_only = run_depends(depends, job.plan, cache, flow_run.run_count)
    if params.target_format == "icechunk" and not (cache_only and reads_only_cache(job.plan, cache)):
        return depends, False
    return edges, cache_only


def drop_run_cache(params: BuildParams) -> None:
    """Free the level cache of the run that used ``params`` in this process (if it loaded a job)."""
    with _lock:
        job = _jobs.get(params.model_dump_json())
    if job is not None:
        job.drop_run_cache()


def _build(params: BuildParams) -> Job:
    ds = open_source(params.source, params.variables)
    pyramid = create_pyramid(
        ds,
        levels=params.levels,
        factors=params.factors,
        x_dim=params.x_dim,
        y_dim=params.y_dim,
        method=params.method,
        crs=params.crs,
        chunks_per_shard=params.chunks_per_shard,
    )
    n_levels = len(pyramid.factors)
    plan = pyramid.region_plan(
        max_region_bytes=params.max_region_bytes,
        regions_per_batch=params.regions_per_batch,
        target_batches_per_level=max(1, params.max_task_runs // n_levels),
        min_batch_bytes=params.min_batch_bytes,
    )
    asked = sum(len(lp.batches) for lp in plan.levels)
    plan = cap_batches(plan, params.max_task_runs)  # a hard cap, even with an explicit regions_per_batch
    return Job(params, pyramid, plan, asked_batches=asked)
