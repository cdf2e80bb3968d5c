"""Post-write validation of a pyramid: layout, convention schemas and spot-checked values.

:func:`validate_pyramid` reopens a written pyramid read-only and checks it against the
:class:`~topozarr_core.pyramid.Pyramid` that planned it:

* every level group and gridded variable exists with the planned shape, chunks, shards, dtype
  (and fill value / dimension names), and the root ``multiscales`` layout lists exactly the
  pyramid's levels;
* the root group document validates against the three convention schemas (multiscales,
  spatial, geo-proj; draft-07, shipped as package data, validated offline); the root's copies of
  level 0's non-spatial coordinates (:mod:`.root_coords`) are not levels: a published root that lists
  them must hold them equal to level 0's;
* a few tiny random windows of every level are compared with a reference computed straight from
  the source dataset (``xarray.coarsen`` of level 0, independent of the level-by-level kernels).

Pure library: no Prefect imports. Only small windows are read, so it is cheap on large pyramids.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr

from .kernels import block_reduce
from .packing import stored_values
from .root_coords import stale_names
from .root_doc import OWNED_KEY, STATUS_KEY
from .plan import VarSpec
from .targets import resolve_store

if TYPE_CHECKING:  # pragma: no cover
    from .pyramid import Pyramid

#: Convention schemas validated against the root group document (``schemas/<name>/schema.json``).
SCHEMA_NAMES = ("multiscales", "spatial", "geo-proj")
#: Largest spot-check window edge, in output pixels of the checked level.
WINDOW_EDGE = 3
#: Cap on level-0 pixels (per non-spatial index) read for one window; high levels get smaller windows.
MAX_SOURCE_PIXELS = 1 << 22
#: Methods whose levels >= 2 are computed level to level by design (not a function of level 0 alone).
LEVEL_TO_LEVEL_METHODS = ("mode", "majority")


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of :func:`validate_pyramid`."""

    #: per level: {"level", "shape" [ny, nx] (planned grid), "variables": {name: {"shape", "chunks",
    #: "shards", "dtype"}}} as found in the store (variables that could not be opened are absent).
    levels: list[dict] = field(default_factory=list)
    #: empty when the root zarr.json validates against all three convention schemas
    schema_errors: list[str] = field(default_factory=list)
    #: how many windows were compared
    spot_checks: int = 0
    #: one human-readable line per failed check (empty = OK)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.schema_errors and not self.mismatches

    @property
    def problems(self) -> list[str]:
        return [f"schema: {e}" for e in self.schema_errors] + list(self.mismatches)

    def summary(self) -> str:
        state = "OK" if self.ok else f"FAILED ({len(self.problems)} problems)"
        return f"pyramid validation {state}: {len(self.levels)} levels, {self.spot_checks} windows spot-checked"

    def raise_for_errors(self) -> None:
        """Raise ``ValueError`` listing every problem; return silently when the pyramid is OK."""
        if self.ok:
            return
        lines = "\n".join(f"- {p}" for p in self.problems)
        raise ValueError(f"{self.summary()}\n{lines}")


# -- schemas --------------------------------------------------------------------------------------


def load_schema(name: str) -> dict:
    """One of the bundled convention schemas (:data:`SCHEMA_NAMES`), as a dict."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; choose one of {SCHEMA_NAMES}")
    text = files("topozarr_core").joinpath("schemas", name, "schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _no_retrieval(uri: str):
    """Registry retrieve hook that fails closed: validation never touches the network."""
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(ref=uri)


@functools.cache
def _validators() -> tuple[tuple[str, Any], ...]:
    from jsonschema import Draft7Validator
    from referencing import Registry

    # Without an explicit registry jsonschema would download remote $refs (geo-proj refers to the
    # PROJJSON schema on proj.org). We never write proj:projjson; should a document carry one, its
    # $ref is reported as unresolvable instead of fetched.
    registry = Registry(retrieve=_no_retrieval)
    out = []
    for name in SCHEMA_NAMES:
        schema = load_schema(name)
        Draft7Validator.check_schema(schema)
        out.append((name, Draft7Validator(schema, registry=registry)))
    return tuple(out)


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_root_document(doc: dict) -> list[str]:
    """Errors of a root group document against the three convention schemas (empty = valid)."""
    errors: list[str] = []
    for name, validator in _validators():
        try:
            found = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
        except Exception as err:  # a remote $ref (never fetched) and the like
            errors.append(f"{name}: could not validate offline ({type(err).__name__}: {_short(str(err))})")
            continue
        for err in found:
            where = "/".join(str(p) for p in err.absolute_path) or "<document>"
            message = err.message
            instance = repr(err.instance)
            if len(instance) > 80 and message.startswith(instance):  # e.g. oneOf: "<whole attrs> is valid under..."
                message = "value" + message[len(instance):]
            errors.append(f"{name}: {where}: {_short(message)}")
    return errors


# -- helpers --------------------------------------------------------------------------------------


def _read_only(store: Any) -> Any:
    """The same store opened read-only when the store supports it (LocalStore, ObjectStore, Icechunk)."""
    if getattr(store, "read_only", False):
        return store
    try:
        return store.with_read_only(True)
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return store


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _same(a: Any, b: Any) -> bool:
    """JSON-value equality with a tiny tolerance on floats (attributes go through a JSON round trip)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _tuple(x: Any) -> tuple[int, ...] | None:
    return None if x is None else tuple(int(i) for i in x)


def _list(x: Any) -> list[int] | None:
    return None if x is None else [int(i) for i in x]


def _check_root(attrs: dict, pyramid: "Pyramid") -> list[str]:
    """The root attributes hold exactly the planned multiscales layout and geo attributes."""
    problems: list[str] = []
    if attrs.get(STATUS_KEY) is not None:
        problems.append(f"root: attribute {STATUS_KEY!r} is {attrs[STATUS_KEY]!r}: the write was not published")
    expected = _jsonable(pyramid.attrs)
    ms = attrs.get("multiscales")
    if not isinstance(ms, dict) or not isinstance(ms.get("layout"), list):
        problems.append("root: attributes have no 'multiscales' layout (pyramid not published?)")
    else:
        layout = ms["layout"]
        assets = [e.get("asset") if isinstance(e, dict) else None for e in layout]
        if assets != pyramid.level_names:
            problems.append(f"root: multiscales layout lists levels {assets}, expected exactly {pyramid.level_names}")
        else:
            for lvl, (got, want) in enumerate(zip(layout, expected["multiscales"]["layout"])):
                for key, value in want.items():
                    if key not in got:
                        problems.append(f"root: multiscales layout level {lvl} has no {key!r}")
                    elif not _same(got[key], value):
                        problems.append(
                            f"root: multiscales layout level {lvl} {key!r} is {got[key]!r}, expected {value!r}")
        want_method = expected["multiscales"].get("resampling_method")
        if ms.get("resampling_method") != want_method:
            problems.append(f"root: multiscales resampling_method is {ms.get('resampling_method')!r}, "
                            f"expected {want_method!r}")
    for key, value in expected.items():
        if key == "multiscales":
            continue
        if key not in attrs:
            problems.append(f"root: attribute {key!r} is missing")
        elif not _same(attrs[key], value):
            problems.append(
                f"root: attribute {key!r} is {_short(repr(attrs[key]), 200)}, expected {_short(repr(value), 200)}")
    return problems


def _check_array(arr: zarr.Array, v: VarSpec, level: int) -> tuple[dict, list[str]]:
    """Observed layout of one level array and its differences from the plan."""
    enc = v.encodings[level]
    want_dtype = np.dtype(v.level_dtype(level))
    shape, chunks, shards = _tuple(arr.shape), _tuple(arr.chunks), _tuple(arr.shards)
    got = {"shape": _list(shape), "chunks": _list(chunks), "shards": _list(shards), "dtype": str(np.dtype(arr.dtype))}
    where = f"level {level} {v.name!r}"
    problems = []
    if shape != _tuple(v.shapes[level]):
        problems.append(f"{where}: shape {shape}, expected {_tuple(v.shapes[level])}")
    if chunks != _tuple(enc.chunks):
        problems.append(f"{where}: chunks {chunks}, expected {_tuple(enc.chunks)}")
    if shards != _tuple(enc.shards):
        problems.append(f"{where}: shards {shards}, expected {_tuple(enc.shards)}")
    if np.dtype(arr.dtype) != want_dtype:
        problems.append(f"{where}: dtype {got['dtype']}, expected {want_dtype}")
    dims = getattr(arr.metadata, "dimension_names", None)
    if dims is not None and tuple(dims) != tuple(v.dims):
        problems.append(f"{where}: dimension names {tuple(dims)}, expected {tuple(v.dims)}")
    # Integer fill values are the zarr fill_value; xarray keeps a float _FillValue as an encoded
    # attribute instead (the array's fill_value stays NaN), so only integers are checked here.
    if v.fill_value is not None and want_dtype.kind in "iu" and want_dtype == np.dtype(arr.dtype):
        fill = arr.fill_value
        want = np.asarray(v.fill_value).astype(want_dtype)
        if fill is None or not np.array_equal(np.asarray(fill, dtype=want_dtype), want, equal_nan=True):
            problems.append(f"{where}: fill value {fill!r}, expected {want.item()!r}")
    return got, problems


def _open_node(group: zarr.Group, name: str) -> Any:
    try:
        return group[name]
    except KeyError:
        return None


# -- value spot checks ----------------------------------------------------------------------------


def _window(rng: np.random.Generator, shape: tuple[int, ...], yi: int, xi: int, factor: int
            ) -> tuple[slice, ...] | None:
    """A random window of up to WINDOW_EDGE x WINDOW_EDGE output pixels (one index on other dims)."""
    if any(n == 0 for n in shape):
        return None
    h, w = min(WINDOW_EDGE, shape[yi]), min(WINDOW_EDGE, shape[xi])
    while h * w * factor * factor > MAX_SOURCE_PIXELS and (h > 1 or w > 1):
        if h >= w:
            h -= 1
        else:
            w -= 1
    out = []
    for axis, n in enumerate(shape):
        size = h if axis == yi else w if axis == xi else 1
        start = int(rng.integers(0, n - size + 1))
        out.append(slice(start, start + size))
    return tuple(out)


def _describe(v: VarSpec, window: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{d}={s.start}:{s.stop}" for d, s in zip(v.dims, window)) + "]"


def _fill_missing(red: xr.DataArray, v: VarSpec, out_dtype: np.dtype) -> xr.DataArray:
    if v.fill_value is not None:
        return red.fillna(v.fill_value)
    return red if out_dtype.kind == "f" else red.fillna(0)


def _reference(pyramid: "Pyramid", v: VarSpec, level: int, window: tuple[slice, ...]
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """(expected values, per-pixel absolute tolerance scale or None) of one output window."""
    spec = pyramid.spec
    f = spec.factors[level]
    yi, xi = v.axes(spec.y_dim, spec.x_dim)
    src_window = {
        d: (slice(s.start * f, s.stop * f) if i in (yi, xi) else s) for i, (d, s) in enumerate(zip(v.dims, window))
    }
    src = pyramid.ds[v.name].isel(src_window).transpose(*v.dims).load()
    src = src.copy(data=stored_values(v, np.asarray(src.values)))
    out_dtype = np.dtype(v.level_dtype(level))
    if level == 0:
        return src.values, None
    if v.method == "nearest":
        return src.isel({spec.y_dim: slice(0, None, f), spec.x_dim: slice(0, None, f)}).values.astype(out_dtype), None
    if v.method in LEVEL_TO_LEVEL_METHODS:
        moved = np.moveaxis(src.values, (yi, xi), (-2, -1))
        out, _ = block_reduce(np.ascontiguousarray(moved), f, v.method, v.fill_value)
        return np.moveaxis(out, (-2, -1), (yi, xi)).astype(out_dtype), None
    # mean / max / min / sum: straight xarray.coarsen of level 0, as the lazy path does.
    masked = src if v.fill_value is None else src.where(src != v.fill_value)
    windows = {spec.y_dim: f, spec.x_dim: f}
    red = getattr(masked.coarsen(windows, boundary="trim"), v.method)()
    if v.method != "sum":
        red = _fill_missing(red, v, out_dtype)
    values = red.values
    if out_dtype.kind in "iu" and values.dtype.kind == "f":
        values = np.rint(values)
    scale = None
    if v.method in ("mean", "sum") and out_dtype.kind == "f":
        # Float means/sums accumulate rounding that is relative to the magnitudes summed, not to the
        # (possibly cancelled) result: allow rtol * the same reduction of |values| as absolute slack.
        scale = np.nan_to_num(getattr(abs(masked).coarsen(windows, boundary="trim"), v.method)().values)
    return values.astype(out_dtype), scale


def _compare(got: np.ndarray, ref: np.ndarray, scale: np.ndarray | None, v: VarSpec, level: int,
             rtol: float) -> str | None:
    """None when the window matches, else a description of the difference."""
    if got.shape != ref.shape:
        return f"read shape {got.shape}, reference shape {ref.shape}"
    if got.dtype.kind == "f" or ref.dtype.kind == "f":
        if got.dtype == np.float16:  # each level is rounded to float16 (~1e-3) before the next is built
            rtol = max(rtol, 4 * float(np.finfo(np.float16).eps))
        g, r = got.astype("f8"), ref.astype("f8")
        if level == 0:
            bad = ~((g == r) | (np.isnan(g) & np.isnan(r)))
        else:
            atol = 0.0 if scale is None else rtol * scale
            bad = ~np.isclose(g, r, rtol=rtol, atol=atol, equal_nan=True)
    else:
        # Integers compare exactly, except integer "mean" at levels >= 2: those levels are built
        # from the previous, already rounded level, so they may differ from a direct rounded mean
        # of level 0 by one unit.
        if v.method == "mean" and level >= 2:
            bad = np.abs(got.astype("i8") - ref.astype("i8")) > 1  # mean keeps the (<= int64) source dtype
        else:
            bad = got != ref
    if not bad.any():
        return None
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{int(bad.sum())}/{bad.size} pixels differ, e.g. at window index {first}: "
            f"written {got[first].item()!r}, expected {ref[first].item()!r}")


def _spot_check(pyramid: "Pyramid", arr: zarr.Array, v: VarSpec, level: int, rng: np.random.Generator,
                samples: int, rtol: float) -> tuple[int, list[str]]:
    spec = pyramid.spec
    yi, xi = v.axes(spec.y_dim, spec.x_dim)
    f = spec.factors[level]
    checked, problems = 0, []
    for _ in range(samples):
        window = _window(rng, tuple(v.shapes[level]), yi, xi, f)
        if window is None:
            break
        where = f"level {level} {v.name!r} window {_describe(v, window)}"
        try:
            got = np.asarray(arr[window])
            ref, scale = _reference(pyramid, v, level, window)
        except Exception as err:
            problems.append(f"{where}: could not be checked ({type(err).__name__}: {_short(str(err), 200)})")
            continue
        checked += 1
        diff = _compare(got, ref, scale, v, level, rtol)
        if diff is not None:
            method = "source" if level == 0 else f"{v.method} of the source, factor {f}"
            problems.append(f"{where}: written values differ from the {method}: {diff}")
    return checked, problems


# -- entry point ----------------------------------------------------------------------------------


def validate_pyramid(
    pyramid: "Pyramid",
    store: Any,
    samples_per_level: int = 4,
    seed: int = 0,
    check_values: bool = True,
    rtol: float = 1e-5,
    root_attrs: dict | None = None,
) -> ValidationReport:
    """Check a written pyramid against its plan; never writes. See the module docstring.

    ``root_attrs``: check these root attributes instead of the stored root's -- the flows validate
    a pyramid *before* publishing its root, so a pyramid that fails is never published.

    ``store`` is anything :func:`topozarr_core.targets.resolve_store` accepts (a path, URL, zarr
    store, Icechunk session or session store); it is opened read-only. Uncommitted Icechunk
    changes are visible when the writable session's store is passed.
    """
    if isinstance(samples_per_level, bool) or not isinstance(samples_per_level, (int, np.integer)) \
            or samples_per_level < 0:
        raise ValueError(f"samples_per_level must be an int >= 0, got {samples_per_level!r}")
    if not (isinstance(rtol, (int, float)) and rtol >= 0):
        raise ValueError(f"rtol must be a number >= 0, got {rtol!r}")
    spec = pyramid.spec
    zstore = _read_only(resolve_store(store))
    try:
        root = zarr.open_group(zstore, mode="r", zarr_format=3)
    except Exception as err:
        msg = f"root: no pyramid group could be opened ({type(err).__name__}: {_short(str(err), 200)})"
        return ValidationReport(levels=[], schema_errors=["no root group document to validate"],
                                spot_checks=0, mismatches=[msg])

    attrs = dict(root.attrs) if root_attrs is None else dict(root_attrs)
    schema_errors = validate_root_document({"zarr_format": 3, "node_type": "group", "attributes": _jsonable(attrs)})
    mismatches = _check_root(attrs, pyramid)
    if root_attrs is None and OWNED_KEY in attrs:  # a published root of ours lists its coordinate copies
        mismatches.extend(f"root: the copy of level 0's coordinate {name!r} at the root is missing or differs from "
                          f"level 0's (zarr-layer's value selectors read it)" for name in stale_names(zstore, attrs))

    rng = np.random.default_rng(seed)
    spot_checks = 0
    levels: list[dict] = []
    for lvl in range(pyramid.levels):
        ny, nx = pyramid.level_shape(lvl)
        entry: dict[str, Any] = {"level": lvl, "shape": [ny, nx], "variables": {}}
        levels.append(entry)
        group = _open_node(root, str(lvl))
        if not isinstance(group, zarr.Group):
            mismatches.append(f"level {lvl}: group {str(lvl)!r} is missing")
            continue
        for axis, n in ((spec.y_dim, ny), (spec.x_dim, nx)):
            coord = _open_node(group, axis)
            if not isinstance(coord, zarr.Array):
                mismatches.append(f"level {lvl}: coordinate {axis!r} is missing")
            elif tuple(coord.shape) != (n,):
                mismatches.append(f"level {lvl}: coordinate {axis!r} has shape {tuple(coord.shape)}, expected {(n,)}")
        for name in spec.carried:
            if not isinstance(_open_node(group, name), zarr.Array):
                mismatches.append(f"level {lvl}: carried variable {name!r} is missing")
        for v in spec.variables:
            arr = _open_node(group, v.name)
            if not isinstance(arr, zarr.Array):
                mismatches.append(f"level {lvl} {v.name!r}: array is missing")
                continue
            observed, problems = _check_array(arr, v, lvl)
            entry["variables"][v.name] = observed
            mismatches.extend(problems)
            if problems or not check_values or v.is_coord:
                continue  # no values to trust on a wrong layout; coordinates are not spot-checked
            if v.method in LEVEL_TO_LEVEL_METHODS and lvl >= 2:
                continue  # built from the previous level by design; level 1 is checked against level 0
            n, problems = _spot_check(pyramid, arr, v, lvl, rng, int(samples_per_level), float(rtol))
            spot_checks += n
            mismatches.extend(problems)
    return ValidationReport(levels=levels, schema_errors=schema_errors, spot_checks=spot_checks,
                            mismatches=mismatches)


__all__ = ["ValidationReport", "validate_pyramid", "validate_root_document", "load_schema", "SCHEMA_NAMES"]
