"""Flow benchmark: the ``build-pyramid`` flow (threads, Icechunk, a Dask cluster) and the seed's Dask
path against ``Pyramid.write``, all measured in one run.

Phases (each compared with its baseline of the same repeat):

* ``core``            ``create_pyramid(ds, ...).write(<target>)``: the baseline;
* ``core chunked``    the same on the source opened in its own dask chunks (``chunks={}``): the baseline
  of ``seed dask`` when it runs, the same pyramid written the seed's other way;
* ``flow``            ``build_pyramid(BuildParams(...))`` on Prefect's default thread-pool task runner;
* ``core icechunk``   ``Pyramid.write(session.store)`` + ``session.commit`` on a new repo (baseline of the next);
* ``flow icechunk``   ``build_pyramid(BuildParams(target_format="icechunk"))``;
* ``flow dask``       the flow with ``DaskTaskRunner`` on a ``LocalCluster`` of ``--workers`` worker
  processes x 1 thread: its tile tasks run in those processes;
* ``tiles dask``      the same tile plan as plain Dask tasks on that cluster, stage by stage, without
  Prefect (``benchmarks/_dask_tiles.py``): the design's cost apart from Prefect's per-task costs;
* ``seed dask``       the seed's two lines, ``pyramid.as_datatree().to_zarr(<target>, zarr_format=3,
  consolidated=False, encoding=pyramid.encoding)``, on that cluster, the source opened with its own
  dask chunks (``chunks={}``), compared with ``core chunked`` when it runs (else with ``core``);
* ``seed dask lazy``  the same with the source opened lazily (``chunks=None``): a task reads a tile's window;
* ``seed dask zarrs`` the same, lazy, with zarr's codec pipeline set to zarrs' own in the client by the
  user (``to_zarr`` then leaves it; by itself it sets zarrs on local targets, as ``Pyramid.write`` does).
* ``flow empty``      the flow's tasks in its order, with its options, the write limit and its artifacts,
  and bodies that do nothing (``benchmarks/_prefect_floor.py``), on threads; ``flow empty dask`` the
  same on the cluster: what Prefect costs a build of one tile before any work;
* ``seed store``      the second line alone: ``to_zarr`` of the levels already computed into the
  workers' memory (untimed, before): the floor xarray and zarr-python set under the seed's lines;
* ``source reads``    the source read through its own dask chunks and nothing else: the floor the
  source's own chunking sets under ``seed dask``'s graph, whatever the graph does with the blocks.

The source is a synthetic float32 raster (``--size`` squared: 16384 is 1 GB, 32768 4 GB) written once as a
Zarr with ``--source-chunk`` chunks (cached under ``--cache-dir`` for local runs) and opened lazily. With
``--s3`` the source and every target are on an S3 endpoint on loopback (moto's server, started here): the
source is uploaded once per run, and the Dask workers inherit its settings. Prefect runs on a private
temporary server (SQLite) whose start is not counted; one untimed warm-up of every phase on a tiny raster
comes first (imports, numba caches, the cluster), then every Dask worker writes a tiny pyramid (the
warm-up's one tile ran on one worker; the other would pay its first imports, about 1.7 s, in a timed
tile).

Each repeat runs every phase once in a rotating order, with ``os.sync()`` between phases (untimed);
each phase deletes its previous output first (untimed). Reported per phase: median and range of wall
seconds, median CPU seconds of this process, the CPU the rest of the machine used meanwhile (the
Prefect server and the Dask workers are "the rest": compare walls), the ratio to the baseline per
repeat (median, range), for flows the run's start to end as Prefect recorded them and its ratio to
the baseline's wall (the call returns up to 1 s later: Prefect 3.9 joins its flow heartbeat thread,
which sleeps in 1 s steps from the run's start; a deployment's run is Completed before that wait),
task runs, and for the Dask phases the peak RSS of any worker during the phase and the bytes the workers
sent each other. ``--worker-saturation inf`` starts the cluster's scheduler without root-task
queuing (Dask's default is 1.1), which assigns the reads under one merge to one worker together.

Also printed, once: what the flow's tile plan reads, measured through a counting store wrapper
(:class:`topozarr_core.testing.CountingStore`) around the source and the target while the same tiles
run in this process: bytes read from the source against its size, and bytes read back from the
target (only the levels where a later stage starts).

Usage::

    python benchmarks/bench_flow.py                       # 1 GB, 7 levels, 3 repeats
    python benchmarks/bench_flow.py --size 32768 --levels 8 --repeat 2 --skip core_icechunk flow_icechunk
    python benchmarks/bench_flow.py --s3 --size 32768 --levels 8 --only core flow_dask seed_dask
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import _common as C  # noqa: E402

CRS = "EPSG:3857"
DEFAULT_CACHE = Path(os.environ.get("TOPOZARR_BENCH_CACHE", Path(tempfile.gettempdir()) / "topozarr-bench-cache"))
#: Each phase's baseline; of several, the first that ran.
BASELINE = {"flow": "core", "flow_icechunk": "core_icechunk", "flow_dask": "core", "tiles_dask": "core",
            "core_chunked": "core", "seed_dask": ("core_chunked", "core"), "seed_dask_lazy": "core",
            "seed_dask_zarrs": "core", "seed_store": "core",
            "source_reads": "core", "flow_empty": "core", "flow_empty_dask": "core"}
LABEL = {"core": "core (Pyramid.write)", "core_chunked": "core, source's own chunks", "flow": "flow, threads",
         "core_icechunk": "core icechunk + commit",
         "flow_icechunk": "flow icechunk", "flow_dask": "flow, DaskTaskRunner",
         "tiles_dask": "tiles as Dask tasks", "seed_dask": "seed's Dask lines",
         "seed_dask_lazy": "seed's lines, lazy source", "seed_dask_zarrs": "seed's lines, lazy, zarrs",
         "seed_store": "seed's store alone", "source_reads": "source's own chunks read",
         "flow_empty": "flow's tasks, empty, threads", "flow_empty_dask": "flow's tasks, empty, Dask"}


def _isolate_prefect(tmp: Path) -> None:
    """A private Prefect home and result storage: must run before anything imports prefect."""
    os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp / "prefect-results")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("PREFECT_API_URL", None)


def local_source(cache: Path, size: int, chunk: int, seed: int) -> Path:
    """The cached source Zarr of this size (built on first use; a marker file beside it says it is complete:
    inside it, zarr would warn on every open that the marker is no part of the hierarchy)."""
    path = cache / f"src-{size}x{size}-c{chunk}-s{seed}.zarr"
    done = path.with_name(path.name + ".complete")
    if (path / ".complete").exists():  # where caches built before kept it
        (path / ".complete").replace(done)
    if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"building source {path} ...", flush=True)
        C.write_source_zarr(C.synthetic_dataset((size, size), seed=seed), path, chunks={"y": chunk, "x": chunk})
        done.write_text("ok")
    return path


class Where:
    """Where sources and targets live: a local folder, or a bucket on an S3 endpoint."""

    def __init__(self, root: Path, s3: Any = None) -> None:
        self.root, self.s3 = root, s3

    def url(self, name: str) -> str:
        return f"s3://{self.s3.bucket}/{name}" if self.s3 else str(self.root / name)

    def store(self, name: str, read_only: bool = False) -> Any:
        from zarr.storage import LocalStore

        return self.s3.zarr_store(name, read_only=read_only) if self.s3 else LocalStore(self.url(name),
                                                                                      read_only=read_only)

    def remove(self, name: str) -> None:
        if self.s3:
            from zarr.core.sync import sync

            store = self.s3.zarr_store(name)
            sync(store.delete_dir(""))
        else:
            shutil.rmtree(self.url(name), ignore_errors=True)

    def upload(self, local: Path, name: str) -> str:
        """A local Zarr copied here (S3), or the local path itself."""
        if not self.s3:
            return str(local)
        client = self.s3.boto3_client()
        for f in local.rglob("*"):
            if f.is_file():
                client.upload_file(str(f), self.s3.bucket, f"{name}/{f.relative_to(local).as_posix()}")
        return self.url(name)


class Phases:
    """The measured phases over one source; each returns extra facts as a dict."""

    def __init__(self, src: str, where: Where, levels: int, workers: int, tile_bytes: int | None,
                 worker_saturation: float | None = None):
        self.src, self.where, self.levels, self.workers = src, where, levels, workers
        self.worker_saturation = worker_saturation
        self.flow_options = {} if tile_bytes is None else {"max_tile_bytes": tile_bytes}
        self.flow_runs: list[str] = []
        self._cluster = None
        self._persisted: Any = None

    #: Each phase's output, deleted before the phase is timed.
    OUTPUT = {"core": "core.zarr", "core_chunked": "core-chunked.zarr", "core_icechunk": "core.icechunk",
              "flow": "flow.zarr", "flow_icechunk": "flow.icechunk", "flow_dask": "flow-dask.zarr", "tiles_dask": "tiles-dask.zarr",
              "seed_dask": "seed.zarr", "seed_dask_lazy": "seed.zarr", "seed_dask_zarrs": "seed.zarr",
              "seed_store": "seed.zarr", "source_reads": "seed.zarr", "flow_empty": "empty.zarr",
              "flow_empty_dask": "empty.zarr"}

    def clear(self, phase: str) -> None:
        """Delete ``phase``'s previous output (untimed: called before the phase's clock starts); for
        ``seed_store``, also compute the levels into the workers' memory."""
        self.where.remove(self.OUTPUT[phase])
        if phase == "seed_store":
            from dask.distributed import wait

            pyramid = self.pyramid(chunks=None)
            with self.cluster().as_current():
                tree = pyramid.as_datatree().persist()
            wait([v.data for node in tree.subtree for v in node.dataset.variables.values()
                  if hasattr(v.data, "dask")])
            self._persisted = (pyramid, tree)

    def _out(self, phase: str) -> str:
        return self.where.url(self.OUTPUT[phase])

    def _open(self, chunks: Any = None):
        import xarray as xr

        if self.where.s3 and self.src.startswith("s3://"):
            return xr.open_zarr(self.where.store(self.src.split("/", 3)[3], read_only=True), chunks=chunks,
                                consolidated=False)
        return xr.open_zarr(self.src, chunks=chunks, consolidated=False)

    def pyramid(self, chunks: Any = None):
        from topozarr_core import create_pyramid

        return create_pyramid(self._open(chunks), levels=self.levels, crs=CRS)

    def _write_core(self, phase: str, chunks: Any) -> dict:
        name = self.OUTPUT[phase]
        self.pyramid(chunks=chunks).write(self.where.store(name) if self.where.s3 else self._out(phase))
        return {}

    def core(self) -> dict:
        return self._write_core("core", None)

    def core_chunked(self) -> dict:
        """The core on the source opened in its own dask chunks (``chunks={}``): ``seed_dask``'s pyramid,
        written by ``Pyramid.write`` (the same dataset, the other of the seed's ways to write it)."""
        return self._write_core("core_chunked", {})

    def core_icechunk(self) -> dict:
        import icechunk

        target = Path(self._out("core_icechunk"))
        repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(target)))
        session = repo.writable_session("main")
        self.pyramid().write(session.store)
        session.commit("bench: pyramid")
        return {}

    def _flow(self, task_runner: Any = None, flow: Any = None, **target: Any) -> dict:
        """Run ``flow`` (default: ``build_pyramid``) on ``task_runner`` and record its flow run."""
        from topozarr_flows import BuildParams, build_pyramid

        flow = build_pyramid if flow is None else flow
        flow = flow if task_runner is None else flow.with_options(task_runner=task_runner)
        params = BuildParams(source=self.src, levels=self.levels, crs=CRS, **self.flow_options, **target)
        state = flow(params, return_state=True)
        if not state.is_completed():
            raise RuntimeError(f"flow run ended {state.name}: {state.message}")
        run_id = str(state.state_details.flow_run_id)
        self.flow_runs.append(run_id)
        return {"flow_run_id": run_id}  # its recorded seconds are read once the clock has stopped

    def flow(self) -> dict:
        return self._flow(target=self._out("flow"))

    def flow_icechunk(self) -> dict:
        return self._flow(target=self._out("flow_icechunk"), target_format="icechunk")

    def flow_empty(self) -> dict:
        """The build flow's tasks with empty bodies, on threads (``benchmarks/_prefect_floor.py``)."""
        import _prefect_floor

        return self._flow(flow=_prefect_floor.empty_build, target=self._out("flow_empty"))

    def flow_empty_dask(self) -> dict:
        """The same on the Dask cluster: its tile task runs on a worker."""
        import _prefect_floor
        from prefect_dask import DaskTaskRunner

        return self._flow(DaskTaskRunner(address=self.cluster().scheduler.address), flow=_prefect_floor.empty_build,
                          target=self._out("flow_empty_dask"))

    def flow_dask(self) -> dict:
        from prefect_dask import DaskTaskRunner

        with self.worker_meter() as meter:
            out = self._flow(DaskTaskRunner(address=self.cluster().scheduler.address),
                             target=self._out("flow_dask"))
        return {**out, **meter}

    def tiles_dask(self) -> dict:
        """The flow's tile plan as plain Dask tasks on the same cluster, stage by stage, without Prefect:
        the cost of the design apart from Prefect's per-task costs."""
        import _dask_tiles

        from topozarr_core.plan.tiles import DEFAULT_TILE_BYTES
        from topozarr_core.store.targets import resolve_store
        from topozarr_core.write.protocol import BuildWrite

        target = self._out("tiles_dask")
        tile_bytes = self.flow_options.get("max_tile_bytes", DEFAULT_TILE_BYTES)
        pyramid = self.pyramid()
        plan = pyramid.tile_plan(max_tile_bytes=tile_bytes)
        store = resolve_store(target)
        steps = BuildWrite.check(pyramid, store, "w", plan=plan)
        levels = steps.prepare(store)
        client = self.cluster()
        with self.worker_meter() as meter:
            for stage in plan.stages:
                keys = [t.key for t in plan.tiles if t.stage == stage]
                client.gather([client.submit(_dask_tiles.write_tile, self.src, self.levels, CRS, tile_bytes, key,
                                             target, pure=False) for key in keys])
        steps.finish(store, levels)
        steps.publish(store)
        return dict(meter)

    def _seed_target(self) -> Any:
        """Where the seed's lines write: a store on S3, else the local path."""
        return self.where.store("seed.zarr") if self.where.s3 else self.where.url("seed.zarr")

    def _seed(self, chunks: Any) -> dict:
        pyramid = self.pyramid(chunks=chunks)
        with self.worker_meter() as meter, self.cluster().as_current():
            pyramid.as_datatree().to_zarr(self._seed_target(), zarr_format=3, consolidated=False,
                                          encoding=pyramid.encoding)
        return dict(meter)

    def seed_dask(self) -> dict:
        return self._seed(chunks={})  # the source's own dask chunks

    def seed_dask_lazy(self) -> dict:
        return self._seed(chunks=None)  # opened lazily: a task reads a tile's window

    def seed_store(self) -> dict:
        """The second of the seed's lines alone, ``to_zarr`` of levels already in the workers' memory
        (computed, untimed, by :meth:`clear`): what xarray and zarr-python take to store them."""
        pyramid, tree = self._persisted
        self._persisted = None
        with self.cluster().as_current():
            tree.to_zarr(self._seed_target(), zarr_format=3, consolidated=False, encoding=pyramid.encoding)
        return {}

    def source_reads(self) -> dict:
        """The source read through its own dask chunks (``chunks={}``) and nothing else: what the first
        of ``seed_dask``'s tasks cost, whatever a graph built on them does."""
        data = next(iter(self._open(chunks={}).data_vars.values())).data
        with self.cluster().as_current():
            data.map_blocks(lambda block: block[:1, :1], chunks=(1, 1)).compute()
        return {}

    def seed_dask_zarrs(self) -> dict:
        import zarr
        import zarrs  # noqa: F401  # registers the pipeline

        # what a user enables in the client: the arrays xarray opens carry the pipeline to the workers
        with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
            return self._seed(chunks=None)

    def cluster(self):
        """One LocalCluster of worker processes for the whole run (its start is not timed)."""
        if self._cluster is None:
            import dask
            from dask.distributed import Client, LocalCluster

            # the scheduler reads its settings when it starts (inf: no root-task queuing, so the reads
            # under one merge are assigned to one worker together)
            config = ({} if self.worker_saturation is None
                      else {"distributed.scheduler.worker-saturation": self.worker_saturation})
            with dask.config.set(config):
                cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            self._cluster = (cluster, Client(cluster))
        return self._cluster[1]

    def worker_meter(self):
        """``with phases.worker_meter() as out:`` -> ``out["worker_peak_rss_mb"]``: the highest peak RSS
        of any worker during the block (each worker's high-water mark is reset first); and
        ``out["worker_transfer_mb"]``: what the workers sent meanwhile (to each other; the phases'
        results, sent to the client, are small)."""
        from contextlib import contextmanager

        @contextmanager
        def meter():
            client = self.cluster()
            client.run(C.reset_peak_rss)
            sent = sum(client.run(_sent_bytes).values())
            out: dict[str, float] = {}
            yield out
            out["worker_peak_rss_mb"] = max(client.run(C.peak_rss_bytes).values()) / 1e6
            out["worker_transfer_mb"] = (sum(client.run(_sent_bytes).values()) - sent) / 1e6

        return meter()

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster[1].close()
            self._cluster[0].close()


def _sent_bytes(dask_worker: Any) -> int:
    """Bytes this Dask worker has sent so far: to other workers, and any results to the client (its
    running total; the per-transfer logs keep only the last 1,000 transfers)."""
    return dask_worker.transfer_outgoing_bytes_total


def warm_worker(tiny: str) -> None:
    """Untimed, on every Dask worker: import what a tile task imports and write a tiny pyramid (numba
    kernels, zarrs), so no timed task pays a worker's first imports."""
    import prefect  # noqa: F401
    import xarray as xr

    import topozarr_flows.build.tasks  # noqa: F401
    from topozarr_core import create_pyramid

    with tempfile.TemporaryDirectory() as out:
        create_pyramid(xr.open_zarr(tiny, chunks=None, consolidated=False), levels=3, crs=CRS).write(out + "/w.zarr")


def measure(fn: Callable[[], dict]) -> dict:
    os.sync()
    cpu0, busy0, t0 = os.times(), C.machine_busy_seconds(), time.perf_counter()
    extra = fn()
    seconds = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    others = max(0.0, C.machine_busy_seconds() - busy0 - cpu)
    return {"seconds": seconds, "cpu": cpu, "others_cpu": others, **extra}


def recorded_seconds(run_id: str) -> float:
    """The flow run's start to end as Prefect recorded them: the call returns later, when Prefect 3.9's
    flow heartbeat thread (which sleeps in 1 s steps) has been joined, so up to 1 s of a call's wall is
    that wait and no work."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    return (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else float("nan")


def recorded_task_runs(flow_run_ids: list[str]) -> dict[str, list]:
    """The task runs the server recorded per flow run (recorded from events: read until their number is stable)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found: dict[str, list] = {}
    with get_client(sync_client=True) as client:
        for run_id in flow_run_ids:
            last, stable = None, 0
            for _ in range(50):
                runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                                             limit=200)
                stable = stable + 1 if last is not None and len(runs) == len(last) else 0
                last = runs
                if stable >= 2:
                    break
                time.sleep(0.1)
            found[run_id] = last or []
    return found


def where_runs_spend(results: dict[str, list[dict]], task_runs: dict[str, list]) -> str:
    """Where the flow phases' runs spend their time, from the task runs the server recorded
    (:func:`recorded_task_runs`; medians over the repeats, seconds): before the first tile starts, from
    the first tile's start to the last one's end, ``validate-pyramid``'s own run, and from the last
    tile's end to the run's end."""
    from prefect.client.orchestration import get_client

    rows = []
    with get_client(sync_client=True) as client:
        for phase, runs in results.items():
            spans: dict[str, list[float]] = {"before": [], "tiles": [], "validate": [], "after": []}
            for run_id in [x["flow_run_id"] for x in runs if "flow_run_id" in x]:
                run, tasks = client.read_flow_run(run_id), task_runs.get(run_id, [])
                tiles = [t for t in tasks if t.name.startswith("tile-") and t.start_time and t.end_time]
                checks = [t for t in tasks if t.name.startswith("validate-pyramid") and t.start_time and t.end_time]
                if not (tiles and run.start_time and run.end_time):
                    continue
                first, last = min(t.start_time for t in tiles), max(t.end_time for t in tiles)
                spans["before"].append((first - run.start_time).total_seconds())
                spans["tiles"].append((last - first).total_seconds())
                spans["validate"].extend((t.end_time - t.start_time).total_seconds() for t in checks)
                spans["after"].append((run.end_time - last).total_seconds())
            if spans["tiles"]:
                rows.append([LABEL[phase]] + [C.fmt_num(C.summarize(v)["median"]) if v else "" for v in spans.values()])
    if not rows:
        return ""
    headers = ["flow phase", "before the first tile s", "tiles s", "validate-pyramid s", "after the last tile s"]
    return "where the flow runs spend their time (medians):\n" + C.format_table(headers, rows)


def reads_of_the_tile_plan(phases: Phases, tile_bytes: int | None) -> str:
    """Run the flow's tile plan here through counting stores: source bytes read against its size, and
    bytes read back from the target."""
    import xarray as xr

    from topozarr_core import create_pyramid
    from topozarr_core.plan.tiles import DEFAULT_TILE_BYTES
    from topozarr_core.testing import CountingStore, stored_bytes

    if phases.src.startswith("s3://"):
        raw = phases.where.store(phases.src.split("/", 3)[3], read_only=True)
    else:
        from zarr.storage import LocalStore

        raw = LocalStore(phases.src, read_only=True)
    source = CountingStore(raw)
    pyramid = create_pyramid(xr.open_zarr(source, chunks=None, consolidated=False), levels=phases.levels, crs=CRS)
    size = tile_bytes or DEFAULT_TILE_BYTES
    plan = pyramid.tile_plan(max_tile_bytes=size)
    phases.where.remove("reads.zarr")
    target = CountingStore(phases.where.store("reads.zarr"))
    source.counts.reset()
    pyramid.write(target, max_tile_bytes=size)
    source_size = stored_bytes(raw, C.VAR)
    stages = "; ".join(f"{r['tiles']} tiles of levels {r['levels'][0]}-{r['levels'][-1]} from {r['reads']}"
                       for r in plan.summary())
    read_back = sum(target.counts.bytes.values())
    return (f"tile plan ({size >> 20} MiB tiles): {stages}\n"
            f"  source: {source.counts.total / 1e6:.1f} MB read of {source_size / 1e6:.1f} MB stored "
            f"({source.counts.total / source_size:.3f}x)\n"
            f"  target read back: {read_back / 1e6:.1f} MB ({dict(target.counts.bytes)}; the levels where a "
            f"later stage starts: {plan.handoff_levels})")


def run_suite(name: str, phases: Phases, order: list[str], repeat: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {p: [] for p in order}
    for r in range(repeat):
        rotated = order[r % len(order):] + order[: r % len(order)]
        for phase in rotated:
            phases.clear(phase)
            res = measure(getattr(phases, phase))
            if "flow_run_id" in res:
                res["run_seconds"] = recorded_seconds(res["flow_run_id"])
            res["repeat"] = r
            results[phase].append(res)
            extra = f"  worker peak {res['worker_peak_rss_mb']:.0f} MB" if "worker_peak_rss_mb" in res else ""
            print(f"  [{name} repeat {r + 1}/{repeat}] {phase:14s} {res['seconds']:7.2f} s  cpu {res['cpu']:6.2f} s"
                  f"  others {res['others_cpu']:5.2f} cpu-s{extra}", flush=True)
    return results


def _as_tuple(base: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if base is None else (base,) if isinstance(base, str) else base


def report(name: str, results: dict[str, list[dict]], tasks: dict[str, int]) -> str:
    rows = []
    for phase, runs in results.items():
        wall = C.summarize([x["seconds"] for x in runs])
        cpu = C.summarize([x["cpu"] for x in runs])
        others = C.summarize([x["others_cpu"] for x in runs])
        ratio = run_ratio = "baseline"
        # a phase's baseline: the first of its baselines that ran
        base = next((b for b in _as_tuple(BASELINE.get(phase)) if b in results), None)
        flows = [x for x in runs if "run_seconds" in x]
        recorded = [x["run_seconds"] for x in flows]
        if base in results:
            by_rep = {x["repeat"]: x for x in results[base]}
            rs = C.summarize([x["seconds"] / by_rep[x["repeat"]]["seconds"] for x in runs])
            ratio = f"{rs['median']:.2f}x ({rs['min']:.2f}-{rs['max']:.2f}) vs {LABEL[base]}"
            run_ratio = ""
            if flows:  # what a deployment's run takes: its Completed state does not wait for the heartbeat
                rr = C.summarize([x["run_seconds"] / by_rep[x["repeat"]]["seconds"] for x in flows])
                run_ratio = f"{rr['median']:.2f}x ({rr['min']:.2f}-{rr['max']:.2f})"
        n_tasks = sorted({tasks.get(x["flow_run_id"], -1) for x in runs if "flow_run_id" in x})
        peak = [x["worker_peak_rss_mb"] for x in runs if "worker_peak_rss_mb" in x]
        moved = [x["worker_transfer_mb"] for x in runs if "worker_transfer_mb" in x]
        rows.append([LABEL[phase], C.fmt_num(wall["median"]), f"{C.fmt_num(wall['min'])}-{C.fmt_num(wall['max'])}",
                     ratio, C.fmt_num(cpu["median"]), C.fmt_num(others["median"]),
                     C.fmt_num(C.summarize(recorded)["median"]) if recorded else "", run_ratio,
                     ",".join(map(str, n_tasks)) if n_tasks else "", f"{max(peak):.0f}" if peak else "",
                     C.fmt_num(C.summarize(moved)["median"], 0) if moved else ""])
    headers = ["phase", "median s", "range s", "wall ratio (median, range)", "cpu s (this process)",
               "others cpu-s (median)", "run start-end s (median)", "start-end ratio (median, range)", "task runs",
               "worker peak RSS MB", "workers sent MB (median)"]
    return f"== {name}\n" + C.format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384, help="edge of the square float32 source (16384: 1 GB)")
    ap.add_argument("--levels", type=int, default=7)
    ap.add_argument("--source-chunk", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes (1 thread each)")
    ap.add_argument("--worker-saturation", type=float, default=None,
                    help="the Dask scheduler's worker-saturation (default: Dask's; inf: no root-task queuing)")
    ap.add_argument("--tile-mb", type=int, default=None, help="the flow's max_tile_bytes in MiB (default: the flow's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where local sources are built once")
    ap.add_argument("--tmpdir", default=None, help="where outputs and the Prefect home go (default: system temp)")
    ap.add_argument("--s3", action="store_true", help="source and targets on an S3 endpoint on loopback (moto)")
    ap.add_argument("--only", nargs="*", default=None, choices=list(LABEL), help="these phases only")
    ap.add_argument("--skip", nargs="*", default=[], choices=list(LABEL), help="phases to leave out")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-flow-", dir=args.tmpdir))
    _isolate_prefect(tmp)
    moto = None
    try:
        from prefect.testing.utilities import prefect_test_harness

        from topozarr_flows.prefect_api.slots import LEASES_ON_DISK

        os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASES_ON_DISK)
        s3 = None
        if args.s3:
            moto, s3 = C.start_s3(tmp / "moto.log", bucket="bench")
            os.environ.update(s3.env())  # the flow's tasks and the Dask workers reach it from the environment
        print(C.machine_summary(), f"load {C.load_average():.2f}", "S3 (moto on loopback)" if s3 else "local",
              flush=True)
        where = Where(tmp / "out", s3)
        (tmp / "out").mkdir()
        local = local_source(args.cache_dir, args.size, args.source_chunk, args.seed)
        tiny_local = local_source(args.cache_dir, 256, 128, args.seed)
        src, tiny = where.upload(local, "src.zarr"), where.upload(tiny_local, "tiny.zarr")
        tile_bytes = None if args.tile_mb is None else args.tile_mb * 2**20
        order = [p for p in LABEL if p not in args.skip and (args.only is None or p in args.only)]
        if s3:  # the Icechunk phases write locally; zarrs is for local targets (as io="auto" decides)
            order = [p for p in order if "icechunk" not in p and "zarrs" not in p]
        t0 = time.perf_counter()
        # 60 s, as the test suite allows: the default 30 s is too short on a slow VM (26 s measured)
        with prefect_test_harness(server_startup_timeout=60):
            print(f"Prefect server start (not counted): {time.perf_counter() - t0:.2f} s", flush=True)
            warm = Phases(tiny, where, 3, args.workers, tile_bytes, args.worker_saturation)
            for phase in order:  # untimed warm-up: imports, numba caches, flow registration, cluster start
                warm.clear(phase)
                getattr(warm, phase)()
            phases = Phases(src, where, args.levels, args.workers, tile_bytes, args.worker_saturation)
            phases._cluster = warm._cluster
            if warm._cluster is not None:  # the warm-up's one tile ran on one worker: warm every worker
                warm._cluster[1].run(warm_worker, str(tiny_local))
            name = f"{args.size}x{args.size} float32 ({args.size ** 2 * 4 / 1e9:.1f} GB), {args.levels} levels" + (
                ", S3 to S3" if s3 else "")
            results = run_suite(name, phases, order, args.repeat)
            task_runs = recorded_task_runs(phases.flow_runs)
            tasks = {run_id: len(runs) for run_id, runs in task_runs.items()}
            spent = where_runs_spend(results, task_runs)
            reads = reads_of_the_tile_plan(phases, tile_bytes)
            warm.close()
        print("\n" + report(name, results, tasks))
        if spent:
            print("\n" + spent)
        print("\n" + reads)
        if args.json:
            Path(args.json).write_text(json.dumps({"results": results, "task_runs": tasks, "spent": spent, "reads": reads},
                                                  indent=1, default=str))
    finally:
        if moto is not None:
            C.stop_process(moto)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
