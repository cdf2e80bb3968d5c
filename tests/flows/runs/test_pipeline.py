"""Tile tasks without stage barriers: the flow's scheduler starts a tile once what it reads is written
and holds back only what reads a failed tile (what each tile waits for is tested with the plan, in
tests/core/plan/test_tiles.py; the GC pause of overlapping writes in tests/core/write/test_pipeline.py)."""

from __future__ import annotations

import threading
import time

from prefect import flow, task

from topozarr_flows.runs.pipeline import run_pipelined

LOG: list[tuple[str, str, float]] = []
LOCK = threading.Lock()


@task(name="pipeline-probe")
def _probe(key: str, fail: list[str], seconds: float) -> dict:
    with LOCK:
        LOG.append(("start", key, time.perf_counter()))
    time.sleep(seconds)
    with LOCK:
        LOG.append(("end", key, time.perf_counter()))
    if key in fail:
        raise RuntimeError(f"{key} fails")
    return {"key": key}


# stage 0: 4 tiles (S0-0 slow); stage 1: S1-0 reads S0-0 + S0-1, S1-1 reads S0-2 + S0-3; stage 2 reads both
#: How long the slow tile runs: longer than three short task runs one after another take on a loaded
#: machine (with 0.3 s, a CI run under load started S1-1 46 ms after S0-0 had ended).
SLOW = 1.5
ORDER = ["S0-0", "S0-1", "S0-2", "S0-3", "S1-0", "S1-1", "S2-0"]
DEPENDS = {"S1-0": ["S0-0", "S0-1"], "S1-1": ["S0-2", "S0-3"], "S2-0": ["S1-0", "S1-1"]}


@flow(name="pipeline-probe-flow")
def _pipelined(fail: list[str], in_flight: int) -> dict:
    done_groups, done = [], []
    tallies, failed, not_started = run_pipelined(
        ORDER, {k: int(k[1]) for k in ORDER}, DEPENDS,
        lambda key: _probe.with_options(retries=0).submit(key, fail, SLOW if key == "S0-0" else 0.05),
        in_flight=in_flight, on_group_done=lambda group, tally: done_groups.append(group),
        on_done=lambda key, future: done.append(future.result()["key"]))
    return {"failed": failed, "not_started": not_started, "groups_done": done_groups, "done": sorted(done)}


def _times(kind: str) -> dict[str, float]:
    return {k: t for what, k, t in LOG if what == kind}


def test_a_tile_starts_when_what_it_reads_is_written_not_when_its_stage_is(prefect_harness):
    LOG.clear()
    out = _pipelined([], 2)
    assert out == {"failed": [], "not_started": 0, "groups_done": [0, 1, 2], "done": sorted(ORDER)}
    start, end = _times("start"), _times("end")
    for child, parents in DEPENDS.items():
        assert all(start[child] >= end[p] for p in parents), child
    assert start["S1-1"] < end["S0-0"]  # no barrier: it did not wait for the slow tile of stage 0
    # never more than in_flight at once
    events = sorted((t, +1 if what == "start" else -1) for what, _, t in LOG)
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2


def test_a_failed_tile_holds_back_only_what_reads_it(prefect_harness):
    LOG.clear()
    out = _pipelined(["S0-2"], 3)
    assert out["failed"] == ["S0-2"] and out["not_started"] == 2  # S1-1 and S2-0
    assert set(_times("start")) == {"S0-0", "S0-1", "S0-2", "S0-3", "S1-0"}
    assert out["groups_done"] == [0]  # stage 1 has a tile that never ran
    assert out["done"] == ["S0-0", "S0-1", "S0-3", "S1-0"]
