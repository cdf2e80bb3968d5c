"""What the build and update flows do with a tile plan: run every tile as a task, in order, and say
how it went (progress, one row per level, one line when tiles failed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture

from topozarr_core.store.errors import error_summary, root_cause
from topozarr_flows.runs.pipeline import Tally, run_pipelined

#: Seconds between updates of a run's progress artifact at least (the UI polls it; nobody reads faster).
PROGRESS_SECONDS = 2.0


class TilesFailed(RuntimeError):
    """Some tiles failed after their retries; retry the flow run to redo only those."""


def planned_tiles(plan: Any) -> dict[str, Any]:
    """The plain data the flow orchestrates with (a task result): every tile's key, stage, levels and
    what it reads, and which tiles each waits for.

    :param plan: the :class:`~topozarr_core.plan.tiles.TilePlan`.
    """
    return {
        "tiles": [{"key": t.key, "stage": t.stage, "levels": list(t.levels), "reads": t.reads,
                   "bytes": plan.source_bytes(t)} for t in plan.tiles],
        "depends": {k: list(v) for k, v in plan.depends().items() if v},
    }


def run_tiles(
    planned: dict[str, Any],
    submit: Callable[[str, Any], PrefectFuture],
    *,
    fork: Callable[[int], Any] | None = None,
    commit: Callable[[int, list[Any], bool], Any] | None = None,
    in_flight: int = 4,
    level_written: Callable[[int], None] = lambda level: None,
    description: str = "tiles written",
) -> list[dict]:
    """Run every tile of ``planned`` (:func:`planned_tiles` plus ``levels``: one row per level) as
    ``submit(key, fork)``; returns the rows with what each level's tiles did.

    A Zarr target runs the tiles as their inputs are written (:mod:`topozarr_flows.runs.pipeline`). An Icechunk
    target runs one stage at a time: every tile of a stage writes into a fork of the staging head
    (``fork(stage)`` for the first stage), then ``commit(stage, forks, last)`` merges and commits them
    and returns the next stage's fork, so a stage's tiles read the commit of the levels under them.
    ``level_written(level)`` is called (in this thread) once a level is complete in the target.

    :param planned: :func:`planned_tiles`'s data plus ``levels`` (one row per level).
    :param submit: starts one tile's task: ``submit(key, fork)``.
    :param fork: ``fork(stage)``, the first stage's Icechunk fork (None: a Zarr target).
    :param commit: ``commit(stage, forks, last)``, merges and commits a stage and returns the next
        stage's fork (None: a Zarr target).
    :param in_flight: the most tiles running at once.
    :param level_written: called (in this thread) with each level once it is complete in the target.
    :param description: the progress artifact's description.
    """
    logger = get_run_logger()
    tiles = planned["tiles"]
    total = len(tiles)
    order = [t["key"] for t in tiles]
    stage_of = {t["key"]: t["stage"] for t in tiles}
    label = {t["key"]: _label(t) for t in tiles}
    writers: dict[int, set[str]] = {}  # level -> the tiles writing it
    for t in tiles:
        for level in t["levels"]:
            writers.setdefault(level, set()).add(t["key"])
    last_stage = {level: max(stage_of[k] for k in keys) for level, keys in writers.items()}
    levels_of = {t["key"]: t["levels"] for t in tiles}
    left = {level: len(keys) for level, keys in writers.items()}  # tiles of a level not written yet
    depends = planned.get("depends", {})
    weight = {t["key"]: t.get("bytes", 0) for t in tiles}
    progress = create_progress_artifact(0.0, description=f"{description} ({total} in all)")
    results: dict[str, tuple[dict, bool]] = {}  # key -> (result, written by this attempt)
    last_update = [time.perf_counter()]

    def tile_done(key: str, future: PrefectFuture) -> None:
        results[key] = (future.result(), future.state.name != "Cached")  # Cached: an earlier attempt's
        n = len(results)
        # each update is an API call and an event for the server to store: at most one per
        # PROGRESS_SECONDS, and the last
        now = time.perf_counter()
        if n == total or now - last_update[0] >= PROGRESS_SECONDS:
            last_update[0] = now
            update_progress_artifact(progress, 100.0 * n / max(total, 1))
        for level in levels_of[key]:
            left[level] -= 1
            if fork is None and left[level] == 0:  # a Zarr target: a level is complete once its tiles are
                level_done(level)

    reported: set[int] = set()

    def level_done(level: int) -> None:
        if level in reported:
            return
        reported.add(level)
        mine = [results[k] for k in writers[level]]
        fresh = [r for r, new in mine if new]
        logger.info("level %d: %d tiles written by this attempt (%.1f MB), %d reused from an earlier attempt",
                    level, len(fresh), sum(r["bytes"] for r in fresh) / 1e6, len(mine) - len(fresh))
        level_written(level)

    def check(failed: list[str], tallies: dict[int, Tally], not_started: int) -> None:
        if failed:
            raise TilesFailed(failure_line(failed, tallies, stage_of, label, not_started))

    if fork is None:
        tallies, failed, blocked = run_pipelined(order, stage_of, depends, lambda key: submit(key, None),
                                                 in_flight=in_flight, on_done=tile_done, weight=weight)
        check(failed, tallies, blocked)
    else:
        stages = sorted(set(stage_of.values()))
        base = fork(stages[0]) if stages else None
        for stage in stages:
            keys = [k for k in order if stage_of[k] == stage]
            tallies, failed, blocked = run_pipelined(keys, stage_of, {}, lambda key, base=base: submit(key, base),
                                                     in_flight=in_flight, on_done=tile_done, weight=weight)
            check(failed, tallies, blocked + (sum(1 for k in order if stage_of[k] > stage) if failed else 0))
            base = commit(stage, [results[k][0]["fork"] for k in keys], stage == stages[-1])
            for level in sorted(lvl for lvl, s in last_stage.items() if s == stage):
                level_done(level)
    rows = []
    for row in planned["levels"]:
        mine = [results[k] for k in writers.get(row["level"], ())]
        fresh = [r for r, new in mine if new]
        seconds = (max(r["finished"] for r, _ in mine) - min(r["started"] for r, _ in mine)) if mine else 0.0
        rows.append({**row, "tiles": len(mine), "written": len(fresh), "reused": len(mine) - len(fresh),
                     "seconds": round(seconds, 2)})
    return rows


def _span(levels: list[int]) -> str:
    return str(levels[0]) if len(levels) == 1 else f"{levels[0]}-{levels[-1]}"


def _label(tile: dict[str, Any]) -> str:
    levels = tile["levels"]
    return f"tile-{tile['key']} (level{'s' if len(levels) > 1 else ''} {_span(levels)})"


def failure_line(failed: list[str], tallies: dict[int, Tally], stage_of: dict[str, int], label: dict[str, str],
                 not_started: int = 0) -> str:
    """One line for the flow run's state: which tiles failed, and the first one's root cause (a full
    disk, a refused credential: never the layers that passed it on). It is also logged as the flow's
    last error, so ``prefect deployment run --watch`` (which prints only the final state's name) shows
    it in the log stream it follows.

    :param failed: the failed tiles' keys (plan order).
    :param tallies: the groups' tallies.
    :param stage_of: each tile's stage.
    :param label: each tile's label.
    :param not_started: tiles never submitted because a tile under them failed.
    """
    key = failed[0]
    future = tallies[stage_of[key]].futures[key]
    cause = future.state.result(raise_on_failure=False)
    why = (error_summary(root_cause(cause), limit=240) if isinstance(cause, BaseException)
           else (future.state.message or ""))
    planned = sum(t.planned for t in tallies.values())
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    above = f"; {not_started} tiles that read them were not started" if not_started else ""
    line = (f"{len(failed)} of {planned} tiles failed after their retries; {label[key]}{more}: {why}{above}; "
            "retry the run to redo only the failed tiles")
    get_run_logger().error("%s", line)
    return line
