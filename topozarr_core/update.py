"""Incremental updates: extend an existing pyramid with new entries along one dimension (e.g. time).

A scheduled run on a dataset that grew by a few time steps calls :func:`update_pyramid` instead of
rebuilding. The result is identical to a full build of the grown source (same nodes, metadata and
values):

1. *Plan* (:func:`plan_update`, never writes). Read the options the pyramid was built with (root
   ``topozarr:options``; inferred from the multiscales layout for pyramids written before it
   existed), plan the grown source with them, and refuse with :class:`UpdateRefused` a source whose
   spatial grid, CRS, variables, dtypes, attributes or chunk/shard encodings differ, that is shorter
   than the pyramid, or whose first ``n_old`` entries along the append dimension differ from the
   pyramid's (rewritten history). Every node of the pyramid is checked against the plan of the
   source cut to the pyramid's length (groups, arrays, shapes, dtypes, chunks, shards, fill values,
   attributes; the values of coordinates and carried variables -- gridded values are not re-read).
   Only metadata documents are read, concurrently, so planning stays cheap on object stores.
2. *Prepare* (:meth:`PyramidUpdate.prepare`): mark the root ``topozarr:status = "updating"`` with
   the old length (a crashed update is resumed by the next one), grow the gridded arrays having
   the append dimension (their ``zarr.json`` only: existing shards stay valid, and the codecs stay
   the pyramid's own), and recreate empty the arrays
   whose shard shape changes -- the shard depth along a short append dimension grows with its
   length until it saturates (see ``chunking.variable_encoding``), so a full build of the grown
   source lays them out differently; those arrays are rewritten whole.
3. *Write* (:meth:`PyramidUpdate.region_plan`, run by any executor) with the one region writer
   (:func:`~topozarr_core.regions.write_region`) only the new entries: the shard-aligned regions
   reaching the old length, cut to start there (``plan.restrict_plan``). The partly filled last
   shard of each region is then written by zarr as read-modify-write -- its older inner chunks are
   kept as encoded bytes -- which is race-free because no two regions share a shard. Recreated
   arrays get all their regions. Levels >= 1 are computed from level L-1's new entries: kept in
   memory by the local executor (:class:`WindowCache`), else read back from the store (with the
   hidden missing counts of ``mean``).
4. *Finish* (:meth:`PyramidUpdate.finish`): replace the coordinates and carried variables along the
   append dimension (encoded by xarray exactly as a build does), then publish the root metadata,
   which drops the mark.

Nothing to append (same length, nothing else changed) writes nothing at all: running the same
update twice changes nothing. Icechunk: pass a writable session (or its store); the update is
written into it and the caller commits once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import pyproj
import xarray as xr
import zarr
import zarr.errors
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from .chunking import DEFAULT_TARGET_CHUNK_BYTES
from .crs import proj_attributes, resolve_crs
from .executor import auto_workers, run_plan
from .level_cache import LevelCache, _aligned, _missing_fill
from .layout import publish
from .root_doc import OPTIONS_KEY, STATUS_KEY, creation_options
from .levels import _DROP_ATTRS, crs_coord_name, level_dataset
from .metadata import RESAMPLING_NAMES, ZarrLayerVarConfig, comparable as _norm, level_attributes
from .paths import data_path, missing_dtype, missing_path
from .plan import RegionPlan, restrict_plan
from .planning import PyramidSpec
from .pyramid import DEFAULT_MAX_REGION_BYTES, IO, KEEP_IN_MEMORY_RAM_FRACTION, Pyramid, create_pyramid
from .regions import WriteContext
from .targets import resolve_store

#: ``topozarr:status`` while an update is being written (a later update resumes it).
UPDATING = "updating"
#: Root attribute recording an update in progress: ``{"append_dim", "from", "to"}``.
UPDATE_KEY = "topozarr:update"
#: Default of the option arguments of :func:`update_pyramid`: use what the pyramid was built with.
AS_BUILT = "as-built"

_OPTION_KEYS = ("x_dim", "y_dim", "factors", "method", "chunks_per_shard", "target_chunk_bytes")
_DEFAULTS = {"chunks_per_shard": 4, "target_chunk_bytes": DEFAULT_TARGET_CHUNK_BYTES, "method": "mean",
             "x_dim": "x", "y_dim": "y"}


class UpdateRefused(ValueError):
    """The source cannot extend this pyramid (or the target is no pyramid); the message says why."""


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

    def to_dict(self) -> dict[str, Any]:
        return {"append_dim": self.append_dim, "old_length": self.old_length, "new_length": self.new_length,
                "relayout": [list(p) for p in self.relayout], "options": self.options,
                "changed": self.changed, "resumed": self.resumed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UpdateInfo":
        return cls(append_dim=d["append_dim"], old_length=int(d["old_length"]), new_length=int(d["new_length"]),
                   relayout=tuple((int(lvl), str(v)) for lvl, v in d["relayout"]), options=dict(d["options"]),
                   changed=bool(d["changed"]), resumed=bool(d.get("resumed", False)))


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

    @property
    def appended(self) -> int:
        return self.new_length - self.old_length


# -- the planned update ---------------------------------------------------------------------------


class PyramidUpdate:
    """A planned update: nothing is written until :meth:`write` (or prepare / regions / finish)."""

    def __init__(self, pyramid: Pyramid, info: UpdateInfo):
        self.pyramid = pyramid
        self.info = info

    @classmethod
    def from_info(cls, ds: xr.Dataset, info: UpdateInfo) -> "PyramidUpdate":
        """Re-derive the update in another process from the source and the plain-data info."""
        return cls(create_pyramid(ds, **_create_kwargs(info.options)), info)

    @property
    def spec(self) -> PyramidSpec:
        return self.pyramid.spec

    def region_plan(self, max_region_bytes: int = DEFAULT_MAX_REGION_BYTES, regions_per_batch: int | None = None,
                    target_batches_per_level: int = 32) -> RegionPlan:
        """The regions to (re)write: those reaching the old length along the append dim, and every
        region of relaid-out arrays. Empty (no levels) when nothing changes."""
        full = self.pyramid.region_plan(max_region_bytes=max_region_bytes, regions_per_batch=1)
        if not self.info.changed:
            return restrict_plan(full, self.info.append_dim, self.info.new_length, self.info.new_length)
        return restrict_plan(full, self.info.append_dim, self.info.old_length, None, whole=set(self.info.relayout),
                             regions_per_batch=regions_per_batch, target_batches_per_level=target_batches_per_level)

    def window_cache(self, plan: RegionPlan) -> "WindowCache | None":
        """In-memory levels for the update's window, when they fit the build's RAM budget."""
        info = self.info
        window = info.new_length - info.old_length
        need = WindowCache.nbytes_for(plan, info.append_dim, window)
        if not plan.levels or need > psutil.virtual_memory().available * KEEP_IN_MEMORY_RAM_FRACTION:
            return None
        return WindowCache.for_update(plan, info.append_dim, info.old_length, info.new_length, set(info.relayout))

    def prepare(self, store: Any) -> None:
        """Mark the root as updating, grow arrays along the append dim, recreate relaid-out arrays."""
        if not self.info.changed:
            return
        zstore = resolve_store(store)
        info, spec = self.info, self.spec
        root = zarr.open_group(zstore, mode="r+", zarr_format=3)
        attrs = dict(root.attrs)
        attrs[STATUS_KEY] = UPDATING
        attrs[UPDATE_KEY] = {"append_dim": info.append_dim, "from": info.old_length, "to": info.new_length}
        root.attrs.put(attrs)
        grow = {p: vl for p, vl in _gridded_arrays(spec).items() if info.append_dim in vl[0].dims}
        docs = _read_docs(zstore, list(grow))
        relayout = set(info.relayout)
        new_docs = {}
        for path, (v, level, _) in grow.items():
            doc = docs[path]
            if doc is None:
                raise UpdateRefused(f"the pyramid lost {path!r} during the update; rebuild it")
            if (level, v.name) in relayout:
                sync(zstore.delete_dir(path))  # empty again, with the new shard shape
            elif doc["shape"][v.dims.index(info.append_dim)] > v.shapes[level][v.dims.index(info.append_dim)]:
                # a resumed update with a shorter source: drop the shards beyond the new length
                zarr.open_array(zstore, path=path, mode="r+", zarr_format=3).resize(v.shapes[level])
            # growing changes only the shape (and the shard shape) in zarr.json: existing shards stay valid
            new_docs[path] = _grown_doc(doc, v.shapes[level], _unit(v, level))
        _write_docs(zstore, new_docs)

    def finish(self, store: Any) -> dict:
        """Replace the coordinates / carried variables along the append dim, then publish the root."""
        if not self.info.changed:
            return {}
        zstore = resolve_store(store)
        mem, copies = _appended_variables(self.pyramid.ds, self.spec, self.info.append_dim)
        for src_path, dst_path in copies:
            _replace_array(mem, zstore, src_path, dst_path)
        return publish(zstore, self.spec)

    def write(self, store: Any, max_workers: int | None = None, max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
              progress: bool = False, io: IO = "python") -> UpdateReport:
        """Prepare, write the affected regions through a local thread pool, finish."""
        from .io_select import check_io, open_array_for

        zstore = resolve_store(store)
        check_io(io, zstore)
        plan = self.region_plan(max_region_bytes=max_region_bytes)
        info = self.info
        if not info.changed:
            return UpdateReport(info.append_dim, info.old_length, info.new_length, [], 0, 0, [],
                                workers=0, io=io, changed=False)
        workers = auto_workers(plan, max_workers) if plan.levels else (max_workers or 1)
        self.prepare(zstore)
        ctx = WriteContext(plan=plan, source=self.pyramid.ds, store=zstore, cache=self.window_cache(plan),
                           open_array=open_array_for(io, zstore))
        written = run_plan(ctx, workers, progress=progress) if plan.levels else 0
        self.finish(zstore)
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
        )

    def __repr__(self) -> str:
        i = self.info
        return (f"<PyramidUpdate {i.append_dim}: {i.old_length} -> {i.new_length}, "
                f"relayout={list(i.relayout)}, changed={i.changed}>")


class WindowCache(LevelCache):
    """A :class:`LevelCache` holding only the update's window ``[start, stop)`` along the append dim.

    As in a build that keeps levels in memory, each region of level L-1 reduces its own output into
    level L here ("precomputed"), so level L only encodes and writes instead of reading level L-1
    back. Used for the levels whose regions all lie in the window (not those being relaid out,
    which read the store). ``has`` is always False: levels that are not precomputed read the store.
    """

    dim: str = ""
    start: int = 0

    @classmethod
    def for_update(cls, plan: RegionPlan, dim: str, start: int, stop: int,
                   whole: set[tuple[int, str]]) -> "WindowCache | None":
        planned = {lp.level: lp for lp in plan.levels}
        whole_levels = {lvl for lvl, _ in whole}
        cache = cls(plan)
        cache.dim, cache.start = dim, int(start)
        for lvl, lp in planned.items():
            if lvl == 0 or lvl - 1 not in planned or lvl in whole_levels or not _aligned(plan, planned[lvl - 1], lp.step):
                continue
            if any(dim not in plan.var(r.var).dims for b in lp.batches for r in b.regions):
                continue
            cache.precomputed.add(lvl)
            for spec in plan.variables:
                if dim not in spec.dims:
                    continue
                shape = list(spec.shapes[lvl])
                shape[spec.dims.index(dim)] = stop - start
                cache.data[(lvl, spec.name)] = np.full(shape, _missing_fill(spec), dtype=spec.out_dtype)
                if spec.track_missing:
                    cache.missing[(lvl, spec.name)] = np.zeros(shape, dtype=missing_dtype(plan.factors[lvl]))
        return cache if cache.precomputed else None

    def has(self, level: int, var: str) -> bool:
        return False

    def views(self, level: int, var: str, slices: tuple[slice, ...]) -> None:
        """Regions may reach outside the window: reductions compute, then :meth:`put` keeps the window."""
        return None

    def _local(self, var: str, slices: tuple[slice, ...]) -> tuple[tuple[slice, ...], slice]:
        """``slices`` in window coordinates, and the part of a value array (along dim) inside the window."""
        spec = self.plan.var(var)
        i = spec.dims.index(self.dim)
        s = slices[i]
        lo = max(s.start, self.start)
        local = list(slices)
        local[i] = slice(lo - self.start, s.stop - self.start)
        return tuple(local), slice(lo - s.start, s.stop - s.start)

    def get(self, level: int, var: str, slices: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        local, _ = self._local(var, slices)
        return super().get(level, var, local)

    def put(self, level: int, var: str, slices: tuple[slice, ...], values: np.ndarray,
            missing: np.ndarray | None) -> None:
        if (level, var) not in self.data:
            return
        local, part = self._local(var, slices)
        i = self.plan.var(var).dims.index(self.dim)
        if part.stop <= part.start:
            return
        take = tuple(part if k == i else slice(None) for k in range(values.ndim))
        super().put(level, var, local, values[take], None if missing is None else missing[take])

    @staticmethod
    def nbytes_for(plan: RegionPlan, dim: str, window: int) -> int:
        total = 0
        for spec in plan.variables:
            if dim not in spec.dims:
                continue
            for lvl in range(1, len(plan.factors)):
                shape = list(spec.shapes[lvl])
                shape[spec.dims.index(dim)] = window
                n = int(np.prod(shape))
                miss = np.dtype(missing_dtype(plan.factors[lvl])).itemsize if spec.track_missing else 0
                total += n * (np.dtype(spec.out_dtype).itemsize + miss)
        return total


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
) -> PyramidUpdate:
    """Check that ``ds`` extends the pyramid in ``store`` along ``append_dim`` and plan the update.

    Never writes. Raises :class:`UpdateRefused` (a ValueError) when it does not. The layout
    options default to those the pyramid was built with; passing a different value is refused.
    ``crs`` is needed only for a source without a CRS of its own (default: the pyramid's).
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "data")
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"update_pyramid needs an xarray Dataset, got {type(ds).__name__}")
    zstore = resolve_store(store)
    root = _open_root(zstore)
    attrs = dict(root.attrs)
    status = attrs.get(STATUS_KEY)
    if not isinstance(attrs.get("multiscales"), dict):
        raise UpdateRefused("the target is not a published pyramid (its root has no 'multiscales' metadata): "
                            "build it first with create_pyramid(...).write or the build-pyramid flow")
    if status not in (None, UPDATING):
        raise UpdateRefused(f"the last build of this pyramid did not finish ({STATUS_KEY}={status!r}): "
                            "rebuild it before updating")
    marker = attrs.get(UPDATE_KEY) if status == UPDATING else None
    if marker is not None and marker.get("append_dim") != append_dim:
        raise UpdateRefused(f"the pyramid holds an interrupted update along {marker.get('append_dim')!r}; "
                            f"finish it (update along that dimension) before updating along {append_dim!r}")

    given = {"x_dim": x_dim, "y_dim": y_dim, "factors": factors, "method": method,
             "chunks_per_shard": chunks_per_shard, "target_chunk_bytes": target_chunk_bytes}
    options = _resolve_options(_stored_options(attrs), given)
    if append_dim in (options["x_dim"], options["y_dim"]):
        raise UpdateRefused(f"append_dim={append_dim!r} is a spatial dimension; append along a non-spatial one")
    if append_dim not in ds.dims:
        raise UpdateRefused(f"the source has no {append_dim!r} dimension to append along "
                            f"(its dimensions: {sorted(map(str, ds.dims))})")
    options["crs"] = _resolve_crs(ds, crs, attrs)
    hints = layer_hints if layer_hints is not None else _stored_hints(attrs)
    if hints:
        options["layer_hints"] = {k: v.to_json() for k, v in hints.items()}

    pyramid = create_pyramid(ds, **_create_kwargs(options))
    spec = pyramid.spec
    _check_grid(attrs, pyramid)
    appended = [v for v in spec.variables if append_dim in v.dims]
    if not appended:
        raise UpdateRefused(f"no gridded variable of the source has the {append_dim!r} dimension")
    kinds = _level_variables(ds, spec)
    n_levels = len(spec.factors)
    children = _children(zstore, [str(lvl) for lvl in range(n_levels)])
    for lvl in range(n_levels):
        if children[str(lvl)] != set(kinds):
            extra, lacking = sorted(set(kinds) - children[str(lvl)]), sorted(children[str(lvl)] - set(kinds))
            where = "" if lvl == 0 else f" (level {lvl})"
            raise UpdateRefused(f"the source's variables differ from the pyramid's{where}:"
                                + (f" the source has {extra} that the pyramid lacks;" if extra else "")
                                + (f" the pyramid has {lacking} that the source lacks;" if lacking else "")
                                + " update with the same variables (or rebuild)")
    gridded = _gridded_arrays(spec)
    others = [f"{lvl}/{name}" for lvl in range(n_levels) for name, kind in kinds.items() if kind != "gridded"]
    groups = sorted({str(lvl) for lvl in range(n_levels)} | {p.rsplit("/", 1)[0] for p in gridded})
    docs = _read_docs(zstore, list(gridded) + others + groups)
    lacking = sorted(p for p, d in docs.items() if d is None)
    if lacking:
        raise UpdateRefused(f"the pyramid lacks {lacking[:8]}: it was not written by a build of this layout; rebuild it")
    for v in spec.variables:
        got = docs[data_path(0, v.name)].get("data_type")
        if got != np.dtype(v.dtype).name:
            raise UpdateRefused(f"variable {v.name!r} has dtype {np.dtype(v.dtype)} in the source but {got} in the "
                                "pyramid; cast the source (or rebuild)")
    first = appended[0]
    axis = first.dims.index(append_dim)
    if docs[data_path(0, first.name)].get("dimension_names") != list(first.dims):
        raise UpdateRefused(f"the pyramid's {first.name!r} has dimensions "
                            f"{docs[data_path(0, first.name)].get('dimension_names')}, the source's {list(first.dims)}")

    coord = docs.get(f"0/{append_dim}")
    n_new = int(ds.sizes[append_dim])
    if marker is not None:
        n_old = int(marker["from"])
    elif coord is not None and len(coord.get("shape", ())) == 1:
        n_old = int(coord["shape"][0])
    else:
        n_old = int(docs[data_path(0, first.name)]["shape"][axis])
    if n_new < n_old:
        raise UpdateRefused(f"the source has {n_new} {append_dim!r} entries but the pyramid already has {n_old}: "
                            "a shrunken source is not an update; rebuild the pyramid")
    for name, kind in sorted(kinds.items()):
        if kind == "other":  # coordinates and carried variables: compared decoded with the source
            dims = docs[f"0/{name}"].get("dimension_names") or []
            _check_values(zstore, name, ds[name], append_dim if append_dim in dims else None, n_old)

    spec_old = spec
    if n_old != n_new:
        spec_old = create_pyramid(ds.isel({append_dim: slice(0, n_old)}), **_create_kwargs(options)).spec
    relayout = _check_docs(docs, pyramid, spec_old, kinds, append_dim, n_old, resuming=marker is not None)
    want_root = {**pyramid.attrs, OPTIONS_KEY: creation_options(spec)}
    changed = marker is not None or n_new != n_old or bool(relayout) or _norm(attrs) != _norm(want_root)
    info = UpdateInfo(append_dim=append_dim, old_length=n_old, new_length=n_new, relayout=tuple(sorted(relayout)),
                      options=options, changed=changed, resumed=marker is not None)
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
    max_workers: int | None = None,
    max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
    progress: bool = False,
    io: IO = "python",
) -> UpdateReport:
    """Append the new ``append_dim`` entries of ``ds`` to the pyramid in ``store``; write only what changes.

    ``ds`` is the *whole* grown source (its first entries must equal the pyramid's). The result
    is identical to ``create_pyramid(ds, <the pyramid's options>).write(store)``. Refuses
    (:class:`UpdateRefused`) sources whose grid, CRS, variables, dtypes or encodings differ, that
    shrank, or that rewrote history. Running it again with the same source writes nothing.
    For Icechunk, ``store`` is a writable session (or its store); commit it afterwards.
    """
    update = plan_update(ds, store, append_dim, x_dim=x_dim, y_dim=y_dim, factors=factors, method=method,
                         chunks_per_shard=chunks_per_shard, target_chunk_bytes=target_chunk_bytes, crs=crs,
                         layer_hints=layer_hints)
    return update.write(store, max_workers=max_workers, max_region_bytes=max_region_bytes, progress=progress, io=io)


# -- options --------------------------------------------------------------------------------------


def _stored_options(attrs: dict) -> dict[str, Any]:
    """Options recorded at publish time, else what the multiscales layout tells."""
    stored = attrs.get(OPTIONS_KEY)
    if isinstance(stored, dict):
        return {k: stored[k] for k in _OPTION_KEYS if k in stored}
    out: dict[str, Any] = {}
    dims = attrs.get("spatial:dimensions")
    if isinstance(dims, list) and len(dims) == 2:
        out["y_dim"], out["x_dim"] = str(dims[0]), str(dims[1])
    ms = attrs["multiscales"]
    try:
        fs = [1]
        for entry in ms["layout"][1:]:
            fs.append(fs[-1] * int(round(float(entry["transform"]["scale"][0]))))
        out["factors"] = fs
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    methods = [m for m, name in RESAMPLING_NAMES.items() if name == ms.get("resampling_method")]
    if len(methods) == 1:
        out["method"] = methods[0]
    elif len(methods) > 1:
        out["method_choices"] = methods
    return out


def _resolve_options(stored: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _OPTION_KEYS:
        g = given.get(key, AS_BUILT)
        g_set = not (isinstance(g, str) and g == AS_BUILT)
        if key in stored:
            want = stored[key]
            if g_set and _plain(g) != _plain(want):
                raise UpdateRefused(f"the pyramid was built with {key}={want!r}, not {g!r}; "
                                    "an update keeps the pyramid's options (rebuild to change them)")
            out[key] = want
        elif g_set:
            if key == "method" and stored.get("method_choices") and g not in stored["method_choices"]:
                raise UpdateRefused(f"the pyramid's resampling is one of {stored['method_choices']}, not {g!r}")
            out[key] = g
        elif key == "factors":
            raise UpdateRefused("cannot tell the pyramid's factors from its metadata; pass factors=[1, 2, ...]")
        elif key == "method" and stored.get("method_choices"):
            raise UpdateRefused(f"the pyramid's resampling method is ambiguous ({stored['method_choices']}); "
                                "pass method=...")
        else:
            out[key] = _DEFAULTS[key]
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _create_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    hints = options.get("layer_hints") or None
    return {
        "factors": list(options["factors"]),
        "x_dim": options["x_dim"],
        "y_dim": options["y_dim"],
        "method": options["method"],
        "crs": options.get("crs"),
        "layer_hints": {k: ZarrLayerVarConfig(**v) for k, v in hints.items()} if hints else None,
        "chunks_per_shard": options["chunks_per_shard"],
        "target_chunk_bytes": int(options["target_chunk_bytes"]),
    }


def _stored_hints(attrs: dict) -> dict[str, ZarrLayerVarConfig]:
    hints = attrs.get("zarr-layer")
    if not isinstance(hints, dict):
        return {}
    return {str(k): ZarrLayerVarConfig(**v) for k, v in hints.items() if isinstance(v, dict)}


def _resolve_crs(ds: xr.Dataset, crs: Any, attrs: dict) -> str | None:
    """The ``crs=`` to plan with (None: the source's own), refusing a CRS other than the pyramid's."""
    stored = {k: attrs[k] for k in ("proj:code", "proj:wkt2") if k in attrs}
    try:
        found = resolve_crs(ds, crs)
    except ValueError:
        if crs is not None or not stored:
            raise
        return str(stored.get("proj:code") or stored.get("proj:wkt2"))
    if stored and proj_attributes(found) != stored:
        raise UpdateRefused(f"the source's CRS ({_crs_label(found)}) differs from the pyramid's "
                            f"({stored.get('proj:code') or 'WKT2 ' + stored.get('proj:wkt2', '')[:60]}); "
                            "reproject the source (or rebuild)")
    if crs is None:
        return None
    return str(crs) if isinstance(crs, str) else found.to_wkt()


def _crs_label(crs: pyproj.CRS) -> str:
    auth = crs.to_authority(min_confidence=100)
    return f"{auth[0]}:{auth[1]}" if auth else (crs.name or "custom CRS")


# -- checks ---------------------------------------------------------------------------------------


def _open_root(store: Any) -> zarr.Group:
    try:
        return zarr.open_group(store, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError):
        raise UpdateRefused("the target holds no pyramid: build it first") from None
    except Exception as err:
        if "NodeTypeValidation" in type(err).__name__ or "ContainsArray" in type(err).__name__:
            raise UpdateRefused("the target holds a zarr array at its root, not a pyramid") from None
        raise


def _check_grid(attrs: dict, pyramid: Pyramid) -> None:
    want = _norm(pyramid.attrs)
    have = _norm(attrs)
    for key in ("spatial:shape", "spatial:transform", "spatial:dimensions"):
        if have.get(key) != want.get(key):
            raise UpdateRefused(f"the source's spatial grid differs from the pyramid's: {key} is {want.get(key)} "
                                f"for the source, {have.get(key)} in the pyramid; regrid the source (or rebuild)")
    layout_have = have["multiscales"].get("layout", [])
    layout_want = want["multiscales"]["layout"]
    if len(layout_have) != len(layout_want):
        raise UpdateRefused(f"the pyramid has {len(layout_have)} levels, the update plans {len(layout_want)}")
    for lvl, (a, b) in enumerate(zip(layout_have, layout_want)):
        for key in ("spatial:shape", "spatial:transform", "transform"):
            if a.get(key) != b.get(key):
                raise UpdateRefused(f"the source's spatial grid differs from the pyramid's at level {lvl}: "
                                    f"{key} is {b.get(key)} for the source, {a.get(key)} in the pyramid")


def _check_values(store: Any, name: str, src: xr.DataArray, dim: str | None, n_old: int) -> None:
    """A level-0 coordinate / carried variable equals the source's (its first ``n_old`` entries
    along ``dim``), compared decoded: a change of CF encoding alone is no rewrite."""
    arr = zarr.open_array(store, path=f"0/{name}", mode="r", zarr_format=3)
    dims = tuple(arr.metadata.dimension_names or ())
    if dim is not None and arr.shape[dims.index(dim)] < n_old:
        raise UpdateRefused(f"the pyramid's {name!r} has {arr.shape[dims.index(dim)]} {dim!r} entries, fewer than "
                            f"its {n_old}: the pyramid is inconsistent; rebuild it")
    raw = xr.Variable(dims, arr[...], attrs=dict(arr.attrs))
    have = np.asarray(xr.conventions.decode_cf_variable(name, raw).values)
    want = src.transpose(*dims) if set(src.dims) == set(dims) else src
    if dim is not None:
        have = np.take(have, np.arange(n_old), axis=dims.index(dim))
        want = want.isel({dim: slice(0, n_old)})
    want = np.asarray(want.values)
    try:
        same = have.shape == want.shape and bool(np.all((have == want) | _both_nan(have, want)))
    except (TypeError, ValueError):
        same = False
    if same:
        return
    if dim is None:
        raise UpdateRefused(f"the values of {name!r} differ from the pyramid's: the source changed more than new "
                            "entries; rebuild the pyramid")
    if name == dim and have.shape == want.shape:
        idx = next(i for i in range(n_old) if not _eq(have[i], want[i]))
        raise UpdateRefused(f"the source rewrote history: its first {n_old} {dim!r} values differ from the "
                            f"pyramid's (at index {idx} the pyramid has {have[idx]}, the source {want[idx]}); "
                            "only appending is an update: rebuild the pyramid")
    raise UpdateRefused(f"the source rewrote history: the first {n_old} {dim!r} entries of {name!r} differ from "
                        "the pyramid's; only appending is an update: rebuild the pyramid")


def _both_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.isnan(a) & np.isnan(b)
    except TypeError:
        return np.zeros(a.shape, bool)


def _eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) or bool(np.isnan(a) and np.isnan(b))
    except (TypeError, ValueError):
        return False


#: Attributes xarray adds when writing (not the source's own).
_ENCODED_ATTRS = ("_FillValue", "coordinates", "grid_mapping")


def _check_docs(docs: dict[str, dict], pyramid: Pyramid, spec_old: Any, kinds: dict[str, str], dim: str,
                n_old: int, resuming: bool) -> set[tuple[int, str]]:
    """Check every node of the pyramid against the plan of the source; return the (level,
    variable) arrays to relay out.

    Gridded arrays: dtype, dimensions, shape, inner chunks, shards, integer fill value and the
    source's attributes; along ``dim`` the length must be the pyramid's ``n_old`` and the shard
    shape what the source cut to ``n_old`` entries gives. Level groups: their geo attributes. x/y
    coordinates: shape, dtype, attributes. The CRS coordinate: its WKT. Coordinates and carried
    variables are compared by value on level 0 (``_check_values``); those along ``dim`` are
    replaced by the update. ``resuming`` (an interrupted update) also accepts arrays already grown
    or relaid out (for whatever length): those are relaid out again.
    """
    spec = pyramid.spec
    ds = pyramid.ds
    old_vars = {v.name: v for v in spec_old.variables}
    relayout: set[tuple[int, str]] = set()
    for lvl, f in enumerate(spec.factors):
        group = docs[str(lvl)]
        got = {k: v for k, v in (group.get("attributes") or {}).items() if k != "coordinates"}
        if _norm(got) != _norm(level_attributes(spec.grid, spec.crs, f)):
            raise UpdateRefused(f"the metadata of level {lvl} differ from a build of the source (spatial grid or "
                                "CRS); rebuild the pyramid")
        for name, kind in kinds.items():
            path, doc = f"{lvl}/{name}", docs[f"{lvl}/{name}"]
            if kind in ("x", "y"):
                axis = spec.grid.x if kind == "x" else spec.grid.y
                src = ds[name]
                want_dtype = src.dtype if src.dtype.kind == "f" else np.dtype("f8")
                if doc.get("shape") != [axis.size // f] or doc.get("data_type") != np.dtype(want_dtype).name:
                    raise UpdateRefused(f"the coordinate {path!r} differs from a build of the source (shape "
                                        f"{doc.get('shape')}, dtype {doc.get('data_type')}); rebuild the pyramid")
                _check_attrs(path, doc, src.attrs)
            elif kind == "crs":
                if (doc.get("attributes") or {}).get("crs_wkt") != spec.crs.to_wkt():
                    raise UpdateRefused(f"the CRS of {path!r} differs from the source's; reproject the source (or "
                                        "rebuild)")
    for path, (v, lvl, is_missing) in _gridded_arrays(spec).items():
        if _check_gridded(path, docs[path], v, old_vars[v.name], lvl, is_missing, spec, ds[v.name].attrs, dim,
                          n_old, resuming):
            relayout.add((lvl, v.name))
    return relayout


def _check_gridded(path: str, doc: dict, v: Any, v_old: Any, lvl: int, is_missing: bool, spec: Any,
                   src_attrs: dict, dim: str, n_old: int, resuming: bool) -> bool:
    """Check one gridded array; True when it must be relaid out (its shard shape changes)."""

    def refuse(what: str, have: Any, want: Any, hint: str) -> None:
        raise UpdateRefused(f"the source does not extend this pyramid: {what} of {path!r} differ ({have} in the "
                            f"pyramid, {want} for the source); {hint}; rebuild the pyramid")

    other = "it was built with other options or from a differently chunked/encoded source"
    want_dtype = np.dtype(missing_dtype(spec.factors[lvl]) if is_missing else v.level_dtype(lvl)).name
    if is_missing:
        # hidden missing counts: any unsigned dtype holding factor**2 works (older pyramids used uint32)
        try:
            have = np.dtype(doc.get("data_type"))
            ok = have.kind == "u" and np.iinfo(have).max >= spec.factors[lvl] ** 2
        except TypeError:
            ok = False
        if not ok:
            refuse("the dtypes", doc.get("data_type"), want_dtype, other)
    elif doc.get("data_type") != want_dtype:
        refuse("the dtypes", doc.get("data_type"), want_dtype, "cast the source")
    if doc.get("dimension_names") != list(v.dims):
        refuse("the dimensions", doc.get("dimension_names"), list(v.dims), "the source differs")
    shape, want_shape = list(doc.get("shape") or []), list(v_old.shapes[lvl])
    axis = v.dims.index(dim) if dim in v.dims else None
    if len(shape) != len(want_shape):
        refuse("the shapes", shape, want_shape, "the source differs")
    if axis is not None:
        if not (shape[axis] == n_old or (resuming and shape[axis] >= n_old)):
            raise UpdateRefused(f"{path!r} has {shape[axis]} {dim!r} entries where the pyramid has {n_old}: the "
                                "pyramid is inconsistent; rebuild it")
        shape[axis] = want_shape[axis] = None
    if shape != want_shape:
        refuse("the shapes", shape, want_shape, "the source differs")
    enc = v.encodings[lvl]
    grid = _grid(doc)
    codecs = doc.get("codecs") or []
    sharded = bool(codecs) and isinstance(codecs[0], dict) and codecs[0].get("name") == "sharding_indexed"
    inner = list(codecs[0].get("configuration", {}).get("chunk_shape") or []) if sharded else grid
    if sharded != (enc.shards is not None) or inner != list(enc.chunks):
        refuse("the chunks", inner if sharded else grid, list(enc.chunks), other)
    old_unit, new_unit = _unit(v_old, lvl), _unit(v, lvl)
    relayout = False
    if axis is None:
        if grid != new_unit:
            refuse("the shards", grid, new_unit, other)
    else:
        spatial = v.axes(spec.y_dim, spec.x_dim)
        # an interrupted update may have relaid the array out for its own (other) length already
        resumed_ok = resuming and grid is not None and len(grid) == len(new_unit) and \
            all(grid[i] == new_unit[i] for i in spatial)
        if not (grid == old_unit or resumed_ok):
            refuse("the shards", grid, old_unit, other)
        relayout = old_unit != new_unit or grid != new_unit
    if is_missing:
        if doc.get("fill_value") != 0:
            refuse("the fill values", doc.get("fill_value"), 0, other)
        return relayout
    have_fill = _decode_fill((doc.get("attributes") or {}).get("_FillValue"))
    want_fill = None if v.fill_value is None else np.asarray(v.fill_value).astype(want_dtype).item()
    if want_fill is None and np.dtype(want_dtype).kind == "f":
        want_fill = math.nan
    if not (have_fill == want_fill or _eq(have_fill, want_fill)):
        refuse("the _FillValues", have_fill, want_fill, "the source's _FillValue changed")
    _check_attrs(path, doc, src_attrs)
    return relayout


def _check_attrs(path: str, doc: dict, src_attrs: dict) -> None:
    """The array's attributes are the source's (besides those xarray adds when writing)."""
    want = {k: val for k, val in src_attrs.items() if k not in _DROP_ATTRS}
    have = {k: val for k, val in (doc.get("attributes") or {}).items() if k not in _ENCODED_ATTRS}
    a, b = _norm(have), _norm(want)
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        detail = ", ".join(f"{k}: pyramid {_short(a.get(k))}, source {_short(b.get(k))}" for k in keys)
        raise UpdateRefused(f"the source does not extend this pyramid: the attributes of {path!r} differ ({detail}); "
                            "the source differs; rebuild the pyramid")


def _decode_fill(value: Any) -> Any:
    """A ``_FillValue`` attribute as xarray writes it to Zarr v3 (floats as base64 bytes)."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value)
            return float(np.frombuffer(raw, "<f8" if len(raw) == 8 else "<f4")[0])
        except (ValueError, TypeError):
            return value
    return value


def _grid(doc: dict) -> list[int] | None:
    try:
        return list(doc["chunk_grid"]["configuration"]["chunk_shape"])
    except (KeyError, TypeError):
        return None


def _unit(v: Any, level: int) -> list[int]:
    enc = v.encodings[level]
    return list(enc.shards if enc.shards is not None else enc.chunks)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- store helpers --------------------------------------------------------------------------------


def _gridded_arrays(spec: Any) -> dict[str, tuple[Any, int, bool]]:
    """{path: (variable, level, is missing-count array)} of every array written region by region."""
    out: dict[str, tuple[Any, int, bool]] = {}
    for v in spec.variables:
        for lvl in range(len(spec.factors)):
            out[data_path(lvl, v.name)] = (v, lvl, False)
            if v.track_missing and lvl >= 1:
                out[missing_path(lvl, v.name)] = (v, lvl, True)
    return out


def _level_variables(ds: xr.Dataset, spec: Any) -> dict[str, str]:
    """{name: kind} of the arrays of every level group: gridded / x / y / crs / other."""
    tmpl, _ = level_dataset(ds, spec, 0, _placeholder)
    gridded = {v.name for v in spec.variables}
    crs_name = crs_coord_name(ds)
    kinds = {}
    for name in map(str, tmpl.variables):
        kinds[name] = ("gridded" if name in gridded else "x" if name == spec.x_dim else "y" if name == spec.y_dim
                       else "crs" if name == crs_name else "other")
    return kinds


def _appended_variables(ds: xr.Dataset, spec: Any, dim: str) -> tuple[MemoryStore, list[tuple[str, str]]]:
    """The coordinates / carried variables along ``dim`` of every level, written (in memory) by
    xarray exactly as a build writes them; returns the store and (source path, target path) pairs.
    Variables without a spatial dim are the same at every level: written once, copied to each."""
    mem = MemoryStore()
    gridded = {v.name for v in spec.variables}
    first, _ = level_dataset(ds, spec, 0, _placeholder)
    names = {str(n): bool({spec.x_dim, spec.y_dim} & set(var.dims)) for n, var in first.variables.items()
             if dim in var.dims and n not in gridded}  # name -> has a spatial dim (differs per level)
    copies: list[tuple[str, str]] = []
    for lvl in range(len(spec.factors)):
        if lvl == 0 or any(names.values()):
            level_ds = first if lvl == 0 else level_dataset(ds, spec, lvl, _placeholder)[0]
            sub = level_ds.drop_vars([n for n in level_ds.variables if n in gridded])
            sub.to_zarr(mem, group=str(lvl), mode="w", consolidated=False, zarr_format=3)
        for name, per_level in names.items():
            src_lvl = lvl if per_level else 0
            copies.append((f"{src_lvl}/{name}", f"{lvl}/{name}"))
    return mem, copies


def _placeholder(v: Any, level: int) -> np.ndarray:
    """Zero-cost stand-in for gridded values (those variables are dropped before anything is written)."""
    return np.broadcast_to(np.zeros((), dtype=v.level_dtype(level)), v.shapes[level])


def _children(store: Any, groups: list[str]) -> dict[str, set[str]]:
    async def one(path: str) -> set[str]:
        return {k for k in [k async for k in store.list_dir(f"{path}/" if path else "")] if k != "zarr.json"}

    async def run() -> list[set[str]]:
        return list(await asyncio.gather(*(one(g) for g in groups)))

    return dict(zip(groups, sync(run())))


def _read_docs(store: Any, paths: list[str]) -> dict[str, dict | None]:
    """The ``zarr.json`` documents of ``paths`` (None when missing), fetched concurrently."""
    proto = default_buffer_prototype()

    async def one(path: str) -> dict | None:
        buf = await store.get(f"{path}/zarr.json" if path else "zarr.json", prototype=proto)
        return None if buf is None else json.loads(buf.to_bytes())

    async def run() -> list[dict | None]:
        return list(await asyncio.gather(*(one(p) for p in paths)))

    return dict(zip(paths, sync(run())))


def _write_docs(store: Any, docs: dict[str, dict]) -> None:
    proto = default_buffer_prototype()

    async def run() -> None:
        await asyncio.gather(*(store.set(f"{p}/zarr.json", proto.buffer.from_bytes(json.dumps(d, indent=2).encode()))
                               for p, d in docs.items()))

    sync(run())


def _grown_doc(doc: dict, shape: tuple[int, ...], unit: list[int]) -> dict:
    out = json.loads(json.dumps(doc))
    out["shape"] = [int(n) for n in shape]
    out["chunk_grid"]["configuration"]["chunk_shape"] = [int(n) for n in unit]
    return out


def _replace_array(src: Any, dst: Any, src_path: str, dst_path: str) -> None:
    """Make ``dst``'s node at ``dst_path`` a copy of ``src``'s at ``src_path`` (metadata first)."""

    async def run() -> None:
        proto = default_buffer_prototype()
        keys = [k async for k in src.list_prefix(f"{src_path}/")]
        meta = f"{src_path}/zarr.json"
        await dst.delete_dir(dst_path)
        for key in [meta] + sorted(k for k in keys if k != meta):
            buf = await src.get(key, prototype=proto)
            await dst.set(dst_path + key[len(src_path):], buf)

    sync(run())


__all__ = ["update_pyramid", "plan_update", "PyramidUpdate", "UpdateInfo", "UpdateReport", "UpdateRefused",
           "UPDATING", "UPDATE_KEY", "AS_BUILT"]
