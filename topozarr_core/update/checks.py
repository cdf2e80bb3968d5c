"""Checks of a source against the pyramid it should extend: every refusal of an update.

All of them only read, and all raise :class:`UpdateRefused` with a message saying what differs
and what to do. :func:`topozarr_core.update.pyramid_update.plan_update` runs them in this order, cheapest first:

* the root (:func:`read_pyramid_root`, :func:`root_marker`): a pyramid of ours, published or
  holding an interrupted update (unpublished, ``topozarr:status = "updating"``), not an
  unfinished build;
* the spatial grid and levels (:func:`check_grid`), the variables of every level
  (:func:`check_variables`), the level-0 dtypes and dimensions (:func:`check_level0`);
* coordinates and carried variables, by value (:func:`check_values`);
* every node's document against a build of the source cut to the pyramid's length
  (:func:`check_docs`): dtypes, shapes, chunks, shards, fill values, attributes;
* gridded history, by sampling (:func:`check_history`): a deterministic set of level-0 chunks of
  every gridded variable over the pyramid's existing entries, read from the pyramid and from the
  source and compared exactly.
"""

from __future__ import annotations

import base64
import math
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr

from topozarr_core.layout.array_docs import chunk_grid_of, gridded_arrays, shard_unit
from topozarr_core.layout.conventions import comparable, dataset_attributes, level_attributes
from topozarr_core.layout.level_dataset import DROP_ATTRS
from topozarr_core.layout.paths import data_path, missing_dtype
from topozarr_core.publish.root_doc import (
    STATUS_KEY,
    UPDATING,
    RootUnreadable,
    multiscales_of,
    read_root,
    root_attrs,
)
from topozarr_core.spec.packing import packing_attrs, stored_values
from topozarr_core.text import short

if TYPE_CHECKING:  # pragma: no cover
    from topozarr_core.pyramid import Pyramid

#: Root attribute recording an update in progress: ``{"append_dim", "from", "to"}``.
UPDATE_KEY = "topozarr:update"
#: Level-0 chunks of each gridded variable compared with the source (``verify_samples=``).
DEFAULT_VERIFY_SAMPLES = 8
#: Threads reading the sampled chunks (pyramid and source) concurrently.
SAMPLE_THREADS = 8


class UpdateRefused(ValueError):
    """The source cannot extend this pyramid (or the target is no pyramid); the message says why."""


# -- the root -------------------------------------------------------------------------------------


def read_pyramid_root(store: Any) -> dict:
    """The root document of the pyramid in ``store`` (refused when there is no group there)."""
    try:
        doc = read_root(store)
    except RootUnreadable:
        raise UpdateRefused("the target's zarr.json is not valid JSON: it holds no pyramid of ours") from None
    if doc is None:
        raise UpdateRefused("the target holds no pyramid: build it first")
    if doc.get("node_type") == "array":
        raise UpdateRefused("the target holds a zarr array at its root, not a pyramid")
    if doc.get("node_type") != "group" or doc.get("zarr_format") != 3:
        raise UpdateRefused("the target holds no Zarr v3 pyramid group at its root: build it first")
    return doc


def root_marker(attrs: dict, append_dim: str) -> dict | None:
    """The record of the interrupted update the root holds (None for a published root).

    Accepted: a published root (``multiscales``, no status), or the unpublished root of an
    interrupted update (status ``updating``, the update record and the stashed ``multiscales``).
    Refused: an unfinished build (status ``incomplete``), any other status, roots without a
    layout, and an interrupted update along another dimension.

    :param attrs: the root's attributes.
    :param append_dim: the dimension this update appends along.
    """
    status = attrs.get(STATUS_KEY)
    if status is not None and status != UPDATING:
        raise UpdateRefused(f"the last build of this pyramid did not finish ({STATUS_KEY}={status!r}): "
                            "rebuild it before updating")
    if status is None:
        if not isinstance(attrs.get("multiscales"), dict):
            raise UpdateRefused("the target is not a published pyramid (its root has no 'multiscales' metadata): "
                                "build it first with create_pyramid(...).write or the build-pyramid flow")
        return None
    marker = attrs.get(UPDATE_KEY)
    if not isinstance(marker, dict) or not isinstance(marker.get("from"), int) or multiscales_of(attrs) is None:
        raise UpdateRefused(f"the pyramid is marked {STATUS_KEY}={UPDATING!r} but holds no record of that update "
                            f"({UPDATE_KEY!r}) or of its layout: rebuild it")
    if marker.get("append_dim") != append_dim:
        raise UpdateRefused(f"the pyramid holds an interrupted update along {marker.get('append_dim')!r}; "
                            f"finish it (update along that dimension) before updating along {append_dim!r}")
    return marker


def is_unpublished_update(root: dict | None, marker: dict) -> bool:
    """Whether ``root`` is the unpublished root of an update recorded as ``marker``."""
    attrs = root_attrs(root)
    return attrs.get(STATUS_KEY) == UPDATING and attrs.get(UPDATE_KEY) == marker and "multiscales" not in attrs


# -- grid, variables, level 0 ---------------------------------------------------------------------


def check_variables(children: dict[str, set[str]], kinds: dict[str, str], n_levels: int) -> None:
    """Every level group holds exactly the arrays a build of the source writes there.

    :param children: ``{level group: names of its child nodes}``.
    :param kinds: ``{name: kind}`` of the arrays a build writes in every level group.
    :param n_levels: the number of levels.
    """
    for lvl in range(n_levels):
        have = children[str(lvl)]
        if have != set(kinds):
            extra, lacking = sorted(set(kinds) - have), sorted(have - set(kinds))
            where = "" if lvl == 0 else f" (level {lvl})"
            raise UpdateRefused(f"the source's variables differ from the pyramid's{where}:"
                                + (f" the source has {extra} that the pyramid lacks;" if extra else "")
                                + (f" the pyramid has {lacking} that the source lacks;" if lacking else "")
                                + " update with the same variables (or rebuild)")


def check_level0(docs: dict[str, dict | None], spec: Any, first: Any) -> None:
    """Every node is there; level-0 dtypes are the source's; the first appended variable has the
    source's dimensions (so its length along the append dim can be read).

    :param docs: ``{node path: zarr.json}`` of the pyramid (None: missing).
    :param spec: the plan of the source.
    :param first: the first appended variable of the source.
    """
    lacking = sorted(p for p, d in docs.items() if d is None)
    if lacking:
        raise UpdateRefused(f"the pyramid lacks {lacking[:8]}: it was not written by a build of this layout; rebuild it")
    for v in spec.variables:
        got = docs[data_path(0, v.name)].get("data_type")
        if got != np.dtype(v.dtype).name:
            raise UpdateRefused(f"variable {v.name!r} has dtype {np.dtype(v.dtype)} in the source but {got} in the "
                                "pyramid; cast the source (or rebuild)")
    have = docs[data_path(0, first.name)].get("dimension_names")
    if have != list(first.dims):
        raise UpdateRefused(f"the pyramid's {first.name!r} has dimensions {have}, the source's {list(first.dims)}")


# -- values and documents -------------------------------------------------------------------------


def check_grid(attrs: dict, pyramid: Pyramid) -> None:
    """The root's spatial grid and levels (published or stashed layout) are those the source plans.

    :param attrs: the pyramid's root attributes.
    :param pyramid: the pyramid planned from the source.
    """
    want = comparable(pyramid.attrs)
    have = comparable(attrs)
    have["multiscales"] = comparable(multiscales_of(attrs) or {})
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


def check_values(store: Any, name: str, src: xr.DataArray, dim: str | None, n_old: int) -> None:
    """A level-0 coordinate / carried variable equals the source's (its first ``n_old`` entries
    along ``dim``), compared decoded: a change of CF encoding alone is no rewrite.

    :param store: the pyramid's zarr store.
    :param name: the array's name in the level-0 group.
    :param src: the source's variable.
    :param dim: the append dim, or None (the variable does not have it: compared whole).
    :param n_old: the pyramid's length along ``dim``.
    """
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


def check_docs(docs: dict[str, dict], pyramid: Pyramid, spec_old: Any, kinds: dict[str, str], dim: str,
                n_old: int, resuming: bool) -> set[tuple[int, str]]:
    """Check every node of the pyramid against the plan of the source; return the (level,
    variable) arrays to relay out.

    Gridded arrays: dtype, dimensions, shape, inner chunks, shards, integer fill value and the
    source's attributes; along ``dim`` the length must be the pyramid's ``n_old`` and the shard
    shape what the source cut to ``n_old`` entries gives. Level groups: their geo attributes. x/y
    coordinates: shape, dtype, attributes. The CRS coordinate: its WKT. Coordinates and carried
    variables are compared by value on level 0 (``check_values``); those along ``dim`` are
    replaced by the update. ``resuming`` (an interrupted update) also accepts arrays already grown
    or relaid out (for whatever length): those are relaid out again.

    :param docs: ``{node path: zarr.json}`` of the pyramid.
    :param pyramid: the pyramid planned from the source.
    :param spec_old: the plan of the source cut to ``n_old`` entries along ``dim``.
    :param kinds: ``{name: kind}`` of the arrays of a level group (see ``level_variables``).
    :param dim: the append dim.
    :param n_old: the pyramid's length along ``dim``.
    :param resuming: the target holds an interrupted update of this source (shapes may be grown already).
    """
    spec = pyramid.spec
    ds = pyramid.ds
    old_vars = {v.name: v for v in spec_old.variables}
    relayout: set[tuple[int, str]] = set()
    for lvl, f in enumerate(spec.factors):
        group = docs[str(lvl)]
        got = {k: v for k, v in (group.get("attributes") or {}).items() if k != "coordinates"}
        # the dataset's global attributes may change (``finish`` rewrites them); the geo ones may not
        conventions = {k: v for k, v in got.items() if k not in dataset_attributes(got)}
        if comparable(conventions) != comparable(level_attributes(spec.grid, spec.crs, f)):
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
    for path, (v, lvl, is_missing) in gridded_arrays(spec).items():
        if check_gridded(path, docs[path], v, old_vars[v.name], lvl, is_missing, spec, ds[v.name].attrs, dim,
                          n_old, resuming):
            relayout.add((lvl, v.name))
    return relayout


def check_gridded(path: str, doc: dict, v: Any, v_old: Any, lvl: int, is_missing: bool, spec: Any,
                   src_attrs: dict, dim: str, n_old: int, resuming: bool) -> bool:
    """Check one gridded array; True when it must be relaid out (its shard shape changes).

    :param path: the array's path.
    :param doc: its ``zarr.json``.
    :param v: the variable's spec planned from the source.
    :param v_old: the variable's spec planned from the source cut to ``n_old`` entries.
    :param lvl: the level index.
    :param is_missing: the array is a scratch missing-count array.
    :param spec: the plan of the source.
    :param src_attrs: the source variable's attributes.
    :param dim: the append dim.
    :param n_old: the pyramid's length along ``dim``.
    :param resuming: the target holds an interrupted update of this source.
    """

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
    grid = chunk_grid_of(doc)
    codecs = doc.get("codecs") or []
    sharded = bool(codecs) and isinstance(codecs[0], dict) and codecs[0].get("name") == "sharding_indexed"
    inner = list(codecs[0].get("configuration", {}).get("chunk_shape") or []) if sharded else grid
    if sharded != (enc.shards is not None) or inner != list(enc.chunks):
        refuse("the chunks", inner if sharded else grid, list(enc.chunks), other)
    old_unit, new_unit = shard_unit(v_old, lvl), shard_unit(v, lvl)
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
    _check_attrs(path, doc, {**src_attrs, **packing_attrs(v)})
    return relayout


def _check_attrs(path: str, doc: dict, src_attrs: dict) -> None:
    """The array's attributes are the source's (besides those xarray adds when writing)."""
    want = {k: val for k, val in src_attrs.items() if k not in DROP_ATTRS}
    have = {k: val for k, val in (doc.get("attributes") or {}).items() if k not in _ENCODED_ATTRS}
    a, b = comparable(have), comparable(want)
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        detail = ", ".join(f"{k}: pyramid {short(a.get(k), 120)}, source {short(b.get(k), 120)}" for k in keys)
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


# -- gridded history, by sampling -----------------------------------------------------------------


def history_windows(shape: tuple[int, ...], chunks: tuple[int, ...], axis: int | None, n_old: int, samples: int,
                    seed: int) -> list[tuple[slice, ...]]:
    """A deterministic sample of ``samples`` chunk windows of an array (all of them when it has
    fewer chunks), over its first ``n_old`` entries along ``axis`` (its whole extent when None).

    Along ``axis`` the samples are spread evenly over the old chunks, the first and the last
    always included (the oldest and the newest existing entries); along the other dims each
    sample takes a chunk drawn with a seeded generator (the same for every run).

    :param shape: the array's shape.
    :param chunks: its (inner) chunk shape.
    :param axis: the index of the append dim, or None.
    :param n_old: the existing length along ``axis``.
    :param samples: how many windows.
    :param seed: the generator's seed.
    """
    extent = list(shape)
    if axis is not None:
        extent[axis] = min(int(n_old), extent[axis])
    if samples <= 0 or any(e <= 0 for e in extent):
        return []
    grid = [math.ceil(e / c) for e, c in zip(extent, chunks)]
    if math.prod(grid) <= samples:
        picks = sorted(np.ndindex(*grid))
    else:
        rng = np.random.default_rng(seed)
        chosen: set[tuple[int, ...]] = set()
        for k in range(samples):
            idx = [int(rng.integers(g)) for g in grid]
            if axis is not None:
                idx[axis] = grid[axis] - 1 if samples == 1 else round(k * (grid[axis] - 1) / (samples - 1))
            chosen.add(tuple(idx))
        while len(chosen) < samples:  # two draws hit the same chunk: draw more
            chosen.add(tuple(int(rng.integers(g)) for g in grid))
        picks = sorted(chosen)
    return [tuple(slice(i * c, min((i + 1) * c, e)) for i, c, e in zip(idx, chunks, extent)) for idx in picks]


def check_history(store: Any, ds: xr.Dataset, spec: Any, dim: str, n_old: int, samples: int,
                  skip: set[str] = frozenset()) -> int:
    """Compare sampled level-0 chunks of the pyramid with the source; returns how many were compared.

    Per gridded variable (except ``skip``), :func:`history_windows` picks ``samples`` level-0
    chunks (its inner chunks, ~500 KB each) over the first ``n_old`` entries along ``dim`` (the
    whole array for variables without ``dim``). Each is read from the pyramid as stored and from
    the source as a build writes it (cast to the variable's dtype) and compared exactly, NaN equal
    to NaN. A difference is rewritten history: refused, naming the variable and the index along
    ``dim``. Sampling bounds the cost (a few MB per variable whatever the pyramid's length); a
    change confined to chunks that were not sampled is not seen.

    :param store: the pyramid's zarr store.
    :param ds: the source dataset.
    :param spec: the plan of the source.
    :param dim: the append dim.
    :param n_old: the pyramid's length along ``dim``.
    :param samples: chunks per variable.
    :param skip: variables not to compare (e.g. those rewritten whole).
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0:
        raise ValueError(f"verify_samples must be an int >= 0, got {samples!r}")
    jobs = []
    for v in spec.variables:
        if v.name in skip:
            continue
        axis = v.dims.index(dim) if dim in v.dims else None
        windows = history_windows(v.shapes[0], v.encodings[0].chunks, axis, n_old, int(samples),
                                  zlib.crc32(v.name.encode()))
        if windows:
            arr = zarr.open_array(store, path=data_path(0, v.name), mode="r", zarr_format=3)
            jobs += [(v, arr, axis, w) for w in windows]
    if not jobs:
        return 0

    def compare(job: tuple) -> tuple | None:
        v, arr, axis, window = job
        have = np.asarray(arr[window])
        src = ds[v.name].isel({d: s for d, s in zip(v.dims, window)}).transpose(*v.dims)
        want = stored_values(v, np.asarray(src.values))
        differ = ~((have == want) | _both_nan(have, want))
        if not differ.any():
            return None
        at = tuple(s.start + int(i) for s, i in zip(window, np.argwhere(differ)[0]))  # first differing pixel
        return (axis is None, at[axis] if axis is not None else 0, v.name), v, axis, at

    with ThreadPoolExecutor(min(SAMPLE_THREADS, len(jobs)), thread_name_prefix="topozarr-history") as pool:
        found = [r for r in pool.map(compare, jobs) if r is not None]
    if found:  # report the earliest entry along dim (then variables without it)
        _, v, axis, at = min(found, key=lambda r: r[0])
        where = ", ".join(f"{d}={i}" for d, i in zip(v.dims, at))
        if axis is None:
            raise UpdateRefused(f"the values of {v.name!r} differ from the pyramid's (level-0 pixel {where}): the "
                                "source changed more than new entries; rebuild the pyramid")
        idx = at[axis]
        label = ""
        if dim in ds.coords and ds[dim].ndim == 1:
            label = f" ({dim} = {np.asarray(ds[dim].values)[idx]})"
        raise UpdateRefused(f"the source rewrote history: {v.name!r} at index {idx} along {dim!r}{label} differs "
                            f"from the pyramid's (level-0 pixel {where}); only appending is an update: rebuild "
                            "the pyramid")
    return len(jobs)


__all__ = ["UpdateRefused", "UPDATE_KEY", "DEFAULT_VERIFY_SAMPLES", "read_pyramid_root", "root_marker",
           "is_unpublished_update", "check_grid", "check_variables", "check_level0", "check_values", "check_docs",
           "history_windows", "check_history"]
