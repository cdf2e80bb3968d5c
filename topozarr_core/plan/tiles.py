"""The tile plan: plain data saying what each unit of work writes, run unchanged by every executor.

A **tile** is a window of the pyramid that covers whole shards of a run of consecutive levels. A
tile of the first stage reads its window of the source once, writes level 0 there and reduces it
in memory through levels 1..k, writing whole shards of each (region by region: memory stays at a
few regions whatever the tile's size, see :mod:`topozarr_core.write.level_cache`). The levels above ``k`` cover a
4**-k share of the pixels; a later stage builds them the same way from level ``k`` read back from
the target (with its hidden missing counts, so means stay exact), in tiles of its own. Because a
tile owns every shard it writes, tiles run in any order and on any machine, and a failed tile is
retried on its own.

How tiles are chosen (:func:`build_tile_plan`), per group of variables sharing a layout:

* a stage starts at a level ``s`` (0, or the level after the previous stage's last) and grows one
  level at a time while the tile that covers whole shards of every level so far (the least common
  multiple of their shard footprints, in level-0 pixels; the whole extent once it reaches it)
  reads at most ``max_tile_bytes`` of its stage's input, and while each level's regions line up
  with the next level's windows (else the levels above start a new stage);
* it also stops where it would leave fewer than ``min_tiles`` tiles (the parallelism a distributed run
  wants at its end, when only the last stages are left);
* its tiles then grow, in whole multiples of that tile, to the fewest that stay within
  ``max_tile_bytes`` and keep ``min_tiles`` (near-equal along each dim): a task costs its runner a
  fixed time, so small tiles where larger ones fit spend it for nothing;
* once what is left fits in one tile (the whole extent within ``max_tile_bytes``), one tile builds
  every remaining level: a whole-extent window lines up with everything, and another stage would
  cost a barrier and a read-back for seconds of work;
* with ``max_tiles``, tiles are merged (twice as large along the dimension with most tiles, again
  and again) until the plan has at most that many;
* ``max_tile_bytes=None`` gives one stage of one tile per group: the whole pyramid (what
  ``Pyramid.write`` runs by default, in its thread pool).

A tile's window holds, per dim of its variables, a half-open range: spatial dims in level-0
pixels, other dims in indices. Its regions (:meth:`TilePlan.region_plan`) are expanded only when
it runs, so planning costs time per tile, not per region (a 13.5 TB raster plans in a second).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from topozarr_core.plan.graph import RegionIndex
from topozarr_core.plan.regions import Box, RegionPlan, build_region_plan, restrict_plan, write_unit
from topozarr_core.spec.variables import VarSpec, find_var

#: ``Pyramid.tile_plan``'s default source bytes per tile: the work (and the source reads) of one task.
#: A tile streams its input region by region and keeps only its coarser levels, so its memory is well
#: below its input (measured: a worker's peak RSS 640-890 MB with 1 GiB tiles, 640-780 MB with 256 MiB);
#: a task costs its runner a fixed time, so fewer, larger tiles spend less of a run in Prefect, and a
#: source that fits one tile is written by one task the way ``Pyramid.write`` writes it.
DEFAULT_TILE_BYTES = 2**30


@dataclass(frozen=True)
class Tile:
    """One unit of work: the shards of ``levels`` of ``variables`` inside ``window``."""

    key: str
    stage: int
    variables: tuple[str, ...]
    #: levels written, finest first
    levels: tuple[int, ...]
    #: level read back from the target (its missing counts too); None: the source dataset (then the
    #: tile writes level 0)
    reads: int | None
    #: per dim of its variables: spatial dims in level-0 pixels, other dims in indices
    window: Box

    @property
    def label(self) -> str:
        """``S0-00003 (levels 0-2)``: the key and what it writes, for logs and task names."""
        lv = f"level {self.levels[0]}" if len(self.levels) == 1 else f"levels {self.levels[0]}-{self.levels[-1]}"
        return f"{self.key} ({lv})"


@dataclass(frozen=True)
class TilePlan:
    """Every tile of a pyramid write, with what executors need to expand and order them."""

    x_dim: str
    y_dim: str
    factors: tuple[int, ...]
    variables: tuple[VarSpec, ...]
    source_chunks: dict[str, tuple[int, ...] | None]
    max_region_bytes: int
    tiles: tuple[Tile, ...]
    #: an update's window (``restrict_plan`` arguments: dim, start, stop, whole, clip), else None
    restricted: dict[str, Any] | None = None
    #: the ``max_tile_bytes`` and ``max_tiles`` the tiles were sized with
    sizing: dict[str, Any] = field(default_factory=dict)

    # -- description ---------------------------------------------------------------------------
    def var(self, name: str) -> VarSpec:
        """The spec of variable ``name``; KeyError when the plan has none.

        :param name: the variable's name.
        """
        return find_var(self.variables, name)

    def tile(self, key: str) -> Tile:
        """The tile whose key is ``key``; KeyError naming it when the plan has none.

        :param key: a tile key such as ``S0-00003``.
        """
        index = self.__dict__.get("_by_key")
        if index is None:
            index = {t.key: t for t in self.tiles}
            object.__setattr__(self, "_by_key", index)
        try:
            return index[key]
        except KeyError:
            raise KeyError(f"no tile {key!r} in this plan") from None

    @property
    def stages(self) -> list[int]:
        """The stage numbers, ascending."""
        return sorted({t.stage for t in self.tiles})

    @property
    def levels(self) -> list[int]:
        """The levels that the tiles write, ascending."""
        return sorted({lvl for t in self.tiles for lvl in t.levels})

    @property
    def handoff_levels(self) -> list[int]:
        """Levels this plan writes and a later stage reads back from the target: their tiles store the
        missing counts too (a level the plan only reads has its counts recomputed from level 0)."""
        written = set(self.levels)
        return sorted({t.reads for t in self.tiles if t.reads is not None and t.reads in written})

    def fingerprint(self) -> str:
        """Stable hash of the plan (a retried run checks its source still gives the same plan)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            described = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tiles"}
            described["variables"] = [asdict(v) for v in self.variables]
            blob = json.dumps(described, sort_keys=True, default=str)
            digest = hashlib.sha256(blob.encode())
            for t in self.tiles:
                digest.update(repr((t.key, t.variables, t.levels, t.reads, t.window)).encode())
            cached = digest.hexdigest()[:16]
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    def depends(self) -> dict[str, tuple[str, ...]]:
        """Tile key -> the keys of the tiles that write what it reads (the previous stage's tiles of
        the same variables whose windows meet its window). Tiles of the first stage wait for none."""
        cached = self.__dict__.get("_depends")
        if cached is not None:
            return cached
        out: dict[str, tuple[str, ...]] = {t.key: () for t in self.tiles}
        writers: dict[tuple[int, tuple[str, ...]], tuple[RegionIndex, list[str]]] = {}
        for t in self.tiles:
            for lvl in t.levels:
                index, keys = writers.setdefault((lvl, t.variables), (RegionIndex(), []))
                index.add(t.window, len(keys))
                keys.append(t.key)
        for index, _ in writers.values():
            index.freeze()
        for t in self.tiles:
            if t.reads is None:
                continue
            index, keys = writers[(t.reads, t.variables)]
            out[t.key] = tuple(keys[i] for i in sorted(index.overlapping(t.window)))
        object.__setattr__(self, "_depends", out)
        return out

    def window_at(self, window: Box, v: VarSpec, level: int) -> Box:
        """A tile window (spatial dims in level-0 pixels) of variable ``v`` in ``level``'s index space: a
        window that reaches the level-0 edge reaches the level's edge.

        :param window: the window, per dim of ``v``.
        :param v: the variable.
        :param level: the level.
        """
        yi, xi = v.axes(self.y_dim, self.x_dim)
        f, n0 = self.factors[level], v.shapes[0]
        return tuple((a // f, (b // f if b < n0[d] else v.shapes[level][d])) if d in (yi, xi) else (a, b)
                     for d, (a, b) in enumerate(window))

    def level_windows(self, tile: Tile) -> dict[tuple[int, str], Box]:
        """The tile's window at each level it writes, per variable, in that level's index space."""
        return {(lvl, name): self.window_at(tile.window, self.var(name), lvl)
                for name in tile.variables for lvl in tile.levels}

    def region_plan(self, tiles: list[Tile] | tuple[Tile, ...]) -> RegionPlan:
        """The regions of ``tiles`` (one tile for a task; a whole stage for an in-process executor),
        as the plan the region executor runs. Its ``extra`` names the levels whose missing counts go
        to (``handoff``) and come from (``reads``) the target."""
        windows: dict[tuple[int, str], list[Box]] = {}
        for t in tiles:
            for key, window in self.level_windows(t).items():
                windows.setdefault(key, []).append(window)
        levels = sorted({lvl for t in tiles for lvl in t.levels})
        plan = build_region_plan(x_dim=self.x_dim, y_dim=self.y_dim, factors=list(self.factors),
                                 variables=list(self.variables), source_chunks=self.source_chunks,
                                 max_region_bytes=self.max_region_bytes, levels=levels, windows=windows,
                                 extra={"handoff": self.handoff_levels})
        if self.restricted is not None:  # an update: only what changes (tiles cut along its dim only)
            r = self.restricted
            plan = restrict_plan(plan, r["dim"], r["start"], r["stop"], whole={tuple(p) for p in r["whole"]},
                                 clip=r["clip"])
        return plan

    def source_bytes(self, tile: Tile) -> int:
        """Bytes of what the tile reads (its window of the source, or of level ``reads``)."""
        total = 0
        for name in tile.variables:
            v = self.var(name)
            lvl = 0 if tile.reads is None else tile.reads
            yi, xi = v.axes(self.y_dim, self.x_dim)
            f = self.factors[lvl]
            n = 1
            for d, (a, b) in enumerate(tile.window):
                n *= max(0, (b - a) // f) if d in (yi, xi) else (b - a)
            total += n * np.dtype(v.level_dtype(lvl)).itemsize
        return total

    def summary(self) -> list[dict[str, Any]]:
        """One row per stage and variable group: what an operator reads in a plan log or artifact."""
        rows: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
        for t in self.tiles:
            row = rows.setdefault((t.stage, t.variables), {
                "stage": t.stage, "variables": list(t.variables), "levels": list(t.levels),
                "reads": "source" if t.reads is None else f"level {t.reads}", "tiles": 0, "max_tile_MB": 0.0})
            row["tiles"] += 1
            row["max_tile_MB"] = max(row["max_tile_MB"], round(self.source_bytes(t) / 1e6, 1))
        return list(rows.values())


# -- planning ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stage:
    reads: int | None
    levels: tuple[int, ...]
    #: tile size per dim (spatial in level-0 pixels), each at most the dim's extent
    size: tuple[int, ...]


def _groups(variables: list[VarSpec], levels: list[int]) -> list[list[VarSpec]]:
    """Variables sharing dims, shapes and write units at every planned level: tiled together."""
    groups: dict[tuple, list[VarSpec]] = {}
    for v in variables:
        key = (v.dims, v.shapes, tuple(write_unit(v.encodings[lvl]) for lvl in levels))
        groups.setdefault(key, []).append(v)
    return list(groups.values())


def _footprint(v: VarSpec, level: int, factors: tuple[int, ...], yi: int, xi: int) -> tuple[int, ...]:
    """A level's write unit per dim, spatial dims in level-0 pixels, capped at the level-0 extent."""
    unit = write_unit(v.encodings[level])
    f = factors[level]
    return tuple(min(u * f, n) if d in (yi, xi) else min(u, n) for d, (u, n) in enumerate(zip(unit, v.shapes[0])))


def _combine(size: tuple[int, ...], unit: tuple[int, ...], extent: tuple[int, ...]) -> tuple[int, ...]:
    """The smallest size that is a multiple of both (per dim), or the whole extent."""
    return tuple(n if s >= n or u >= n else min(math.lcm(s, u), n) for s, u, n in zip(size, unit, extent))


def _lines_up(v: VarSpec, level: int, factors: tuple[int, ...], yi: int, xi: int) -> bool:
    """Whether the regions of ``level - 1`` start where level ``level``'s windows do: a region then
    reduces its own output into the next level in memory (see :mod:`topozarr_core.write.level_cache`)."""
    step = factors[level] // factors[level - 1]
    unit = write_unit(v.encodings[level - 1])
    prev = v.shapes[level - 1]
    return all(unit[d] % step == 0 or unit[d] >= prev[d] for d in (yi, xi))


def _window_bytes(group: list[VarSpec], size: tuple[int, ...], reads: int | None, factors: tuple[int, ...],
                  yi: int, xi: int) -> int:
    f = factors[0 if reads is None else reads]
    n = math.prod(max(1, s // f) if d in (yi, xi) else s for d, s in enumerate(size))
    lvl = 0 if reads is None else reads
    return n * sum(np.dtype(v.level_dtype(lvl)).itemsize for v in group)


def _stages(group: list[VarSpec], levels: list[int], factors: tuple[int, ...], y_dim: str, x_dim: str,
            max_tile_bytes: int | None, source_chunks: dict[str, tuple[int, ...] | None],
            min_tiles: int = 1) -> list[_Stage]:
    v = group[0]
    yi, xi = v.axes(y_dim, x_dim)
    extent = tuple(v.shapes[0])
    if max_tile_bytes is None:
        return [_Stage(None if levels[0] == 0 else levels[0] - 1, tuple(levels), extent)]
    stages: list[_Stage] = []
    reads: int | None = None if levels[0] == 0 else levels[0] - 1

    def tiles(size: tuple[int, ...]) -> int:
        return math.prod(math.ceil(n / s) for s, n in zip(size, extent))

    def fits(size: tuple[int, ...], before: tuple[int, ...] | None = None) -> bool:
        """Within the byte budget, and (when growing from ``before``) not fewer tiles than ``min_tiles``
        where ``before`` had enough: the last stages keep every worker busy."""
        if _window_bytes(group, size, reads, factors, yi, xi) > max_tile_bytes:
            return False
        return before is None or tiles(size) >= min(min_tiles, tiles(before))

    i = 0
    while i < len(levels):
        if _window_bytes(group, extent, reads, factors, yi, xi) <= max_tile_bytes:
            # what is left fits in one tile: one task builds every remaining level (whole-extent
            # windows line up with everything); another stage would cost a barrier and a read-back
            # for work that one process does in seconds
            stages.append(_Stage(reads, tuple(levels[i:]), extent))
            break
        size = _footprint(v, levels[i], factors, yi, xi)
        if reads is None:
            chunks = source_chunks.get(v.name)
            same = chunks and all(source_chunks.get(w.name) == chunks for w in group)
            read_unit = tuple(min(int(c), n) for c, n in zip(chunks, extent)) if same else None
        else:
            read_unit = _footprint(v, reads, factors, yi, xi)
        if read_unit is not None:
            # tiles that also cut their input at its chunk (shard) boundaries read each of them once
            aligned = _combine(size, read_unit, extent)
            if fits(aligned, size):
                size = aligned
        top = i
        while top + 1 < len(levels):
            nxt = levels[top + 1]
            if nxt != levels[top] + 1 or not _lines_up(v, nxt, factors, yi, xi):
                break
            grown = _combine(size, _footprint(v, nxt, factors, yi, xi), extent)
            if not fits(grown, size):
                break
            size, top = grown, top + 1
        # more entries of the other dims per tile while it fits: a task's fixed cost stays small
        for d in range(len(extent)):
            if d in (yi, xi) or size[d] >= extent[d]:
                continue
            per = size[d]
            while size[d] < extent[d]:
                grown = tuple(min(extent[d], s + per) if k == d else s for k, s in enumerate(size))
                if not fits(grown, size):
                    break
                size = grown
        size = _spread(size, extent, (yi, xi), fits)
        stages.append(_Stage(reads, tuple(levels[i:top + 1]), size))
        reads, i = levels[top], top + 1
    return stages


def _spread(size: tuple[int, ...], extent: tuple[int, ...], spatial: tuple[int, int],
            fits: Callable[[tuple[int, ...], tuple[int, ...] | None], bool]) -> tuple[int, ...]:
    """The stage's tile grown along the spatial dims to the fewest tiles that ``fits`` allows (whole
    multiples of ``size``, so every shard stays in one tile), each dim cut into near-equal tiles.

    Why: a task costs its runner a fixed time (its states, a slot, opening its input), so a plan of
    many small tiles where fewer fit the budget spends more in Prefect than in writing."""
    counts = {d: math.ceil(extent[d] / size[d]) for d in spatial}
    if all(c <= 1 for c in counts.values()):
        return size

    def sized(n: dict[int, int]) -> tuple[int, ...]:
        # n tiles along d: the least multiple of size[d] that covers the extent in n pieces
        return tuple(min(extent[d], math.ceil(math.ceil(extent[d] / n[d]) / size[d]) * size[d]) if d in n else s
                     for d, s in enumerate(size))

    a, b = spatial
    best = size
    best_key = (counts[a] * counts[b], 0)
    for na in range(1, counts[a] + 1):
        lo, hi = 1, counts[b]  # the fewest tiles along b that fit, with na along a (fits is monotone in it)
        if not fits(sized({a: na, b: hi}), size):
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(sized({a: na, b: mid}), size):
                hi = mid
            else:
                lo = mid + 1
        grown = sized({a: na, b: hi})
        n = math.ceil(extent[a] / grown[a]) * math.ceil(extent[b] / grown[b])
        key = (n, abs(grown[a] - grown[b]))  # fewest tiles, then the squarest
        if key < best_key:
            best, best_key = grown, key
    return best


def _starts(extent: int, size: int, lo: int = 0, hi: int | None = None) -> list[tuple[int, int]]:
    hi = extent if hi is None else min(hi, extent)
    first = (lo // size) * size
    return [(max(a, lo), min(a + size, hi)) for a in range(first, hi, size)]


def _count(stage: _Stage, extent: tuple[int, ...], limits: dict[int, tuple[int, int]]) -> int:
    n = 1
    for d, (s, e) in enumerate(zip(stage.size, extent)):
        lo, hi = limits.get(d, (0, e))
        n *= max(0, math.ceil(min(hi, e) / s) - lo // s)
    return n


def _merge_until(stages: list[list[_Stage]], extents: list[tuple[int, ...]], limits: list[dict],
                 max_tiles: int) -> list[list[_Stage]]:
    """Double tile sizes (along the dim with most tiles of the stage with most tiles) until the plan
    has at most ``max_tiles`` tiles (or every tile is the whole extent)."""
    stages = [list(s) for s in stages]
    while True:
        counts = [(_count(st, extents[g], limits[g]), g, j) for g, group in enumerate(stages)
                  for j, st in enumerate(group)]
        if sum(c for c, _, _ in counts) <= max_tiles:
            return stages
        c, g, j = max(counts)
        st = stages[g][j]
        per_dim = [math.ceil(e / s) for s, e in zip(st.size, extents[g])]
        d = max(range(len(per_dim)), key=lambda k: per_dim[k])
        if per_dim[d] <= 1:
            return stages  # every tile is already the whole extent
        size = list(st.size)
        size[d] = min(size[d] * 2, extents[g][d])
        stages[g][j] = _Stage(st.reads, st.levels, tuple(size))


def build_tile_plan(
    *,
    x_dim: str,
    y_dim: str,
    factors: list[int] | tuple[int, ...],
    variables: list[VarSpec] | tuple[VarSpec, ...],
    source_chunks: dict[str, tuple[int, ...] | None],
    max_region_bytes: int,
    levels: list[int] | None = None,
    max_tile_bytes: int | None = DEFAULT_TILE_BYTES,
    max_tiles: int | None = None,
    min_tiles: int = 1,
    restricted: dict[str, Any] | None = None,
) -> TilePlan:
    """Tile the pyramid's ``levels`` (default all; a contiguous run) into stages of tiles.

    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    :param factors: each level's factor relative to level 0.
    :param variables: the gridded variables' specs.
    :param source_chunks: per variable, the source's chunk shape (or None).
    :param max_region_bytes: the largest level-0 region a widening to whole source chunks may make.
    :param levels: the levels to tile (default all).
    :param max_tile_bytes: at most this many bytes of input per tile while a stage grows by a level
        (``None``: one tile per variable group covering everything).
    :param max_tiles: a hard cap on the number of tiles (tiles merged until it holds).
    :param min_tiles: a stage takes in one more level (or more entries of another dim) only while it
        keeps at least this many tiles, so the workers of a distributed run stay busy to the end.
    :param restricted: an update's window along a non-spatial dim (``{"dim", "start", "stop", "whole",
        "clip"}``): tiles cover it only, every level in one stage, cut along that dim only (one tile when
        whole arrays are rewritten too).
    """
    factors = tuple(int(f) for f in factors)
    variables = tuple(variables)
    wanted = list(range(len(factors))) if levels is None else sorted(set(levels))
    groups: list[list[VarSpec]] = []
    per_group: list[list[_Stage]] = []
    extents: list[tuple[int, ...]] = []
    limits: list[dict[int, tuple[int, int]]] = []
    for group in _groups(list(variables), wanted):
        v = group[0]
        if restricted is not None:
            whole = {name for _, name in restricted["whole"]}
            if restricted["dim"] not in v.dims and not whole & {w.name for w in group}:
                continue  # nothing of these variables changes
            stages, limit = _restricted_stages(group, wanted, factors, y_dim, x_dim, restricted, max_tile_bytes)
        else:
            stages, limit = _stages(group, wanted, factors, y_dim, x_dim, max_tile_bytes, source_chunks,
                                    max(1, int(min_tiles))), {}
        groups.append(group)
        extents.append(tuple(v.shapes[0]))
        per_group.append(stages)
        limits.append(limit)
    if max_tiles is not None:
        if max_tiles < 1:
            raise ValueError(f"max_tiles must be >= 1, got {max_tiles!r}")
        per_group = _merge_until(per_group, extents, limits, max_tiles)
    tiles: list[Tile] = []
    depth = max((len(s) for s in per_group), default=0)
    for stage in range(depth):
        index = 0
        for group, stages, extent, limit in zip(groups, per_group, extents, limits):
            if stage >= len(stages):
                continue
            st = stages[stage]
            names = tuple(v.name for v in group)
            axes = [_starts(e, s, *limit.get(d, (0, None))) for d, (s, e) in enumerate(zip(st.size, extent))]
            for window in _product(axes):
                tiles.append(Tile(f"S{stage}-{index:05d}", stage, names, st.levels, st.reads, window))
                index += 1
    return TilePlan(x_dim=x_dim, y_dim=y_dim, factors=factors, variables=variables,
                    source_chunks=dict(source_chunks), max_region_bytes=int(max_region_bytes), tiles=tuple(tiles),
                    restricted=restricted, sizing={"max_tile_bytes": max_tile_bytes, "max_tiles": max_tiles,
                                                   "min_tiles": min_tiles})


def _product(axes: list[list[tuple[int, int]]]) -> list[Box]:
    out: list[Box] = [()]
    for cells in axes:
        out = [b + (c,) for b in out for c in cells]
    return out


def _restricted_stages(group: list[VarSpec], levels: list[int], factors: tuple[int, ...], y_dim: str, x_dim: str,
                       restricted: dict[str, Any], max_tile_bytes: int | None
                       ) -> tuple[list[_Stage], dict[int, tuple[int, int]]]:
    """An update's tiles: every level in one stage over the whole spatial extent, along the append dim
    only the window (cut at shard boundaries of every level when it is large), or everything when
    whole arrays are rewritten too."""
    v = group[0]
    extent = tuple(v.shapes[0])
    dim = restricted["dim"]
    reads = None if levels[0] == 0 else levels[0] - 1
    if dim not in v.dims or restricted["whole"]:
        return [_Stage(reads, tuple(levels), extent)], {}
    d = v.dims.index(dim)
    unit = 1
    for lvl in levels:
        unit = math.lcm(unit, write_unit(v.encodings[lvl])[d])
    start = int(restricted["start"])
    stop = extent[d] if restricted["stop"] is None else min(int(restricted["stop"]), extent[d])
    size = list(extent)
    size[d] = extent[d]
    if max_tile_bytes is not None:
        per_entry = max(1, _window_bytes(group, tuple(1 if k == d else n for k, n in enumerate(extent)), reads,
                                         factors, *v.axes(y_dim, x_dim)))
        size[d] = min(extent[d], max(unit, (max_tile_bytes // per_entry) // unit * unit))
    return [_Stage(reads, tuple(levels), tuple(size))], {d: (start, stop)}


__all__ = ["Tile", "TilePlan", "build_tile_plan", "DEFAULT_TILE_BYTES"]
