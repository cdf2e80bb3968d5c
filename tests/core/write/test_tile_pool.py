"""The pool the tiles of one process share (topozarr_core.write.tile_pool): the tile that started first is
served first, so tiles run as separate tasks end one after another as the core's do, not all late together."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest
from zarr.storage import LocalStore

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid
from topozarr_core.write.executor import write_tiles
from topozarr_core.write.protocol import BuildWrite
from topozarr_core.write.tile_pool import TilePool, shared_pool

KW = dict(x_dim="lon", y_dim="lat")


def _blocked(pool: TilePool) -> threading.Event:
    """Occupy the pool's only thread until the returned event is set."""
    gate, busy = threading.Event(), threading.Event()
    pool.submit_at(-1, lambda: (busy.set(), gate.wait(10)))
    assert busy.wait(10)
    return gate


def test_the_lowest_ticket_runs_first_and_a_ticket_keeps_its_order():
    pool = TilePool(1)
    early, late = pool.ticket(), pool.ticket()
    assert early < late
    gate = _blocked(pool)
    ran: list[str] = []
    futures = [pool.submit_at(late, ran.append, "late-1"), pool.submit_at(late, ran.append, "late-2"),
               pool.submit_at(early, ran.append, "early-1"), pool.submit_at(early, ran.append, "early-2")]
    gate.set()
    for f in futures:
        f.result(10)
    assert ran == ["early-1", "early-2", "late-1", "late-2"]
    pool.shutdown()


def test_a_plain_submit_queues_behind_every_ticket_given_so_far():
    pool = TilePool(1)
    ticket = pool.ticket()
    gate = _blocked(pool)
    ran: list[str] = []
    plain = pool.submit(ran.append, "plain")
    tiled = pool.submit_at(ticket, ran.append, "tile")
    gate.set()
    plain.result(10), tiled.result(10)
    assert ran == ["tile", "plain"]
    pool.shutdown()


def test_failures_reach_the_caller_and_shutdown_cancels_what_waits():
    pool = TilePool(1)

    def fail():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        pool.submit(fail).result(10)
    gate = _blocked(pool)
    waiting = pool.submit(lambda: "never")
    threading.Timer(0.2, gate.set).start()
    pool.shutdown(wait=True, cancel_futures=True)
    with pytest.raises(CancelledError):
        waiting.result(0)


def test_one_shared_pool_per_size():
    assert shared_pool(3) is shared_pool(3)
    assert shared_pool(3) is not shared_pool(2)
    assert isinstance(shared_pool(), TilePool)


class _Recording(TilePool):
    """A TilePool that notes, per region, which run submitted it and in what order the regions ended."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.priorities: dict[str, list[int]] = {}
        self.ended: list[str] = []
        self.first_submit = threading.Event()
        self._note = threading.Lock()

    def noted(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` that, once run, notes the submitting run's name in ``ended``."""
        run = threading.current_thread().name
        self.first_submit.set()

        def call():
            out = fn(*args, **kwargs)
            with self._note:
                self.ended.append(run)
            return out

        return call

    def submit_at(self, priority, fn, /, *args, **kwargs):
        self.priorities.setdefault(threading.current_thread().name, []).append(priority)
        return super().submit_at(priority, self.noted(fn, *args, **kwargs))


def _two_tiles(tmp_path):
    ds = make_raster(ny=1024, nx=1024, nan_fraction=0.05)
    pyramid = create_pyramid(ds, levels=4, chunks_per_shard=1, target_chunk_bytes=16_000, **KW)
    plan = pyramid.tile_plan(max_tile_bytes=2_200_000)
    first = [t for t in plan.tiles if t.stage == plan.stages[0]]
    assert len(first) >= 2
    return ds, pyramid, plan, first


def _run(pyramid, plan, tiles, ds, store, pool: TilePool) -> None:
    """Write the pyramid, running ``tiles`` as tasks of a thread runner do: each in its own thread, one
    after the other started, all sharing ``pool``; the rest of the first stage and the later stages
    in this thread."""
    steps = BuildWrite.check(pyramid, store, plan=plan)
    steps.prepare(store)
    threads = []
    for i, tile in enumerate(tiles):
        th = threading.Thread(target=write_tiles, args=(plan, [tile]), name=f"tile-{i}",
                              kwargs=dict(source=ds, store=store, workers=2, pool=pool))
        pool.first_submit.clear()
        th.start()
        assert pool.first_submit.wait(10)  # the next tile starts once this one has begun
        threads.append(th)
    for th in threads:
        th.join(60)
    rest = [t for t in plan.tiles if t.stage == plan.stages[0] and t not in tiles]
    if rest:
        write_tiles(plan, rest, source=ds, store=store, workers=2)
    for stage in plan.stages[1:]:
        write_tiles(plan, [t for t in plan.tiles if t.stage == stage], source=ds, store=store, workers=2)
    steps.finish(store)
    steps.publish(store)


def test_tiles_sharing_the_pool_end_in_the_order_they_started(tmp_path):
    """Two tiles started one after the other on a one-thread pool: the first one's regions run first, so
    it ends before the second has done half of its own (a first-in-first-out pool interleaves them
    and both end at about the same time). The pyramid is the same as the core's."""
    ds, pyramid, plan, first = _two_tiles(tmp_path)
    pool = _Recording(1)
    _run(pyramid, plan, first[:2], ds, LocalStore(str(tmp_path / "t.zarr")), pool)
    tickets = {run: set(p) for run, p in pool.priorities.items()}
    assert all(len(p) == 1 for p in tickets.values()), tickets  # one ticket per tile's run
    assert min(tickets["tile-0"]) < min(tickets["tile-1"])
    second_total = pool.ended.count("tile-1")
    last_of_first = len(pool.ended) - pool.ended[::-1].index("tile-0")
    second_before = pool.ended[:last_of_first].count("tile-1")
    assert second_before < second_total / 2, (second_before, second_total)
    pyramid.write(tmp_path / "core.zarr")
    assert_same_pyramid(str(tmp_path / "t.zarr"), str(tmp_path / "core.zarr"))


def test_a_first_in_first_out_pool_would_interleave_them(tmp_path):
    """The counter-case of the test above, so that its bound means something: the same two tiles in a
    plain thread pool end together."""
    ds, pyramid, plan, first = _two_tiles(tmp_path)

    class Fifo(_Recording):
        def __init__(self, workers):
            super().__init__(workers)
            self._fifo = ThreadPoolExecutor(1)

        def submit_at(self, priority, fn, /, *args, **kwargs):
            return self._fifo.submit(self.noted(fn, *args, **kwargs))

    pool = Fifo(1)
    _run(pyramid, plan, first[:2], ds, LocalStore(str(tmp_path / "t.zarr")), pool)
    second_total = pool.ended.count("tile-1")
    last_of_first = len(pool.ended) - pool.ended[::-1].index("tile-0")
    assert pool.ended[:last_of_first].count("tile-1") >= second_total / 2
