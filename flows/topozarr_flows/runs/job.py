"""What every task of a build derives from the parameters: source, pyramid, tile plan, store.

Tasks receive only plain parameters; each process (thread-pool runner, Dask worker, a resumed run)
re-derives the same deterministic plan from them once per flow-run attempt, so nothing unpicklable
crosses task boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from topozarr_core import Pyramid, TilePlan, create_pyramid
from topozarr_core.store import icechunk_txn
from topozarr_core.store.icechunk_txn import IcechunkTarget
from topozarr_core.store.lease import lease_for
from topozarr_core.store.sources import open_source
from topozarr_core.store.targets import resolve_store
from topozarr_core.validate.spot_checks import SpotReferences
from topozarr_core.write.protocol import BuildWrite
from topozarr_flows.params import BuildParams
from topozarr_flows.runs.attempt_cache import AttemptCache


@dataclass
class Job:
    """What every task of a build run needs, derived once per process: its parameters, the pyramid and its tiles."""
    params: BuildParams
    pyramid: Pyramid
    plan: TilePlan
    #: the spot checks' references, computed from the source while the tiles write (flow process only)
    references: SpotReferences = field(default_factory=SpotReferences)

    @property
    def icechunk(self) -> IcechunkTarget | None:
        """The Icechunk target of the run, or None for plain Zarr."""
        return self.params.icechunk

    def zarr_store(self) -> Any:
        """The plain Zarr target's store."""
        return resolve_store(self.params.target)

    def check_target(self) -> None:
        """Read-only check that the target can take this pyramid in this mode (creates nothing)."""
        levels = self.plan.levels
        if self.icechunk is not None:
            icechunk_txn.check_target(self.icechunk, self.pyramid.spec, self.params.mode, levels)
        else:
            BuildWrite.check(self.pyramid, resolve_store(self.params.target, read_only=True), self.params.mode,
                             plan=self.plan, sources=(self.params.source,),
                             overwrite_foreign=self.params.overwrite_foreign)

    def initialise(self, store: Any) -> None:
        """Steps 1-2 of the write protocol on the writable target: check again, then prepare.

        :param store: the writable target store (an Icechunk staging session's store, or the Zarr target).
        """
        self.pyramid.initialise(store, mode=self.params.mode, levels=self.plan.levels,
                                overwrite_foreign=self.params.overwrite_foreign, sources=(self.params.source,))


@contextmanager
def target_lease(params: Any) -> Iterator[None]:
    """Hold the lease of a plain Zarr target for the whole flow run (Icechunk needs none). The
    owner is the flow run, so a retry of the same run reclaims the lease a killed attempt left.

    :param params: the flow's parameters.
    """
    if params.target_format == "icechunk":
        yield
        return
    from prefect.runtime import flow_run

    with lease_for(resolve_store(params.target), owner=f"flow-run/{flow_run.id}"):
        yield


_jobs: AttemptCache[Job] = AttemptCache()


def load_job(params: BuildParams) -> Job:
    """The :class:`Job` of ``params``, built once per process and flow-run attempt (the tasks of an
    attempt share it; see :mod:`topozarr_flows.runs.attempt_cache`).

    :param params: the flow's parameters.
    """
    return _jobs.get(params.model_dump_json(), lambda: _build(params))


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
    plan = pyramid.tile_plan(max_region_bytes=params.max_region_bytes, max_tile_bytes=params.max_tile_bytes,
                             max_tiles=params.max_task_runs, min_tiles=params.min_tiles)
    return Job(params, pyramid, plan)
