"""Tile tasks submitted as soon as what they read is written: no barrier between stages.

A tile of a later stage reads a level that the tiles of an earlier stage under it write
(:meth:`topozarr_core.plan.tiles.TilePlan.depends`); it is submitted when those have completed, with at
most ``in_flight`` tiles submitted and not finished (the limit's slots: one more would only wait
for a slot), so the Prefect UI shows as Running only tiles that run (or wait for a slot another run
holds). Ready tiles of later stages go first (the run's tail is shorter), then the largest (as in
``Pyramid.write``'s tail), then plan order.

A tile that fails (after its task's retries) is reported; the tiles that read it are never
submitted, every other tile still runs, so a retry of the flow run redoes only the failed tiles
and those above them.
"""

from __future__ import annotations

import heapq
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prefect.futures import PrefectFuture


@dataclass
class Tally:
    """What one group of tiles (a stage) did, for its log line and table rows."""

    planned: int
    done: int = 0
    first_submit: float | None = None
    last_done: float | None = None
    futures: dict[str, PrefectFuture] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Seconds from the group's first submission to its last completion (0 before both)."""
        if self.first_submit is None or self.last_done is None:
            return 0.0
        return self.last_done - self.first_submit


def run_pipelined(
    order: list[str],
    group_of: dict[str, int],
    depends: dict[str, list[str]],
    submit: Callable[[str], PrefectFuture],
    *,
    in_flight: int,
    on_group_done: Callable[[int, Tally], None] = lambda group, tally: None,
    on_done: Callable[[str, PrefectFuture], None] = lambda key, future: None,
    weight: dict[str, int] | None = None,
) -> tuple[dict[int, Tally], list[str], int]:
    """Run every key of ``order`` (plan order) once the keys it depends on completed.

    Among ready keys, later groups go first, then the heaviest (``weight``: a tile's input bytes), so
    the small tiles at the edges of a raster fill the gaps at the end instead of a large one running
    alone.

    ``on_done(key, future)`` is called for each key that completed, ``on_group_done(group, tally)``
    once every key of a group has ended. Returns the tallies per group, the failed keys (plan
    order), and how many keys were never submitted because a key under them failed.

    :param order: the keys, in plan order.
    :param group_of: each key's group (its stage).
    :param depends: the keys each key waits for.
    :param submit: starts a key's task.
    :param in_flight: the most keys running at once.
    :param on_group_done: called with a group and its tally once every key of the group has ended.
    :param on_done: called with each key that completed and its future.
    :param weight: each key's weight (a tile's input bytes); heavier ready keys go first.
    """
    position = {k: i for i, k in enumerate(order)}
    tallies: dict[int, Tally] = {}
    for k in order:
        tallies.setdefault(group_of[k], Tally(0)).planned += 1
    planned = set(order)
    waiting = {k: set(depends.get(k, ())) & planned for k in order}
    children: dict[str, list[str]] = {k: [] for k in order}
    for k, parents in waiting.items():
        for p in parents:
            children[p].append(k)

    weight = weight or {}

    def priority(key: str) -> tuple[int, int, int, str]:
        return (-group_of[key], -weight.get(key, 0), position[key], key)

    ready = [priority(k) for k in order if not waiting[k]]
    heapq.heapify(ready)
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()
    running = 0
    failed: list[str] = []
    blocked: set[str] = set()

    def block(key: str) -> None:
        for child in children[key]:
            if child not in blocked:
                blocked.add(child)
                block(child)

    while ready or running:
        while ready and running < in_flight:
            key = heapq.heappop(ready)[3]
            if key in blocked:
                continue
            tally = tallies[group_of[key]]
            tally.first_submit = tally.first_submit or time.perf_counter()
            future = submit(key)
            tally.futures[key] = future
            future.add_done_callback(lambda _f, key=key: finished.put(key))
            running += 1
        if not running:
            break
        key = finished.get()
        running -= 1
        tally = tallies[group_of[key]]
        tally.done += 1
        tally.last_done = time.perf_counter()
        future = tally.futures[key]
        future.wait()  # done: this records its final state (``state`` alone would ask the API, which lags)
        if future.state.is_completed():
            on_done(key, future)
            for child in children[key]:
                waiting[child].discard(key)
                if not waiting[child] and child not in blocked:
                    heapq.heappush(ready, priority(child))
        else:
            failed.append(key)
            block(key)
        if tally.done == tally.planned:
            on_group_done(group_of[key], tally)
    failed.sort(key=position.__getitem__)
    return tallies, failed, len(blocked)
