"""``create_pyramid`` and the ``Pyramid`` plan object (the public API of the seed document)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psutil
import xarray as xr

from .chunking import DEFAULT_TARGET_CHUNK_BYTES
from .executor import auto_workers, run_plan
from .init_ahead import LevelInitialiser
from .layout import initialise_target, prepare_target, publish
from .lease import lease_for
from .level_cache import LevelCache
from .level_docs import LevelDocuments
from .levels import level_dataset
from .metadata import ZarrLayerVarConfig, multiscale_attributes
from .plan import RegionPlan, build_region_plan
from .planning import PyramidSpec, build_spec
from .regions import WriteContext
from .target_contract import check_target
from .targets import resolve_store

DEFAULT_MAX_REGION_BYTES = 256_000_000
#: Auto keep_levels_in_memory when the level cache (LevelCache.nbytes_needed: a few blocks per
#: precomputed level, unaligned levels whole) needs less than this share of available RAM.
KEEP_IN_MEMORY_RAM_FRACTION = 0.25

IO = Literal["python", "rust"]


@dataclass
class WriteReport:
    """Summary of a completed ``Pyramid.write``."""

    levels: list[int]
    regions: int
    bytes_written: int
    workers: int
    kept_in_memory: bool
    io: str


class Pyramid:
    """A planned pyramid: nothing is computed or written until ``write`` or ``as_datatree``."""

    def __init__(self, ds: xr.Dataset, spec: PyramidSpec):
        self.ds = ds
        self.spec = spec

    # -- description ---------------------------------------------------------------------------
    @property
    def factors(self) -> list[int]:
        return list(self.spec.factors)

    @property
    def levels(self) -> int:
        return len(self.spec.factors)

    @property
    def level_names(self) -> list[str]:
        return [str(i) for i in range(self.levels)]

    @property
    def crs(self):
        return self.spec.crs

    @property
    def encoding(self) -> dict[str, dict[str, dict]]:
        """Per level group ("/0", "/1", ...), per variable chunks and shards, for DataTree.to_zarr."""
        out: dict[str, dict[str, dict]] = {}
        for lvl in range(self.levels):
            out[f"/{lvl}"] = {v.name: v.encodings[lvl].to_xarray() for v in self.spec.variables}
        return out

    @property
    def attrs(self) -> dict[str, Any]:
        """Root metadata (multiscales, spatial:, proj:, zarr-layer)."""
        s = self.spec
        return multiscale_attributes(s.grid, s.crs, list(s.factors), s.method, s.layer_hints)

    def level_shape(self, level: int) -> tuple[int, int]:
        return self.spec.grid.shape(self.spec.factors[level])

    def region_plan(
        self,
        levels: list[int] | None = None,
        max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
        regions_per_batch: int | None = None,
        target_batches_per_level: int = 32,
    ) -> RegionPlan:
        """The plain-data plan every executor runs."""
        if isinstance(max_region_bytes, bool) or not isinstance(max_region_bytes, int) or max_region_bytes <= 0:
            raise ValueError(f"max_region_bytes must be a positive int, got {max_region_bytes!r}")
        return build_region_plan(
            x_dim=self.spec.x_dim,
            y_dim=self.spec.y_dim,
            factors=list(self.spec.factors),
            variables=list(self.spec.variables),
            source_chunks=self.spec.source_chunks,
            max_region_bytes=max_region_bytes,
            levels=self._check_levels(levels),
            regions_per_batch=regions_per_batch,
            target_batches_per_level=target_batches_per_level,
        )

    def _check_levels(self, levels: list[int] | None) -> list[int]:
        if levels is None:
            return list(range(self.levels))
        lv = sorted(set(int(x) for x in levels))
        if not lv or lv[0] < 0 or lv[-1] >= self.levels:
            raise ValueError(f"levels must be a non-empty subset of 0..{self.levels - 1}, got {levels!r}")
        if lv != list(range(lv[0], lv[-1] + 1)):
            raise ValueError(f"levels must be contiguous (each level is built from the one before), got {levels!r}")
        return lv

    # -- writing -------------------------------------------------------------------------------
    def initialise(self, store: Any, mode: str = "w", levels: list[int] | None = None,
                   overwrite_foreign: bool = False, sources: tuple[str, ...] = ()) -> Any:
        """Check the target, unpublish it and create groups/arrays/coordinates (step 1 of a write).
        Returns the store. The caller holds the target's lease (:mod:`.lease`) where it needs one."""
        zstore = resolve_store(store)
        initialise_target(zstore, self.ds, self.spec, mode, self._check_levels(levels),
                          overwrite_foreign=overwrite_foreign, sources=sources)
        return zstore

    def publish(self, store: Any) -> dict:
        """Write the root multiscales metadata (last step of a write)."""
        return publish(resolve_store(store), self.spec)

    def write(
        self,
        store: Any,
        mode: str = "w",
        max_workers: int | None = None,
        max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
        progress: bool = False,
        keep_levels_in_memory: bool | None = None,
        levels: list[int] | None = None,
        io: IO = "python",
        overwrite_foreign: bool = False,
    ) -> WriteReport:
        """Compute and write the levels through a local thread pool.

        Every check runs before the target changes: the target contract (:mod:`.target_contract`;
        ``overwrite_foreign=True`` lets ``mode="w"`` replace data this project did not write), the
        first level staged in memory, the lease of plain Zarr targets (:mod:`.lease`). Then the root
        is unpublished, replaced nodes are deleted, levels written, and the root published last."""
        from .io_select import open_array_for, check_io

        plan = self.region_plan(levels=levels, max_region_bytes=max_region_bytes)
        zstore = resolve_store(store)
        check_io(io, zstore)
        workers = auto_workers(plan, max_workers)
        keep = self._keep_in_memory(plan, keep_levels_in_memory)
        planned = [lp.level for lp in plan.levels]
        state = check_target(zstore, self.spec, mode, planned, ds=self.ds, overwrite_foreign=overwrite_foreign)
        docs = LevelDocuments(self.ds, self.spec)
        docs.staged(planned[0])
        with lease_for(zstore) as lease:
            prepare_target(zstore, self.spec, mode, planned, state)
            ctx = WriteContext(
                plan=plan,
                source=self.ds,
                store=zstore,
                cache=LevelCache.for_plan(plan) if keep else None,
                open_array=open_array_for(io, zstore),
            )
            init = LevelInitialiser(zstore, self.ds, self.spec, planned, docs)
            init.ready(planned[0])
            written = run_plan(ctx, workers, progress=progress, level_ready=init.ready, idle_step=init.step)
            if lease is not None:
                lease.check()  # never publish over a writer that took a lease we failed to renew
            publish(zstore, self.spec)
        return WriteReport(
            levels=[lp.level for lp in plan.levels],
            regions=sum(lp.n_regions for lp in plan.levels),
            bytes_written=written,
            workers=workers,
            kept_in_memory=keep,
            io=io,
        )

    def _keep_in_memory(self, plan: RegionPlan, requested: bool | None) -> bool:
        if requested is not None:
            return bool(requested)
        need = LevelCache.nbytes_needed(plan)
        return need <= psutil.virtual_memory().available * KEEP_IN_MEMORY_RAM_FRACTION

    # -- lazy / Dask path ----------------------------------------------------------------------
    def as_datatree(self) -> xr.DataTree:
        """A lazy DataTree, each level ``xarray.coarsen`` of the source; write with ``encoding=pyramid.encoding``."""
        from .lazy import coarsened

        src = self.ds if any(self.ds[v.name].chunks for v in self.spec.variables) else self.ds.chunk()
        tree: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=self.attrs)}
        for lvl in range(self.levels):
            level_ds, _ = level_dataset(self.ds, self.spec, lvl, lambda v, L: coarsened(src, self.spec, v, L))
            tree[f"/{lvl}"] = level_ds
        return xr.DataTree.from_dict(tree)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{i}:{self.level_shape(i)[0]}x{self.level_shape(i)[1]}" for i in range(self.levels))
        return f"<Pyramid factors={self.factors} method={self.spec.method!r} levels=[{shapes}]>"


def create_pyramid(
    ds: xr.Dataset,
    levels: int | None = None,
    factors: list[int] | None = None,
    *,
    x_dim: str = "x",
    y_dim: str = "y",
    method: str = "mean",
    crs: Any = None,
    layer_hints: dict[str, ZarrLayerVarConfig] | None = None,
    chunks_per_shard: int | None = 4,
    target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES,
) -> Pyramid:
    """Plan a multiscale pyramid; raises ValueError/TypeError on bad input before anything is written."""
    spec = build_spec(
        ds,
        levels=levels,
        factors=factors,
        x_dim=x_dim,
        y_dim=y_dim,
        method=method,
        crs=crs,
        layer_hints=layer_hints,
        chunks_per_shard=chunks_per_shard,
        target_chunk_bytes=target_chunk_bytes,
    )
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "data")
    return Pyramid(ds, spec)


__all__ = ["create_pyramid", "Pyramid", "WriteReport"]
