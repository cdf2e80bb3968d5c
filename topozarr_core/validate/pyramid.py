"""Post-write validation of a pyramid: layout, convention schemas and spot-checked values.

:func:`validate_pyramid` reopens a written pyramid read-only and checks it against the
:class:`~topozarr_core.pyramid.Pyramid` that planned it:

* every level group and gridded variable exists with the planned shape, chunks, shards, dtype
  (and fill value / dimension names), and the root ``multiscales`` layout lists exactly the
  pyramid's levels;
* the root group document validates against the three convention schemas (multiscales,
  spatial, geo-proj; draft-07, shipped as package data, validated offline); the root's copies of
  level 0's non-spatial coordinates (:mod:`topozarr_core.publish.root_coords`) are not levels: a published root that lists
  them must hold them equal to level 0's;
* a few tiny random windows of every level are compared with a reference computed straight from
  the source dataset (``xarray.coarsen`` of level 0, independent of the level-by-level kernels;
  :mod:`topozarr_core.validate.spot_checks`).

:func:`check_level` checks one level (the flows check each level as soon as it is written, while
the coarser ones are being written, and hand the results to :func:`validate_pyramid`).

Pure library: no Prefect imports. Only small windows are read, so it is cheap on large pyramids.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from topozarr_core.publish.root_coords import stale_names
from topozarr_core.publish.root_doc import OWNED_KEY, STATUS_KEY
from topozarr_core.spec.variables import VarSpec
from topozarr_core.store.targets import resolve_store
from topozarr_core.text import clip
from topozarr_core.validate.spot_checks import SpotReferences, level_windows, spot_check

if TYPE_CHECKING:  # pragma: no cover
    from topozarr_core.pyramid import Pyramid

#: Convention schemas validated against the root group document (``schemas/<name>/schema.json``).
SCHEMA_NAMES = ("multiscales", "spatial", "geo-proj")


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
        """True when no schema error and no mismatch was found."""
        return not self.schema_errors and not self.mismatches

    @property
    def problems(self) -> list[str]:
        """Every problem found, one line each."""
        return [f"schema: {e}" for e in self.schema_errors] + list(self.mismatches)

    def summary(self) -> str:
        """One line: OK or how many problems, levels and windows checked."""
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
    """One of the bundled convention schemas (:data:`SCHEMA_NAMES`), as a dict.

    :param name: the schema's name.
    """
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; choose one of {SCHEMA_NAMES}")
    text = files("topozarr_core.validate").joinpath("schemas", name, "schema.json").read_text(encoding="utf-8")
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


def validate_root_document(doc: dict) -> list[str]:
    """Errors of a root group document against the three convention schemas (empty = valid).

    :param doc: the root ``zarr.json`` as JSON.
    """
    errors: list[str] = []
    for name, validator in _validators():
        try:
            found = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
        except Exception as err:  # noqa: BLE001 -- a remote $ref (never fetched) and the like
            errors.append(f"{name}: could not validate offline ({type(err).__name__}: {clip(str(err))})")
            continue
        for err in found:
            where = "/".join(str(p) for p in err.absolute_path) or "<document>"
            message = err.message
            instance = repr(err.instance)
            if len(instance) > 80 and message.startswith(instance):  # e.g. oneOf: "<whole attrs> is valid under..."
                message = "value" + message[len(instance):]
            errors.append(f"{name}: {where}: {clip(message)}")
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


def _check_root(attrs: dict, pyramid: Pyramid) -> list[str]:
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
                f"root: attribute {key!r} is {clip(repr(attrs[key]), 200)}, expected {clip(repr(value), 200)}")
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


# -- entry point ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelCheck:
    """Outcome of :func:`check_level`: one level's part of a :class:`ValidationReport`."""

    level: int
    entry: dict  # as in ValidationReport.levels
    spot_checks: int
    mismatches: list[str]


def _check_args(samples_per_level: Any, rtol: Any) -> None:
    if isinstance(samples_per_level, bool) or not isinstance(samples_per_level, (int, np.integer)) \
            or samples_per_level < 0:
        raise ValueError(f"samples_per_level must be an int >= 0, got {samples_per_level!r}")
    if not (isinstance(rtol, (int, float)) and rtol >= 0):
        raise ValueError(f"rtol must be a number >= 0, got {rtol!r}")


def check_level(
    pyramid: Pyramid,
    store: Any,
    level: int,
    samples_per_level: int = 4,
    seed: int = 0,
    check_values: bool = True,
    rtol: float = 1e-5,
    references: SpotReferences | None = None,
) -> LevelCheck:
    """Check one written level (its arrays' layout and spot-checked values); never writes.

    A level can be checked as soon as it is written, while coarser ones are still being written:
    pass the result to :func:`validate_pyramid` (``checked_levels``) instead of checking it again.
    The windows of a level depend on ``seed`` and the level only, so both ways check the same ones.

    :param pyramid: the pyramid as planned.
    :param store: where it was written: a path, URL or zarr store.
    :param level: the level index.
    :param samples_per_level: random windows compared per variable.
    :param seed: the seed of the windows' generator.
    :param check_values: compare values with the source (else the layout only).
    :param rtol: the relative tolerance of the value comparison.
    :param references: the windows' references computed ahead from the source
        (:meth:`SpotReferences.prepare`, same samples and seed); the others are computed here.
    """
    _check_args(samples_per_level, rtol)
    zstore = _read_only(resolve_store(store))
    try:
        root = zarr.open_group(zstore, mode="r", zarr_format=3)
    except Exception as err:  # noqa: BLE001 -- a target that cannot be opened is a finding of the report
        ny, nx = pyramid.level_shape(level)
        return LevelCheck(level, {"level": level, "shape": [ny, nx], "variables": {}}, 0,
                          [f"level {level}: no pyramid group could be opened ({type(err).__name__}: "
                           f"{clip(str(err), 200)})"])
    return _check_level(pyramid, root, level, int(samples_per_level), seed, check_values, float(rtol), references)


def _check_level(pyramid: Pyramid, root: zarr.Group, lvl: int, samples: int, seed: int, check_values: bool,
                 rtol: float, references: SpotReferences | None = None) -> LevelCheck:
    spec = pyramid.spec
    windows = level_windows(pyramid, lvl, samples, seed) if check_values else {}  # by checked variable
    ny, nx = pyramid.level_shape(lvl)
    entry: dict[str, Any] = {"level": lvl, "shape": [ny, nx], "variables": {}}
    mismatches: list[str] = []
    spot_checks = 0
    group = _open_node(root, str(lvl))
    if not isinstance(group, zarr.Group):
        return LevelCheck(lvl, entry, 0, [f"level {lvl}: group {str(lvl)!r} is missing"])
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
        if problems or v.name not in windows:
            continue  # no values to trust on a wrong layout; see spot_checks.checked_variables for the others
        n, problems = spot_check(pyramid, arr, v, lvl, windows[v.name], rtol, references)
        spot_checks += n
        mismatches.extend(problems)
    return LevelCheck(lvl, entry, spot_checks, mismatches)


def validate_pyramid(
    pyramid: Pyramid,
    store: Any,
    samples_per_level: int = 4,
    seed: int = 0,
    check_values: bool = True,
    rtol: float = 1e-5,
    root_attrs: dict | None = None,
    checked_levels: Mapping[int, LevelCheck] | None = None,
    references: SpotReferences | None = None,
) -> ValidationReport:
    """Check a written pyramid against its plan; never writes. See the module docstring.

    ``root_attrs``: check these root attributes instead of the stored root's -- the flows validate
    a pyramid *before* publishing its root, so a pyramid that fails is never published.

    ``checked_levels``: levels already checked (:func:`check_level`, same samples, seed and rtol)
    since they were last written; they are not read again.

    ``store`` is anything :func:`topozarr_core.store.targets.resolve_store` accepts (a path, URL, zarr
    store, Icechunk session or session store); it is opened read-only. Uncommitted Icechunk
    changes are visible when the writable session's store is passed.

    :param pyramid: the plan the pyramid was written from.
    :param store: the written pyramid (see above).
    :param samples_per_level: chunks per level and variable whose values are compared with the
        source coarsened independently.
    :param seed: the seed that picks the samples.
    :param check_values: ``False`` checks only the structure and metadata.
    :param rtol: the relative tolerance of the value comparison.
    :param root_attrs: see above.
    :param checked_levels: see above.
    :param references: spot-check references computed ahead from the source (:class:`SpotReferences`).
    :returns: a :class:`ValidationReport` (``ok``, ``problems``, ``summary()``).
    """
    _check_args(samples_per_level, rtol)
    zstore = _read_only(resolve_store(store))
    try:
        root = zarr.open_group(zstore, mode="r", zarr_format=3)
    except Exception as err:  # noqa: BLE001 -- a target that cannot be opened is a finding of the report
        msg = f"root: no pyramid group could be opened ({type(err).__name__}: {clip(str(err), 200)})"
        return ValidationReport(levels=[], schema_errors=["no root group document to validate"],
                                spot_checks=0, mismatches=[msg])

    attrs = dict(root.attrs) if root_attrs is None else dict(root_attrs)
    schema_errors = validate_root_document({"zarr_format": 3, "node_type": "group", "attributes": _jsonable(attrs)})
    mismatches = _check_root(attrs, pyramid)
    if root_attrs is None and OWNED_KEY in attrs:  # a published root of ours lists its coordinate copies
        mismatches.extend(f"root: the copy of level 0's coordinate {name!r} at the root is missing or differs from "
                          f"level 0's (zarr-layer's value selectors read it)" for name in stale_names(zstore, attrs))

    checked = dict(checked_levels or {})
    spot_checks = 0
    levels: list[dict] = []
    for lvl in range(pyramid.levels):
        found = checked.get(lvl) or _check_level(pyramid, root, lvl, int(samples_per_level), seed, check_values,
                                                 float(rtol), references)
        levels.append(found.entry)
        spot_checks += found.spot_checks
        mismatches.extend(found.mismatches)
    return ValidationReport(levels=levels, schema_errors=schema_errors, spot_checks=spot_checks,
                            mismatches=mismatches)


__all__ = ["LevelCheck", "SpotReferences", "ValidationReport", "check_level", "validate_pyramid", "validate_root_document",
           "load_schema", "SCHEMA_NAMES"]
