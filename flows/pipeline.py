"""Region-batch tasks submitted as soon as what they read is written: no barrier between levels.

``Pyramid.write`` starts a coarse region the moment the regions under it are written; a flow that
waited for a whole level before starting the next left cores idle at every level boundary (the
tail of level 0, then one level after another). Here a batch task is submitted when every batch
it reads (:func:`topozarr_core.dependencies.batch_dependencies`) completed, coarsest ready level
first while the finest level is being read (its data leaves the level cache soonest), the largest
first after that (the tail ends soonest), with at most ``in_flight``
submitted and not finished (the limit's slots: a task more would only poll the server for a slot),
so the Prefect UI shows as Running only tasks that run (or wait for a slot another run holds).

A batch that fails (after its task's retries) is reported; the batches that read it are never
submitted, every other batch still runs, so a retry of the flow run redoes only the failed
batches and those above them.
"""

from __future__ import annotations

import heapq
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prefect.futures import PrefectFuture

Key = tuple[int, int]  # (level, batch index)


@dataclass
class LevelTally:
    """What one level's batches did, for its log line and table row."""

    planned: int
    done: int = 0
    first_submit: float | None = None
    last_done: float | None = None
    futures: dict[int, PrefectFuture] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        if self.first_submit is None or self.last_done is None:
            return 0.0
        return self.last_done - self.first_submit


def run_pipelined(
    levels: list[dict],
    depends: dict[Key, list[Key]],
    submit: Callable[[int, int], PrefectFuture],
    *,
    in_flight: int,
    on_level_done: Callable[[int, LevelTally], None],
    on_batch_done: Callable[[int], None] = lambda n: None,
    on_all_submitted: Callable[[], None] = lambda: None,
) -> tuple[dict[int, LevelTally], list[Key], int]:
    """Run every batch of ``levels`` as its inputs become ready; ``on_all_submitted()`` is called once
    no batch is left to submit (the slots the finished ones leave need not wait for another).

    Returns the tallies per level, the keys of the failed batches (plan order), and how many batches
    were never submitted because a batch under them failed.
    """
    tallies = {lv["level"]: LevelTally(lv["batches"]) for lv in levels}
    keys = [(lv["level"], i) for lv in levels for i in range(lv["batches"])]
    planned = set(keys)
    waiting = {k: set(map(tuple, depends.get(k, ()))) & planned for k in keys}
    children: dict[Key, list[Key]] = {k: [] for k in keys}
    for k, parents in waiting.items():
        for p in parents:
            children[p].append(k)
    finest = min(tallies, default=0)
    unsubmitted_finest = tallies[finest].planned if tallies else 0

    def priority(key: Key) -> tuple[int, int, int, int]:
        # coarsest ready level first while the finest level is being read (its blocks are dropped
        # soonest); then the largest first (a finer level's batch is the larger), as Pyramid.write's tail
        return (-key[0] if unsubmitted_finest else key[0], key[1], key[0], key[1])

    ready = [priority(k) for k in keys if not waiting[k]]
    heapq.heapify(ready)
    finished: queue.SimpleQueue[Key] = queue.SimpleQueue()
    running = 0
    failed: list[Key] = []
    blocked: set[Key] = set()
    completed = 0
    submitted = 0
    wound_down = False

    def start(key: Key) -> None:
        level, index = key
        tally = tallies[level]
        tally.first_submit = tally.first_submit or time.perf_counter()
        future = submit(level, index)
        tally.futures[index] = future
        future.add_done_callback(lambda _f, key=key: finished.put(key))

    def block(key: Key) -> None:
        for child in children[key]:
            if child not in blocked:
                blocked.add(child)
                block(child)

    while ready or running:
        while ready and running < in_flight:
            key = heapq.heappop(ready)[2:]
            if key in blocked:
                continue
            start(key)
            running += 1
            submitted += 1
            if key[0] == finest:
                unsubmitted_finest -= 1
                if unsubmitted_finest == 0:  # the tail: re-rank what is ready, largest first
                    ready = [priority(k[2:]) for k in ready]
                    heapq.heapify(ready)
        if not wound_down and submitted + len(blocked) == len(keys):  # (a blocked batch is never submitted)
            wound_down = True
            on_all_submitted()
        if not running:
            break
        key = finished.get()
        running -= 1
        level, index = key
        tally = tallies[level]
        tally.done += 1
        tally.last_done = time.perf_counter()
        future = tally.futures[index]
        future.wait()  # done: this records its final state (``state`` alone would ask the API, which lags)
        if future.state.is_completed():
            completed += 1
            on_batch_done(completed)
            for child in children[key]:
                waiting[child].discard(key)
                if not waiting[child] and child not in blocked:
                    heapq.heappush(ready, priority(child))
        else:
            failed.append(key)
            block(key)
        if tally.done == tally.planned:
            on_level_done(level, tally)
    return tallies, sorted(failed), len(blocked)
