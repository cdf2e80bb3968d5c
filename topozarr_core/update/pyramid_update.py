"""Incremental updates: extend an existing pyramid with new entries along one dimension (e.g. time).

A scheduled run on a dataset that grew by a few time steps calls :func:`update_pyramid` instead of
rebuilding. The result is identical to a full build of the grown source (same nodes, metadata and
values):

1. *Plan* (:func:`plan_update`, never writes). Read the options the pyramid was built with (root
   ``topozarr:options``; inferred from the multiscales layout for pyramids written before it
   existed), plan the grown source with them, and refuse with :class:`UpdateRefused` a source that
   does not extend the pyramid (:mod:`topozarr_core.update.checks`): another spatial grid, CRS, variables,
   dtypes, attributes or chunk/shard encodings, a shorter source, or rewritten history -- the
   values of coordinates and carried variables, and a deterministic sample of level-0 chunks of
   every gridded variable over the existing entries (``verify_samples``, default 8 per variable),
   compared exactly with the source.
2. *Prepare* (:meth:`PyramidUpdate.prepare`). First, in ONE write, replace the root by an
   *unpublished* root (:mod:`topozarr_core.publish.root_doc`: no ``multiscales`` -- stashed for the resume --,
   ``topozarr:status = "updating"`` and ``topozarr:update = {append_dim, from, to}``): from then on
   no reader is shown a layout over arrays of mixed lengths, and a killed update is resumed by the
   next one from its recorded starting length. Then grow the gridded arrays having the append
   dimension (their ``zarr.json`` only: existing shards stay valid, and the codecs stay the
   pyramid's own), and empty the arrays whose shard shape changes -- the shard depth along a short
   append dimension grows with its length until it saturates (see ``chunking.variable_encoding``),
   so a full build of the grown source lays them out differently; those arrays are rewritten whole.
3. *Write* (:meth:`PyramidUpdate.tile_plan`, run by any executor) with the one region writer
   (:func:`~topozarr_core.write.region.write_region`) only the new entries: the shard-aligned regions
   reaching the old length, cut to start there (``plan.restrict_plan``), in tiles cut along the
   append dim at shard boundaries of every level. The partly filled last
   shard of each region is then written by zarr as read-modify-write -- its older inner chunks are
   kept as encoded bytes -- which is race-free because no two regions share a shard. Recreated
   arrays get all their regions. Levels >= 1 are computed from level L-1's new entries: kept in
   memory by the local executor (:class:`~topozarr_core.write.window_cache.WindowCache`), else read back
   from the store (with the hidden missing counts of ``mean``).
4. *Finish* (:meth:`PyramidUpdate.finish`): replace the coordinates and carried variables along the
   append dimension (encoded by xarray exactly as a build does). The root stays unpublished.
5. *Publish* (:meth:`PyramidUpdate.publish`): refresh the root copies of the level-0 coordinates
   (``/time`` grows with ``/0/time``, :mod:`topozarr_core.publish.root_coords`), then write the published root (drops the
   marks). The flow validates the pyramid (against the root it is about to write) before this step.

:meth:`PyramidUpdate.write` runs 2-5 holding the lease of plain Zarr targets (:mod:`topozarr_core.store.lease`): a
second writer is refused with ``TargetBusy``. Prepare also re-reads what the plan read and refuses
to start when another writer changed the pyramid in between. Nothing to append (same length,
nothing else changed) writes nothing at all: running the same update twice changes nothing.
Icechunk: pass a writable session (or its store); the update is written into it and the caller
commits once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import xarray as xr
import zarr

from topozarr_core.layout.array_docs import (
    appended_variables,
    children,
    clear_chunks,
    gridded_arrays,
    grown_arrays,
    grown_doc,
    level_variables,
    read_docs,
    refresh_level_attributes,
    replace_array,
    shard_unit,
    state_digest,
    state_paths,
    write_docs,
)
from topozarr_core.layout.conventions import comparable
from topozarr_core.layout.paths import data_path
from topozarr_core.plan.regions import RegionPlan
from topozarr_core.plan.tiles import TilePlan, build_tile_plan
from topozarr_core.publish.root_coords import foreign_nodes, planned_names, stale_names
from topozarr_core.publish.root_doc import (
    OWNED_KEY,
    UPDATING,
    owned_nodes,
    read_root,
    root_attrs,
    unpublished_attrs,
    write_root,
)
from topozarr_core.publish.steps import create_scratch_counts, published_attrs
from topozarr_core.publish.steps import publish as publish_root
from topozarr_core.pyramid import (
    DEFAULT_MAX_REGION_BYTES,
    IO,
    KEEP_IN_MEMORY_RAM_FRACTION,
    Pyramid,
    create_pyramid,
)
from topozarr_core.spec.layer_hints import ZarrLayerVarConfig
from topozarr_core.spec.pyramid_spec import PyramidSpec
from topozarr_core.store.targets import check_writable, resolve_store
from topozarr_core.text import short
from topozarr_core.update.checks import (
    DEFAULT_VERIFY_SAMPLES,
    UPDATE_KEY,
    UpdateRefused,
    check_docs,
    check_grid,
    check_history,
    check_level0,
    check_values,
    check_variables,
    is_unpublished_update,
    read_pyramid_root,
    root_marker,
)
from topozarr_core.update.options import (
    AS_BUILT,
    create_kwargs,
    crs_for_update,
    resolve_options,
    stored_hints,
    stored_options,
)
from topozarr_core.write.executor import auto_workers
from topozarr_core.write.window_cache import WindowCache

# -- plain-data description of an update ----------------------------------------------------------


@dataclass(frozen=True)
class UpdateInfo:
    """What :func:`plan_update` decided: plain, JSON-able data (flows pass it between tasks)."""

    append_dim: str
    old_length: int
    new_length: int
    #: (level, variable) arrays recreated with a new shard layout and rewritten whole
    relayout: tuple[tuple[int, str], ...]
    #: ``create_pyramid`` keyword arguments reproducing the pyramid's layout for the source
    options: dict[str, Any]
    #: False when the pyramid already equals a full build of the source: nothing is written
    changed: bool
    #: the target holds an interrupted update that this one completes
    resumed: bool = False
    #: digest of the documents the plan was made from (prepare refuses when they changed since)
    state: str | None = None
    #: level-0 chunks compared with the source (the history sample)
    verified_chunks: int = 0

    @property
    def marker(self) -> dict[str, Any]:
        """The ``topozarr:update`` record the unpublished root carries while this update runs."""
        return {"append_dim": self.append_dim, "from": self.old_length, "to": self.new_length}

    def to_dict(self) -> dict[str, Any]:
        """The info as plain JSON-able data (for a flow's task results)."""
        return {"append_dim": self.append_dim, "old_length": self.old_length, "new_length": self.new_length,
                "relayout": [list(p) for p in self.relayout], "options": self.options,
                "changed": self.changed, "resumed": self.resumed, "state": self.state,
                "verified_chunks": self.verified_chunks}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UpdateInfo:
        """The info back from :meth:`to_dict`'s data.

        :param d: what :meth:`to_dict` returned.
        """
        return cls(append_dim=d["append_dim"], old_length=int(d["old_length"]), new_length=int(d["new_length"]),
                   relayout=tuple((int(lvl), str(v)) for lvl, v in d["relayout"]), options=dict(d["options"]),
                   changed=bool(d["changed"]), resumed=bool(d.get("resumed", False)), state=d.get("state"),
                   verified_chunks=int(d.get("verified_chunks", 0)))


@dataclass
class UpdateReport:
    """Summary of a completed update."""

    append_dim: str
    old_length: int
    new_length: int
    levels: list[int]
    regions: int
    bytes_written: int
    relayout: list[tuple[int, str]] = field(default_factory=list)
    workers: int = 0
    io: str = "python"
    changed: bool = True
    verified_chunks: int = 0

    @property
    def appended(self) -> int:
        """Entries appended along the append dim."""
        return self.new_length - self.old_length


# -- the planned update ---------------------------------------------------------------------------


class PyramidUpdate:
    """A planned update: nothing is written until :meth:`write` (or the steps of the write protocol,
    :mod:`topozarr_core.write.protocol`: prepare / the tiles / finish / publish, which the flow runs as
    separate tasks)."""

    def __init__(self, pyramid: Pyramid, info: UpdateInfo):
        """:param pyramid: the pyramid planned from the grown source.
        :param info: what planning found (:class:`UpdateInfo`).
        """
        self.pyramid = pyramid
        self.info = info

    @classmethod
    def from_info(cls, ds: xr.Dataset, info: UpdateInfo) -> PyramidUpdate:
        """Re-derive the update in another process from the source and the plain-data info.

        :param ds: the source dataset.
        :param info: the planned update's info.
        """
        return cls(create_pyramid(ds, **create_kwargs(info.options)), info)

    @property
    def spec(self) -> PyramidSpec:
        """The plan of the source (the pyramid as the update leaves it)."""
        return self.pyramid.spec

    def tile_plan(self, max_region_bytes: int = DEFAULT_MAX_REGION_BYTES, max_tile_bytes: int | None = None,
                  max_tiles: int | None = None) -> TilePlan:
        """The tiles of the update (:mod:`topozarr_core.plan.tiles`): the regions reaching the old length along the append
        dim, cut to start there, and every region of relaid-out arrays. Tiles cover every level over
        the whole grid and are cut along the append dim only (``max_tile_bytes``); none when nothing
        changes.

        :param max_region_bytes: the largest level-0 region a widening to whole source chunks may make.
        :param max_tile_bytes: at most this many bytes of input per tile (None: one tile).
        :param max_tiles: a hard cap on the number of tiles.
        """
        info = self.info
        start, stop = (info.old_length, None) if info.changed else (info.new_length, info.new_length)
        return build_tile_plan(
            **self.spec.layout(), max_region_bytes=max_region_bytes, max_tile_bytes=max_tile_bytes,
            max_tiles=max_tiles,
            restricted={"dim": info.append_dim, "start": start, "stop": stop,
                        "whole": [list(p) for p in info.relayout] if info.changed else [], "clip": True})

    def region_plan(self, max_region_bytes: int = DEFAULT_MAX_REGION_BYTES) -> RegionPlan:
        """Every region the update writes, as one plan (empty when nothing changes).

        :param max_region_bytes: the largest level-0 region a widening to whole source chunks may make.
        """
        plan = self.tile_plan(max_region_bytes=max_region_bytes)
        return plan.region_plan(plan.tiles)

    def keeps_window(self, plan: RegionPlan) -> bool:
        """Whether the update's levels fit in memory over its window (the build's RAM budget).

        :param plan: the update's region plan.
        """
        info = self.info
        need = WindowCache.nbytes_for(plan, info.append_dim, info.new_length - info.old_length,
                                      {tuple(p) for p in info.relayout})
        return bool(plan.levels) and need <= psutil.virtual_memory().available * KEEP_IN_MEMORY_RAM_FRACTION

    @property
    def source(self) -> xr.Dataset:
        """The dataset the tiles read."""
        return self.pyramid.ds

    def prepare(self, store: Any, lazy: bool = False) -> None:
        """Unpublish the root (one write, first), then grow the arrays along the append dim and
        empty the relaid-out ones.

        Refuses (nothing written) when the pyramid changed since :func:`plan_update` read it --
        unless it is this very update's unpublished root (a retried prepare).

        :param store: the pyramid: a path, URL or zarr store.
        :param lazy: part of the write protocol (:class:`~topozarr_core.write.protocol.WriteSteps`); unused:
            an update creates no levels.
        """
        if not self.info.changed:
            return
        zstore = resolve_store(store)
        check_writable(zstore)
        info, spec = self.info, self.spec
        grow = grown_arrays(spec, info.append_dim)
        root = read_root(zstore)
        docs = read_docs(zstore, state_paths(spec, info.append_dim))
        if info.state is not None and state_digest(root, docs) != info.state \
                and not is_unpublished_update(root, info.marker):
            raise UpdateRefused("the pyramid changed after this update was planned (did another writer update "
                                "it?); nothing was written: run the update again")
        lost = sorted(p for p in grow if docs.get(p) is None)
        if lost:
            raise UpdateRefused(f"the pyramid lost {lost[:4]} during the update; rebuild it")
        # the root first, in one write: from here on no reader sees multiscales over mixed lengths
        write_root(zstore, unpublished_attrs(root_attrs(root), UPDATING, owned=set(), **{UPDATE_KEY: info.marker}))
        relayout = set(info.relayout)
        emptied, new_docs = [], {}
        for path, (v, level, _) in grow.items():
            doc = docs[path]
            axis = v.dims.index(info.append_dim)
            if (level, v.name) in relayout:
                emptied.append(path)  # empty again, then given the new shard shape below
            elif doc["shape"][axis] > v.shapes[level][axis]:
                # a resumed update with a shorter source: drop the shards beyond the new length
                zarr.open_array(zstore, path=path, mode="r+", zarr_format=3).resize(v.shapes[level])
            # growing changes only the shape (and the shard shape) in zarr.json: existing shards stay valid
            new_docs[path] = grown_doc(doc, v.shapes[level], shard_unit(v, level))
        clear_chunks(zstore, emptied)
        write_docs(zstore, new_docs)
        # fresh scratch counts at the grown shapes: this update's regions fill those it reads back
        create_scratch_counts(zstore, spec, range(len(spec.factors)))

    def finish(self, store: Any, levels: Any = None) -> dict:
        """Replace the coordinates / carried variables along the append dim. The root stays
        unpublished: :meth:`publish` is the last step (after validation, in the flow).

        :param store: the pyramid: a path, URL or zarr store.
        :param levels: part of the write protocol; unused: an update creates no levels.
        """
        if not self.info.changed:
            return {}
        zstore = resolve_store(store)
        mem, copies = appended_variables(self.pyramid.ds, self.spec, self.info.append_dim)
        for src_path, dst_path in copies:
            replace_array(mem, zstore, src_path, dst_path)
        regrouped = refresh_level_attributes(zstore, self.spec)
        return {"replaced": [dst for _, dst in copies], "group_attributes": regrouped}

    def publish(self, store: Any) -> dict:
        """Write the published root (``multiscales``, ``spatial:``, ``proj:``, options): the last write.

        :param store: the pyramid: a path, URL or zarr store.
        :returns: the root attributes written (empty when nothing changed).
        """
        if not self.info.changed:
            return {}
        return publish_root(resolve_store(store), self.spec)

    def write(self, store: Any, max_workers: int | None = None, max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
              progress: bool = False, io: IO = "auto") -> UpdateReport:
        """Prepare, write the affected regions through a local thread pool, finish, publish -- holding
        the target's lease (plain Zarr) throughout. Validation is the caller's (the flow validates
        before publishing).

        :param store: the pyramid: a path, URL or zarr store.
        :param max_workers: threads of the pool (default: sized from the CPUs and the available RAM).
        :param max_region_bytes: the largest level-0 region a widening to whole source chunks may make.
        :param progress: show a progress bar.
        :param io: ``"auto"``, ``"python"`` or ``"rust"`` (as :meth:`topozarr_core.Pyramid.write`).
        """
        from topozarr_core.write.codec_pipeline import open_array_for, resolve_io
        from topozarr_core.write.protocol import write_locally

        zstore = resolve_store(store)
        io = resolve_io(io, zstore)
        tiles = self.tile_plan(max_region_bytes=max_region_bytes)
        plan = tiles.region_plan(tiles.tiles)
        info = self.info
        if not info.changed:
            return UpdateReport(info.append_dim, info.old_length, info.new_length, [], 0, 0, [],
                                workers=0, io=io, changed=False, verified_chunks=info.verified_chunks)
        workers = auto_workers(plan, max_workers) if plan.levels else (max_workers or 1)
        written = write_locally(self, tiles, zstore, workers=workers, open_array=open_array_for(io, zstore),
                                keep_in_memory=self.keeps_window(plan), progress=progress)
        return UpdateReport(
            append_dim=info.append_dim,
            old_length=info.old_length,
            new_length=info.new_length,
            levels=[lp.level for lp in plan.levels],
            regions=sum(lp.n_regions for lp in plan.levels),
            bytes_written=written,
            relayout=list(info.relayout),
            workers=workers,
            io=io,
            changed=True,
            verified_chunks=info.verified_chunks,
        )

    def __repr__(self) -> str:
        i = self.info
        return (f"<PyramidUpdate {i.append_dim}: {i.old_length} -> {i.new_length}, "
                f"relayout={list(i.relayout)}, changed={i.changed}>")


# -- entry points ---------------------------------------------------------------------------------


def plan_update(
    ds: xr.Dataset | xr.DataArray,
    store: Any,
    append_dim: str = "time",
    *,
    x_dim: str = AS_BUILT,
    y_dim: str = AS_BUILT,
    factors: list[int] | str = AS_BUILT,
    method: str = AS_BUILT,
    chunks_per_shard: int | None | str = AS_BUILT,
    target_chunk_bytes: int | str = AS_BUILT,
    crs: Any = None,
    layer_hints: dict[str, ZarrLayerVarConfig] | None = None,
    verify_samples: int = DEFAULT_VERIFY_SAMPLES,
) -> PyramidUpdate:
    """Check that ``ds`` extends the pyramid in ``store`` along ``append_dim`` and plan the update.

    Never writes. Raises :class:`UpdateRefused` (a ValueError) when it does not. The layout
    options default to those the pyramid was built with; passing a different value is refused.

    :param ds: the whole grown source.
    :param store: the pyramid: a path, URL, zarr store or Icechunk session.
    :param append_dim: the dimension that grew.
    :param x_dim: the x dimension (default: as built).
    :param y_dim: the y dimension (default: as built).
    :param factors: the levels' cumulative factors (default: as built).
    :param method: the coarsening method (default: as built).
    :param chunks_per_shard: chunks per shard (default: as built).
    :param target_chunk_bytes: the chunk size aimed at (default: as built).
    :param crs: needed only for a source without a CRS of its own (default: the pyramid's).
    :param layer_hints: zarr-layer display hints (default: the pyramid's stored hints).
    :param verify_samples: level-0 chunks per gridded variable compared with the source over the
        existing entries (0 skips the gridded history check; see
        :func:`~topozarr_core.update.checks.check_history`).
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "data")
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"update_pyramid needs an xarray Dataset, got {type(ds).__name__}")
    if isinstance(verify_samples, bool) or not isinstance(verify_samples, (int, np.integer)) or verify_samples < 0:
        raise ValueError(f"verify_samples must be an int >= 0, got {verify_samples!r}")
    zstore = resolve_store(store)
    root = read_pyramid_root(zstore)
    attrs = root_attrs(root)
    marker = root_marker(attrs, append_dim)

    given = {"x_dim": x_dim, "y_dim": y_dim, "factors": factors, "method": method,
             "chunks_per_shard": chunks_per_shard, "target_chunk_bytes": target_chunk_bytes}
    options = resolve_options(stored_options(attrs), given)
    if append_dim in (options["x_dim"], options["y_dim"]):
        raise UpdateRefused(f"append_dim={append_dim!r} is a spatial dimension; append along a non-spatial one")
    if append_dim not in ds.dims:
        raise UpdateRefused(f"the source has no {append_dim!r} dimension to append along "
                            f"(its dimensions: {sorted(map(str, ds.dims))})")
    options["crs"] = crs_for_update(ds, crs, attrs)
    hints = layer_hints if layer_hints is not None else stored_hints(attrs)
    if hints:
        options["layer_hints"] = {k: v.to_json() for k, v in hints.items()}

    pyramid = create_pyramid(ds, **create_kwargs(options))
    spec = pyramid.spec
    check_grid(attrs, pyramid)
    appended = [v for v in spec.variables if append_dim in v.dims]
    if not appended:
        raise UpdateRefused(f"no gridded variable of the source has the {append_dim!r} dimension")
    kinds = level_variables(ds, spec)
    n_levels = len(spec.factors)
    check_variables(children(zstore, [str(lvl) for lvl in range(n_levels)]), kinds, n_levels)
    gridded = gridded_arrays(spec)
    others = [f"{lvl}/{name}" for lvl in range(n_levels) for name, kind in kinds.items() if kind != "gridded"]
    groups = sorted({str(lvl) for lvl in range(n_levels)} | {p.rsplit("/", 1)[0] for p in gridded})
    docs = read_docs(zstore, list(gridded) + others + groups)
    first = appended[0]
    check_level0(docs, spec, first)

    coord = docs.get(f"0/{append_dim}")
    n_new = int(ds.sizes[append_dim])
    if marker is not None:
        n_old = int(marker["from"])
    elif coord is not None and len(coord.get("shape", ())) == 1:
        n_old = int(coord["shape"][0])
    else:
        n_old = int(docs[data_path(0, first.name)]["shape"][first.dims.index(append_dim)])
    if n_new < n_old:
        raise UpdateRefused(f"the source has {n_new} {append_dim!r} entries but the pyramid already has {n_old}: "
                            "a shrunken source is not an update; rebuild the pyramid")
    for name, kind in sorted(kinds.items()):
        if kind == "other":  # coordinates and carried variables: compared decoded with the source
            dims = docs[f"0/{name}"].get("dimension_names") or []
            check_values(zstore, name, ds[name], append_dim if append_dim in dims else None, n_old)

    spec_old = spec
    if n_old != n_new:
        spec_old = create_pyramid(ds.isel({append_dim: slice(0, n_old)}), **create_kwargs(options)).spec
    relayout = check_docs(docs, pyramid, spec_old, kinds, append_dim, n_old, resuming=marker is not None)
    # an interrupted update may have emptied the level-0 arrays it relaid out: their old entries
    # are rewritten whole from the source and cannot be compared
    skip = {v for lvl, v in relayout if lvl == 0} if marker is not None else set()
    verified = check_history(zstore, ds, spec, append_dim, n_old, int(verify_samples), skip)

    copies = planned_names(ds, spec.x_dim, spec.y_dim)
    foreign = foreign_nodes(zstore, copies, owned_nodes(attrs))
    if foreign:
        raise UpdateRefused(f"the pyramid's root holds a node {short(foreign[0])} that topozarr-flows did not write, "
                            "where an update writes its root copy of that coordinate (for zarr-layer's value "
                            "selectors); nothing was written: move it away, or rebuild with overwrite_foreign=True")
    want_root = published_attrs(spec)
    published = {k: v for k, v in attrs.items() if k != OWNED_KEY}  # the owned list is publish_root's own
    changed = (marker is not None or n_new != n_old or bool(relayout) or comparable(published) != comparable(want_root)
               or bool(stale_names(zstore, attrs)))  # an older pyramid gains its root copies
    state = state_digest(root, {p: docs.get(p) for p in state_paths(spec, append_dim)})
    info = UpdateInfo(append_dim=append_dim, old_length=n_old, new_length=n_new, relayout=tuple(sorted(relayout)),
                      options=options, changed=changed, resumed=marker is not None, state=state,
                      verified_chunks=verified)
    return PyramidUpdate(pyramid, info)


def update_pyramid(
    ds: xr.Dataset | xr.DataArray,
    store: Any,
    append_dim: str = "time",
    *,
    x_dim: str = AS_BUILT,
    y_dim: str = AS_BUILT,
    factors: list[int] | str = AS_BUILT,
    method: str = AS_BUILT,
    chunks_per_shard: int | None | str = AS_BUILT,
    target_chunk_bytes: int | str = AS_BUILT,
    crs: Any = None,
    layer_hints: dict[str, ZarrLayerVarConfig] | None = None,
    verify_samples: int = DEFAULT_VERIFY_SAMPLES,
    max_workers: int | None = None,
    max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
    progress: bool = False,
    io: IO = "auto",
) -> UpdateReport:
    """Append the new ``append_dim`` entries of ``ds`` to the pyramid in ``store``; write only what changes.

    ``ds`` is the *whole* grown source (its first entries must equal the pyramid's). The result
    is identical to ``create_pyramid(ds, <the pyramid's options>).write(store)``. Refuses
    (:class:`UpdateRefused`) sources whose grid, CRS, variables, dtypes or encodings differ, that
    shrank, or that rewrote history (``verify_samples`` level-0 chunks per variable are compared).
    A second writer on the same plain Zarr target is refused with ``TargetBusy``. Running it again
    with the same source writes nothing. For Icechunk, ``store`` is a writable session (or its
    store); commit it afterwards.

    :param ds: the whole grown source (see above).
    :param store: the pyramid to update: a path, an ``s3://`` URL, a zarr store, or a writable
        Icechunk session (or its store).
    :param append_dim: the dimension that grew (``"time"``).
    :param x_dim: the x dimension (default: the one the pyramid was built with).
    :param y_dim: the y dimension (default: as built).
    :param factors: the levels' cumulative factors (default: as built; a different value is refused).
    :param method: the coarsening method (default: as built; a different value is refused).
    :param chunks_per_shard: chunks per shard (default: as built).
    :param target_chunk_bytes: the chunk size aimed at (default: as built).
    :param crs: the coordinate reference system, when the source carries none (default: the
        source's own, else the pyramid's; a different one is refused).
    :param layer_hints: zarr-layer display hints (default: the pyramid's stored hints).
    :param verify_samples: level-0 chunks per variable compared with the stored pyramid, to refuse
        a source that rewrote history.
    :param max_workers: threads of the write pool (default: from the CPU count and RAM).
    :param max_region_bytes: the most bytes of one region.
    :param progress: show a progress bar of the regions written.
    :param io: ``"auto"``, ``"python"`` or ``"rust"`` (as :meth:`topozarr_core.Pyramid.write`).
    :returns: an :class:`UpdateReport`: the old and new lengths, the levels and regions written.
    """
    update = plan_update(ds, store, append_dim, x_dim=x_dim, y_dim=y_dim, factors=factors, method=method,
                         chunks_per_shard=chunks_per_shard, target_chunk_bytes=target_chunk_bytes, crs=crs,
                         layer_hints=layer_hints, verify_samples=verify_samples)
    return update.write(store, max_workers=max_workers, max_region_bytes=max_region_bytes, progress=progress, io=io)


__all__ = ["update_pyramid", "plan_update", "PyramidUpdate", "UpdateInfo", "UpdateReport", "UpdateRefused",
           "UPDATING", "UPDATE_KEY", "AS_BUILT", "DEFAULT_VERIFY_SAMPLES", "WindowCache"]
