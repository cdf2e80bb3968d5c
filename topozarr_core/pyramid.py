"""``create_pyramid`` and the ``Pyramid`` plan object (the public API of the seed document)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

import psutil
import xarray as xr

from topozarr_core.layout.conventions import (
    ZarrLayerVarConfig,
    dataset_attributes,
    multiscale_attributes,
    rename_resampling,
    stored_attributes,
)
from topozarr_core.layout.level_dataset import gridded_encoding, level_dataset, template_data
from topozarr_core.plan.regions import RegionPlan, build_region_plan
from topozarr_core.plan.tiles import DEFAULT_TILE_BYTES, TilePlan, build_tile_plan
from topozarr_core.publish.root_doc import OPTIONS_KEY, creation_options
from topozarr_core.publish.steps import publish_root
from topozarr_core.spec.chunking import DEFAULT_TARGET_CHUNK_BYTES
from topozarr_core.spec.encoding_edits import (
    apply_encoding,
    encoding_key,
    planned_encoding,
    replan_fixed_keys,
)
from topozarr_core.spec.pyramid_spec import DEFAULT_MIN_DIM, CoarseningMethod, PyramidSpec, build_spec
from topozarr_core.store.targets import resolve_store
from topozarr_core.text import short
from topozarr_core.write.executor import auto_workers
from topozarr_core.write.level_cache import LevelCache
from topozarr_core.write.report import WriteReport
from topozarr_core.write.stats import RegionTimer

#: topozarr's default: 256 MiB of level-0 input per region
DEFAULT_MAX_REGION_BYTES = 256 * 1024 * 1024
#: Auto keep_levels_in_memory when the level cache (LevelCache.nbytes_needed: a few blocks per
#: precomputed level, unaligned levels whole) needs less than this share of available RAM.
KEEP_IN_MEMORY_RAM_FRACTION = 0.25
#: ``as_datatree``'s dask blocks: the tiles of ``tile_plan(max_tile_bytes=DASK_TILE_BYTES, min_tiles=DASK_MIN_TILES)``
#: (a few tasks per tile, not per shard: a 1 GB pyramid was 5,000 tasks of 1 MiB, and a task costs the
#: Dask scheduler about a millisecond); 128 MiB is Dask's own default chunk size
DASK_TILE_BYTES = 128 * 2**20
DASK_MIN_TILES = 4

IO = Literal["auto", "python", "rust"]


class PyramidTree(xr.DataTree):
    """The ``xr.DataTree`` of :meth:`Pyramid.as_datatree`: its ``to_zarr`` encodes a local target with
    zarrs, as ``Pyramid.write(io="auto")`` does (same documents and values; zarr-python elsewhere)."""

    def to_zarr(self, store: Any, *args: Any, **kwargs: Any) -> Any:
        """``xr.DataTree.to_zarr``, with the arrays it opens on a local target encoding through zarrs
        (:func:`topozarr_core.write.codec_pipeline.zarrs_while_opening`).

        :param store: the target, as for ``xr.DataTree.to_zarr``; the other arguments are passed on.
        """
        from topozarr_core.write.codec_pipeline import zarrs_while_opening

        with zarrs_while_opening(store):
            return super().to_zarr(store, *args, **kwargs)


class Pyramid:
    """A planned pyramid: nothing is computed or written until ``write`` or ``as_datatree``."""

    def __init__(self, ds: xr.Dataset, spec: PyramidSpec, replan: Callable[[str], PyramidSpec] | None = None):
        """Made by :func:`create_pyramid` from the source ``ds`` and its checked plan ``spec``; ``replan`` plans the
        same pyramid for another ``method``.
        """
        self.ds = ds
        self._planned = spec
        #: plans the same pyramid for another ``method`` (topozarr lets the method be edited after planning)
        self._replan = replan
        self._method: Any = spec.method
        self._named: str = spec.method
        #: The chunk/shard plan, computed once and editable (as topozarr documents): every write path
        #: (``write``, ``as_datatree``, ``initialise``/``publish``, ``region_plan``, the flows) uses it.
        self.encoding: dict[str, dict[str, dict]] = planned_encoding(spec)
        #: The root metadata (multiscales, spatial:, proj:, zarr-layer), computed once and editable.
        self.attrs: dict[str, Any] = {**stored_attributes(dataset_attributes(spec.source_attrs)),  # conventions win
                                      **multiscale_attributes(spec.grid, spec.crs, list(spec.factors), spec.method,
                                                              spec.layer_hints)}
        self._applied: tuple[str, PyramidSpec, PyramidSpec] = (encoding_key(self.encoding), spec, spec)

    @property
    def spec(self) -> PyramidSpec:
        """The plan with the current ``method`` and ``encoding``; raises a one-line error on a bad edit."""
        planned = self._current()
        key = encoding_key(self.encoding)
        if key != self._applied[0] or planned is not self._applied[2]:
            self._applied = (key, apply_encoding(planned, self.encoding), planned)
        return self._applied[1]

    def _current(self) -> PyramidSpec:
        """The plan for the current ``method``: re-planned (and so re-checked) once after an edit."""
        if self._method != self._planned.method:
            if self._replan is None:
                raise ValueError("pyramid.method cannot be changed on this pyramid; create it with the method")
            self._planned = self._replan(self._method)  # a bad method is refused here, before any write
            replan_fixed_keys(self.encoding, self._planned)
        return self._planned

    @property
    def source(self) -> xr.Dataset:
        """The level-0 dataset (topozarr's name for it)."""
        return self.ds

    @property
    def x_dim(self) -> str:
        """The x dimension."""
        return self._planned.x_dim

    @property
    def y_dim(self) -> str:
        """The y dimension."""
        return self._planned.y_dim

    @property
    def method(self) -> CoarseningMethod:
        """The coarsening method. Editable as in topozarr: checked (with everything it implies, e.g. a
        ``_FillValue`` for ``majority`` on integers) when the plan is next used, before anything is
        written; the ``resampling_method`` entries of ``attrs`` follow a valid edit."""
        return self._method

    @method.setter
    def method(self, value: Any) -> None:
        self._method = value
        if rename_resampling(self.attrs, self._named, value):
            self._named = value  # the method attrs name (the last valid one)

    @property
    def fill_values(self) -> dict[str, float | int | None]:
        """Per gridded data variable, the ``_FillValue`` its arrays are written with (NaN for floats
        without one, None for integers without one)."""
        return {v.name: gridded_encoding(v, 0)["_FillValue"] for v in self._current().variables if not v.is_coord}

    @property
    def level_templates(self) -> dict[int, xr.Dataset]:
        """Level -> lazy Dataset of that level as written: shapes, dtypes, coordinates, attributes, and
        dask placeholders chunked by the write unit (nothing is computed)."""
        spec = self.spec
        return {lvl: level_dataset(self.ds, spec, lvl, template_data)[0] for lvl in range(self.levels)}

    # -- description ---------------------------------------------------------------------------
    @property
    def factors(self) -> list[int]:
        """The cumulative coarsening factor of each level (``[1, 2, 4, ...]``)."""
        return list(self._planned.factors)

    @property
    def levels(self) -> int:
        """The number of levels, level 0 included (topozarr's meaning)."""
        return len(self._planned.factors)

    @property
    def level_names(self) -> list[str]:
        """The levels' group names: ``["0", "1", ...]``."""
        return [str(i) for i in range(self.levels)]

    @property
    def crs(self):
        """The pyramid's CRS (a :class:`pyproj.CRS`)."""
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
        """The ``(ny, nx)`` size of a level.

        :param level: the level's index (0 is full resolution)."""
        return self._planned.grid.shape(self._planned.factors[level])

    def region_plan(self, levels: list[int] | None = None,
                    max_region_bytes: int = DEFAULT_MAX_REGION_BYTES) -> RegionPlan:
        """Every region of ``levels`` (default all) as one plan: what one tile covering the whole
        pyramid runs (see :meth:`tile_plan` for the units of work).

        :param levels: the levels to plan (default all).
        :param max_region_bytes: the largest level-0 region that a widening to whole source chunks may make.
        """
        _check_region_bytes(max_region_bytes)
        return build_region_plan(
            **self.spec.layout(),
            max_region_bytes=max_region_bytes,
            levels=self._check_levels(levels),
        )

    def tile_plan(self, levels: list[int] | None = None, max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
                  max_tile_bytes: int | None = DEFAULT_TILE_BYTES, max_tiles: int | None = None,
                  min_tiles: int = 1) -> TilePlan:
        """The units of work of a write, as plain data every executor runs (:mod:`topozarr_core.plan.tiles`).

        :param levels: the levels to write (default all; contiguous).
        :param max_region_bytes: largest level-0 region (what one thread reads and writes at once).
        :param max_tile_bytes: input bytes per tile while a stage takes in one more level; ``None``
            gives one tile per variable group covering the whole pyramid (``write``'s default).
        :param max_tiles: a hard cap on the number of tiles (larger tiles when needed).
        :param min_tiles: a stage takes in one more level, and its tiles grow toward ``max_tile_bytes``,
            only while it keeps at least this many tiles (the workers a distributed run has).
        """
        _check_region_bytes(max_region_bytes)
        if max_tile_bytes is not None and (isinstance(max_tile_bytes, bool) or not isinstance(max_tile_bytes, int)
                                           or max_tile_bytes <= 0):
            raise ValueError(f"max_tile_bytes must be a positive int or None, got {max_tile_bytes!r}")
        if isinstance(min_tiles, bool) or not isinstance(min_tiles, int) or min_tiles < 1:
            raise ValueError(f"min_tiles must be a positive int, got {min_tiles!r}")
        return build_tile_plan(
            **self.spec.layout(),
            max_region_bytes=max_region_bytes,
            levels=self._check_levels(levels),
            max_tile_bytes=max_tile_bytes,
            max_tiles=max_tiles,
            min_tiles=min_tiles,
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

        The caller holds the target's lease (:mod:`topozarr_core.store.lease`) where it needs one.

        :param store: the target: a path, URL or zarr store.
        :param mode: ``"w"``, ``"w-"`` or ``"a"``, as in :meth:`write`.
        :param levels: the levels the write rewrites (default all).
        :param overwrite_foreign: delete data there that this project did not write.
        :param sources: the source's URLs or paths, which the target must not be.
        :returns: the zarr store written to.
        """
        from topozarr_core.write.protocol import BuildWrite

        zstore = resolve_store(store)
        BuildWrite.check(self, zstore, mode, levels, overwrite_foreign=overwrite_foreign, sources=sources).prepare(zstore)
        return zstore

    def publish(self, store: Any) -> dict:
        """Write the root multiscales metadata, ``attrs`` as edited (last step of a write).

        :param store: the target: a path, URL or zarr store.
        :returns: the root attributes written.
        """
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
        io: IO = "auto",
        overwrite_foreign: bool = False,
        stats: bool = False,
        max_tile_bytes: int | None = None,
    ) -> WriteReport | None:
        """Compute and write the levels through a local thread pool.

        Every check runs before the target changes: the edited ``encoding`` and ``attrs``, the target
        contract (:mod:`topozarr_core.publish.contract`; ``overwrite_foreign=True`` lets ``mode="w"`` replace data
        this project did not write), the first level staged in memory, the lease of plain Zarr
        targets (:mod:`topozarr_core.store.lease`). Then the root is unpublished, replaced nodes are deleted, levels
        written, and the root published last.

        ``levels=[0, ...]`` with ``mode="w"`` into a missing or empty target creates the whole layout,
        writes those levels and leaves the root unpublished (:mod:`topozarr_core.publish.partial`); ``mode="a"`` writes the
        rest and publishes once every level holds data. As in topozarr, nothing is returned unless
        ``stats=True``: then a :class:`~topozarr_core.write.report.WriteReport`, topozarr's per-level stats dict
        (:mod:`topozarr_core.write.stats`) that also carries the write's summary (levels, regions, bytes, workers, published).
        ``max_tile_bytes`` runs the tiles of :meth:`tile_plan` with that size here, stage by stage
        (default: one tile, the whole pyramid, which reads nothing back from the target).

        :param store: the target: a path, an ``s3://`` URL, a zarr store, or a writable Icechunk
            session (or its store; commit it afterwards).
        :param mode: ``"w"`` builds the pyramid, replacing one this project wrote; ``"a"`` writes
            the levels given by ``levels`` into an existing pyramid of ours; ``"w-"`` writes only
            into a missing or empty target.
        :param max_workers: threads of the write pool (default: from the CPU count and the
            available RAM).
        :param max_region_bytes: the most bytes of one region (a unit of reading and encoding).
        :param progress: show a progress bar (tqdm) of the regions written.
        :param keep_levels_in_memory: reduce a level in RAM for the next (default: when it fits);
            ``False`` reads it back from the target.
        :param levels: write only these levels (see above).
        :param io: ``"auto"`` (zarrs on local paths, zarr-python elsewhere: what topozarr does when
            zarrs is installed), ``"python"`` (zarr's codec pipeline) or ``"rust"`` (zarrs; local paths
            and obstore-backed targets only: refused where zarrs would silently fall back to Python,
            such as Icechunk and memory stores).
        :param overwrite_foreign: let ``mode="w"`` replace a target this project did not write.
        :param stats: return a :class:`~topozarr_core.write.report.WriteReport` (else ``None``).
        :param max_tile_bytes: run the tiles of :meth:`tile_plan` of at most this size.
        :returns: ``None``, or the report when ``stats=True``."""
        from topozarr_core.write.codec_pipeline import open_array_for, resolve_io
        from topozarr_core.write.protocol import BuildWrite, write_locally

        plan = self.tile_plan(levels=levels, max_region_bytes=max_region_bytes, max_tile_bytes=max_tile_bytes)
        regions = {stage: plan.region_plan([t for t in plan.tiles if t.stage == stage]) for stage in plan.stages}
        zstore = resolve_store(store)
        io = resolve_io(io, zstore)
        workers = max(auto_workers(r, max_workers) for r in regions.values())
        keep = all(self._keep_in_memory(r, keep_levels_in_memory) for r in regions.values())
        steps = BuildWrite.check(self, zstore, mode, plan=plan, overwrite_foreign=overwrite_foreign)
        timer = RegionTimer() if stats else None
        written = write_locally(steps, plan, zstore, workers=workers, open_array=open_array_for(io, zstore),
                                keep_in_memory=keep, progress=progress, timer=timer, regions=regions)
        planned, complete = plan.levels, steps.complete
        if timer is None:
            return None  # as topozarr: a report only when asked for
        return WriteReport(
            timer.as_dict(workers, _region_shapes(list(regions.values()))),
            levels=planned,
            regions=sum(lp.n_regions for r in regions.values() for lp in r.levels),
            bytes_written=written,
            workers=workers,
            kept_in_memory=keep,
            io=io,
            published=complete,
        )

    def _keep_in_memory(self, plan: RegionPlan, requested: bool | None) -> bool:
        if requested is not None:
            return bool(requested)
        need = LevelCache.nbytes_needed(plan)
        return need <= psutil.virtual_memory().available * KEEP_IN_MEMORY_RAM_FRACTION

    # -- lazy / Dask path ----------------------------------------------------------------------
    def as_datatree(self, *, max_tile_bytes: int = DASK_TILE_BYTES, min_tiles: int = DASK_MIN_TILES) -> PyramidTree:
        """A lazy DataTree of every level, for Dask-distributed writes: write it with
        ``dt.to_zarr(store, zarr_format=3, consolidated=False, encoding=pyramid.encoding)``.

        Each level is built from the level before (:mod:`topozarr_core.write.dask_levels`), with the
        kernels of :meth:`write`, so the values are :meth:`write`'s, bit for bit, and ``DataTree.to_zarr``
        (one dask computation for every level) reads the source once. The dask blocks are the tiles of
        :meth:`tile_plan`: each covers whole shards of its levels (the unit ``encoding`` writes), so no
        two dask tasks write into one shard whatever the source's own chunks, and the graph has a few
        tasks per tile rather than per shard. A lazily opened (not dask) source is chunked by the
        first stage's tiles: each task reads one tile's window. The tree's ``to_zarr`` encodes a local
        target with zarrs, as :meth:`write` does (:class:`PyramidTree`).

        :param max_tile_bytes: input bytes of one tile, the largest block a dask task holds (keyword
            only; topozarr has no such parameter).
        :param min_tiles: a stage takes in one more level only while it keeps at least this many tiles
            (the parallelism a cluster keeps to the end).
        """
        from topozarr_core.write.dask_levels import level_arrays, stage_chunks, stage_tiles

        plan = self.tile_plan(max_tile_bytes=max_tile_bytes, min_tiles=min_tiles)
        src = self.ds.copy()
        for v in self.spec.variables:
            if src[v.name].chunks is None:  # one task reads a first-stage tile's window
                src[v.name] = src[v.name].chunk(dict(zip(v.dims, stage_chunks(plan, v, stage_tiles(plan, v, 0), 0))))
        arrays = {v.name: level_arrays(src, self.spec, v, plan) for v in self.spec.variables}
        # the root carries the ownership marker (``topozarr:options``), as ``write`` publishes it: a later
        # ``mode="w"`` rebuild or ``update_pyramid`` knows the tree as a pyramid of ours
        tree: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=self.root_attributes())}
        for lvl in range(self.levels):
            level_ds, encoding = level_dataset(self.ds, self.spec, lvl, lambda v, lvl: arrays[v.name][lvl])
            for v in self.spec.variables:  # the encoding passed to to_zarr replaces the variable's: the
                fill = encoding[v.name]["_FillValue"]  # nodata marker travels in the attributes
                if fill is not None:
                    level_ds[v.name].attrs["_FillValue"] = fill
            for name in self.spec.side_fills:  # variables over one spatial dim, likewise
                level_ds[name].attrs["_FillValue"] = level_ds[name].encoding.pop("_FillValue")
            tree[f"/{lvl}"] = level_ds
        return PyramidTree.from_dict(tree)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{i}:{self.level_shape(i)[0]}x{self.level_shape(i)[1]}" for i in range(self.levels))
        return f"<Pyramid factors={self.factors} method={self.method!r} levels=[{shapes}]>"


def _region_shapes(plans: list[RegionPlan]) -> dict[int, dict[str, tuple[int, ...]]]:
    """Per level, the shape of each variable's first region (the unit its regions tile the level by)."""
    out: dict[int, dict[str, tuple[int, ...]]] = {}
    for plan in plans:
        for lp in plan.levels:
            shapes = out.setdefault(lp.level, {})
            for region in lp.regions:
                shapes.setdefault(region.var, region.shape())
    return out


def _check_region_bytes(max_region_bytes: Any) -> None:
    if isinstance(max_region_bytes, bool) or not isinstance(max_region_bytes, int) or max_region_bytes <= 0:
        raise ValueError(f"max_region_bytes must be a positive int, got {max_region_bytes!r}")


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

    Nothing is read or written here: the result is an editable plan (:class:`Pyramid`) whose
    :meth:`Pyramid.write` builds the pyramid, or whose :meth:`Pyramid.as_datatree` gives it lazily.

    :param ds: the source: an xarray Dataset (or a DataArray, written as one variable) with the two
        spatial dims; NetCDF, Zarr, Icechunk or in memory, lazily loaded or not.
    :param levels: how many levels to build after level 0 (``levels=3`` gives ``0..3``);
        ``"auto"`` adds levels while the smaller spatial side stays at least ``min_dim`` pixels
        (``min(nx, ny) // 2**levels >= min_dim``). Give ``levels`` or ``factors``, not both.
    :param factors: the cumulative coarsening factor of every level, starting with 1
        (``[1, 2, 4, 8]``); each must divide the next.
    :param x_dim: the name of the x (longitude, easting) dimension.
    :param y_dim: the name of the y (latitude, northing) dimension.
    :param method: how a window of pixels becomes one: ``"mean"`` (NaN-aware, exact at every
        level), ``"max"``, ``"min"``, ``"sum"``, ``"nearest"``, ``"mode"``, ``"majority"``.
    :param crs: the coordinate reference system (anything :class:`pyproj.CRS` accepts), when the
        dataset does not carry one (``spatial_ref``, ``crs_wkt``, ``proj:code``).
    :param layer_hints: display hints for zarr-layer per variable (:class:`ZarrLayerVarConfig`:
        colour limits and colormap), written into the multiscales metadata.
    :param chunks_per_shard: chunks per shard along each spatial dim (1, 2, 4, 8, 16 or 32), or
        ``None`` for unsharded arrays.
    :param target_chunk_bytes: the uncompressed size a chunk aims at.
    :param min_dim: the smallest side that ``levels="auto"`` keeps.
    :param pack: ``False`` stores CF-packed integer variables (``scale_factor``/``add_offset`` in
        their encoding) as the decoded floats instead of packed (see
        :mod:`topozarr_core.spec.packing`).
    :returns: the plan: levels, ``encoding`` and ``attrs`` that can be edited before writing."""
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

    def replan(new_method: str) -> PyramidSpec:
        return build_spec(ds, levels=None, factors=list(spec.factors), x_dim=x_dim, y_dim=y_dim, method=new_method,
                          crs=crs, layer_hints=layer_hints, chunks_per_shard=chunks_per_shard,
                          target_chunk_bytes=target_chunk_bytes, min_dim=min_dim, pack=pack)

    return Pyramid(ds, spec, replan)


__all__ = ["create_pyramid", "Pyramid", "WriteReport"]
