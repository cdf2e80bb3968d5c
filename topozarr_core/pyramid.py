"""``create_pyramid`` and the ``Pyramid`` plan object (the public API of the seed document)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import psutil
import xarray as xr

from .chunking import DEFAULT_TARGET_CHUNK_BYTES
from .edits import apply_encoding, encoding_key, planned_encoding
from .executor import auto_workers, run_plan
from .init_ahead import LevelInitialiser
from .layout import initialise_target, prepare_target, publish_root
from .lease import lease_for
from .level_cache import LevelCache
from .level_docs import LevelDocuments
from .levels import gridded_encoding, level_dataset, template_data
from .metadata import ZarrLayerVarConfig, dataset_attributes, multiscale_attributes, stored_attributes
from .partial import check_kept_levels, finish_partial
from .paths import MISSING_GROUP
from .plan import RegionPlan, build_region_plan
from .planning import DEFAULT_MIN_DIM, CoarseningMethod, PyramidSpec, build_spec
from .regions import WriteContext
from .root_doc import OPTIONS_KEY, creation_options
from .stats import RegionTimer
from .storable import short
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
    #: ``write(stats=True)``: per-level timings keyed "0", "1", ... (see :mod:`.stats`), else None
    stats: dict[str, dict[str, Any]] | None = None
    #: whether the root was published (False after a write that left levels unwritten)
    published: bool = True

    def __getitem__(self, level: str) -> dict[str, Any]:
        """``report["0"]["write_s"]``: topozarr's ``write(stats=True)`` returns the stats dict itself."""
        if self.stats is None:
            raise KeyError(f"{level!r}: no stats were collected; call write(..., stats=True)")
        return self.stats[level]

    def keys(self):
        return (self.stats or {}).keys()

    def items(self):
        return (self.stats or {}).items()


class Pyramid:
    """A planned pyramid: nothing is computed or written until ``write`` or ``as_datatree``."""

    def __init__(self, ds: xr.Dataset, spec: PyramidSpec):
        self.ds = ds
        self._planned = spec
        #: The chunk/shard plan, computed once and editable (as topozarr documents): every write path
        #: (``write``, ``as_datatree``, ``initialise``/``publish``, ``region_plan``, the flows) uses it.
        self.encoding: dict[str, dict[str, dict]] = planned_encoding(spec)
        #: The root metadata (multiscales, spatial:, proj:, zarr-layer), computed once and editable.
        self.attrs: dict[str, Any] = {**stored_attributes(dataset_attributes(spec.source_attrs)),  # conventions win
                                      **multiscale_attributes(spec.grid, spec.crs, list(spec.factors), spec.method,
                                                              spec.layer_hints)}
        self._applied: tuple[str, PyramidSpec] = (encoding_key(self.encoding), spec)

    @property
    def spec(self) -> PyramidSpec:
        """The plan with the current ``encoding`` applied; raises a one-line error on a bad edit."""
        key = encoding_key(self.encoding)
        if key != self._applied[0]:
            self._applied = (key, apply_encoding(self._planned, self.encoding))
        return self._applied[1]

    @property
    def source(self) -> xr.Dataset:
        """The level-0 dataset (topozarr's name for it)."""
        return self.ds

    @property
    def x_dim(self) -> str:
        return self._planned.x_dim

    @property
    def y_dim(self) -> str:
        return self._planned.y_dim

    @property
    def method(self) -> CoarseningMethod:
        return self._planned.method  # type: ignore[return-value]

    @property
    def fill_values(self) -> dict[str, float | int | None]:
        """Per gridded data variable, the ``_FillValue`` its arrays are written with (NaN for floats
        without one, None for integers without one)."""
        return {v.name: gridded_encoding(v, 0)["_FillValue"] for v in self._planned.variables if not v.is_coord}

    @property
    def level_templates(self) -> dict[int, xr.Dataset]:
        """Level -> lazy Dataset of that level as written: shapes, dtypes, coordinates, attributes, and
        dask placeholders chunked by the write unit (nothing is computed)."""
        spec = self.spec
        return {lvl: level_dataset(self.ds, spec, lvl, template_data)[0] for lvl in range(self.levels)}

    # -- description ---------------------------------------------------------------------------
    @property
    def factors(self) -> list[int]:
        return list(self._planned.factors)

    @property
    def levels(self) -> int:
        return len(self._planned.factors)

    @property
    def level_names(self) -> list[str]:
        return [str(i) for i in range(self.levels)]

    @property
    def crs(self):
        return self._planned.crs

    def root_attributes(self) -> dict[str, Any]:
        """The published root: ``attrs`` (as edited) plus the build options ``update_pyramid`` reads."""
        if not isinstance(self.attrs, dict):
            raise TypeError(f"pyramid.attrs must be a dict, got {type(self.attrs).__name__}")
        for key, value in self.attrs.items():
            try:
                json.dumps({key: value})
            except (TypeError, ValueError):
                raise ValueError(f"pyramid.attrs[{short(key)}] cannot be stored in the root zarr.json (not JSON): "
                                 f"{short(value)}") from None
        return {**self.attrs, OPTIONS_KEY: creation_options(self.spec)}

    def level_shape(self, level: int) -> tuple[int, int]:
        return self._planned.grid.shape(self._planned.factors[level])

    def region_plan(
        self,
        levels: list[int] | None = None,
        max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
        regions_per_batch: int | None = None,
        target_batches_per_level: int = 32,
        min_batch_bytes: int = 0,
    ) -> RegionPlan:
        """The plain-data plan every executor runs (batches matter to executors that run each as a task)."""
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
            min_batch_bytes=min_batch_bytes,
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
        self.root_attributes()  # the edited attrs are checked now, not at publish time
        zstore = resolve_store(store)
        initialise_target(zstore, self.ds, self.spec, mode, self._check_levels(levels),
                          overwrite_foreign=overwrite_foreign, sources=sources)
        return zstore

    def publish(self, store: Any) -> dict:
        """Write the root multiscales metadata, ``attrs`` as edited (last step of a write)."""
        return publish_root(resolve_store(store), self.root_attributes())

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
        stats: bool = False,
    ) -> WriteReport:
        """Compute and write the levels through a local thread pool.

        Every check runs before the target changes: the edited ``encoding`` and ``attrs``, the target
        contract (:mod:`.target_contract`; ``overwrite_foreign=True`` lets ``mode="w"`` replace data
        this project did not write), the first level staged in memory, the lease of plain Zarr
        targets (:mod:`.lease`). Then the root is unpublished, replaced nodes are deleted, levels
        written, and the root published last.

        ``levels=[0, ...]`` with ``mode="w"`` into a missing or empty target creates the whole layout,
        writes those levels and leaves the root unpublished (:mod:`.partial`); ``mode="a"`` writes the
        rest and publishes once every level holds data. ``stats=True`` adds per-level timings
        (:mod:`.stats`) to the report, which ``report["0"]`` indexes as topozarr's returned dict."""
        from .io_select import open_array_for, check_io

        spec = self.spec  # applies (and checks) the edited encoding first
        root = self.root_attributes()
        plan = self.region_plan(levels=levels, max_region_bytes=max_region_bytes)
        zstore = resolve_store(store)
        check_io(io, zstore)
        workers = auto_workers(plan, max_workers)
        keep = self._keep_in_memory(plan, keep_levels_in_memory)
        planned = [lp.level for lp in plan.levels]
        every = list(range(self.levels))
        new_partial = mode in ("w", "w-") and planned != every
        state = check_target(zstore, spec, mode, every if new_partial else planned, ds=self.ds,
                             overwrite_foreign=overwrite_foreign)
        if new_partial and state.kind != "empty":
            raise ValueError(f"levels={planned} with mode='w' would replace what the target holds ({state.what}) "
                             "and leave the other levels missing; pass mode='a' to rewrite some levels of a "
                             "pyramid of ours, or write every level")
        before = check_kept_levels(state.attrs, planned, self.levels) if mode == "a" else None
        docs = LevelDocuments(self.ds, spec)
        docs.staged(planned[0])
        timer = RegionTimer() if stats else None
        with lease_for(zstore) as lease:
            prepare_target(zstore, spec, mode, planned, state)
            ctx = WriteContext(
                plan=plan,
                source=self.ds,
                store=zstore,
                cache=LevelCache.for_plan(plan) if keep else None,
                open_array=open_array_for(io, zstore),
                timer=timer,
            )
            init = LevelInitialiser(zstore, self.ds, spec, every if new_partial else planned, docs)
            init.ready(planned[0])
            written = run_plan(ctx, workers, progress=progress, level_ready=init.ready, idle_step=init.step)
            for lvl in every if new_partial else ():
                init.ready(lvl)  # the whole layout exists, the levels not written stay empty
            if lease is not None:
                lease.check()  # never publish over a writer that took a lease we failed to renew
            if new_partial:
                has_data = set(planned)
            elif before is not None:  # mode="a" onto a partial write
                has_data = set(planned) | before
            else:
                has_data = set(every)
            complete = has_data >= set(every)
            if complete:
                publish_root(zstore, root)  # the scratch missing counts go first
            else:
                owned = {str(lvl) for lvl in every} | {MISSING_GROUP}
                finish_partial(zstore, root, has_data, owned)
        return WriteReport(
            levels=planned,
            regions=sum(lp.n_regions for lp in plan.levels),
            bytes_written=written,
            workers=workers,
            kept_in_memory=keep,
            io=io,
            stats=None if timer is None else timer.as_dict(workers, _region_shapes(plan)),
            published=complete,
        )

    def _keep_in_memory(self, plan: RegionPlan, requested: bool | None) -> bool:
        if requested is not None:
            return bool(requested)
        need = LevelCache.nbytes_needed(plan)
        return need <= psutil.virtual_memory().available * KEEP_IN_MEMORY_RAM_FRACTION

    # -- lazy / Dask path ----------------------------------------------------------------------
    def as_datatree(self) -> xr.DataTree:
        """A lazy DataTree, each level ``xarray.coarsen`` of the source; write with ``encoding=pyramid.encoding``.

        Each level's dask chunks are its shards (the unit ``encoding`` writes), so ``DataTree.to_zarr``
        accepts them and no two dask tasks write into one shard, whatever the source's own chunks. A
        lazily opened (not dask) source is chunked by level-0 shards: each task reads one shard's window.
        """
        import dask.array as dsa

        from .lazy import coarsened

        def write_unit(v, level: int) -> tuple[int, ...]:
            enc = v.encodings[level]
            return tuple(enc.shards if enc.shards is not None else enc.chunks)

        src = self.ds.copy()
        for v in self.spec.variables:
            if src[v.name].chunks is None:
                src[v.name] = src[v.name].chunk(dict(zip(v.dims, write_unit(v, 0))))
        # the root carries the ownership marker (``topozarr:options``), as ``write`` publishes it: a later
        # ``mode="w"`` rebuild or ``update_pyramid`` knows the tree as a pyramid of ours
        tree: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=self.root_attributes())}
        for lvl in range(self.levels):
            level_ds, _ = level_dataset(self.ds, self.spec, lvl, lambda v, L: dsa.asarray(
                coarsened(src, self.spec, v, L)).rechunk(write_unit(v, L)))
            tree[f"/{lvl}"] = level_ds
        return xr.DataTree.from_dict(tree)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{i}:{self.level_shape(i)[0]}x{self.level_shape(i)[1]}" for i in range(self.levels))
        return f"<Pyramid factors={self.factors} method={self.method!r} levels=[{shapes}]>"


def _region_shapes(plan: RegionPlan) -> dict[int, dict[str, tuple[int, ...]]]:
    """Per level, the shape of each variable's first region (the unit its regions tile the level by)."""
    out: dict[int, dict[str, tuple[int, ...]]] = {}
    for lp in plan.levels:
        shapes = out.setdefault(lp.level, {})
        for batch in lp.batches:
            for region in batch.regions:
                shapes.setdefault(region.var, region.shape())
    return out


def create_pyramid(
    ds: xr.Dataset,
    levels: int | Literal["auto"] | None = None,
    factors: list[int] | None = None,
    *,
    x_dim: str = "x",
    y_dim: str = "y",
    method: CoarseningMethod = "mean",
    crs: Any = None,
    layer_hints: dict[str, ZarrLayerVarConfig] | None = None,
    chunks_per_shard: int | None = 4,
    target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES,
    min_dim: int = DEFAULT_MIN_DIM,
    pack: bool = True,
) -> Pyramid:
    """Plan a multiscale pyramid; raises ValueError/TypeError on bad input before anything is written.

    ``levels="auto"`` adds levels while the smaller spatial side stays at least ``min_dim`` pixels
    (``min(nx, ny) // 2**levels >= min_dim``). ``pack=False`` stores CF-packed integer variables
    (``scale_factor``/``add_offset`` in their encoding) as the decoded floats instead of packed
    (see :mod:`.packing`)."""
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
        min_dim=min_dim,
        pack=pack,
    )
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "data")
    return Pyramid(ds, spec)


__all__ = ["create_pyramid", "Pyramid", "WriteReport"]
