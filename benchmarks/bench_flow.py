"""Flow benchmark: the ``build-pyramid`` Prefect flow and the seed's Dask path against ``Pyramid.write``.

Everything runs in ONE process (this one), against baselines measured in the same run:

* ``core zarr``       ``create_pyramid(ds, ...).write(<local zarr>)`` (the baseline);
* ``flow zarr``       ``build_pyramid(BuildParams(target=<local zarr>))`` on Prefect's default
  thread-pool task runner, with its task-run count;
* ``core icechunk``   ``Pyramid.write(session.store)`` + ``session.commit`` on a new local repo
  (the baseline of the next one);
* ``flow icechunk``   ``build_pyramid(BuildParams(target_format="icechunk"))``;
* ``dask``            ``pyramid.as_datatree().to_zarr(<local zarr>, zarr_format=3, consolidated=False,
  encoding=pyramid.encoding)`` inside a ``dask.distributed`` LocalCluster (threads of this process by
  default, ``--dask-processes`` for worker processes, whose CPU this process does not see);
  compared with ``core zarr``;
* ``flow dask``       the same flow with ``task_runner=DaskTaskRunner(address=<that cluster>)``: its
  batch tasks run on the cluster's workers (each reads the level below from the target: no shared
  level cache); compared with ``core zarr``.

The source is a synthetic float32 raster (``--size`` squared, default 16384: 1 GB) written once as a
local Zarr with ``--source-chunk`` chunks under ``--cache-dir`` and reused by later runs; every phase
opens it lazily (``xr.open_zarr(path, chunks=None)``; the dask phase with ``chunks={}``, its own
chunks). Prefect runs on a private temporary server (``prefect_test_harness``: its own home and
SQLite database) whose start is timed separately and left out. One untimed warm-up of every phase on
a tiny raster comes first (imports, numba caches, first-flow registration).

Each repeat runs every phase once, the order rotating between repeats, with ``os.sync()`` (untimed)
between phases; each phase deletes its previous output first (untimed). Reported per phase: median,
min and max wall seconds, median CPU seconds of this process (all threads), and the CPU seconds the
rest of the machine used meanwhile (others' load: the figures are only comparable when it is low);
ratios are per repeat (flow / its baseline of the same repeat), median and range.

``--tiny`` adds the fixed-cost case: a 256x256 raster, 3 levels (core vs flow zarr).

``--cap-client-retry-sleep S`` is a diagnostic, off by default: it caps the Prefect client's sleep
between retries of a 503 (the SQLite server answers "database is locked" under concurrent writes,
and the client then waits ``2**attempt`` s) at S seconds, to show what the flow costs without that
back-off. It patches Prefect's client module in this process only; never use it for headline figures.

Usage::

    python benchmarks/bench_flow.py                       # 1 GB source, 7 levels, 3 repeats
    python benchmarks/bench_flow.py --size 4096 --levels 5 --repeat 2 --tiny   # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import _common as C  # noqa: E402

CRS = "EPSG:3857"
DEFAULT_CACHE = Path(os.environ.get("TOPOZARR_BENCH_CACHE", Path(tempfile.gettempdir()) / "topozarr-bench-cache"))


def _isolate_prefect(tmp: Path) -> None:
    """A private Prefect home and result storage: must run before anything imports prefect."""
    os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp / "prefect-results")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("PREFECT_API_URL", None)


def _cap_client_retry_sleep(seconds: float) -> None:
    """Diagnostic only (see the module docstring)."""
    import types

    import prefect.client.base as base

    real = time

    class _Time(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    capped = _Time("time")
    capped.sleep = lambda s: real.sleep(min(s, seconds))
    base.time = capped


def source_path(cache: Path, size: int, chunk: int, seed: int) -> Path:
    """The cached source Zarr of this size (built on first use; a marker file says it is complete)."""
    path = cache / f"src-{size}x{size}-c{chunk}-s{seed}.zarr"
    done = path / ".complete"
    if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"building source {path} ...", flush=True)
        C.write_source_zarr(C.synthetic_dataset((size, size), seed=seed), path, chunks={"y": chunk, "x": chunk})
        done.write_text("ok")
    return path


class Phases:
    """The measured phases over one source; each returns extra facts (task runs) as a dict."""

    def __init__(self, src: Path, out: Path, levels: int, dask_processes: bool, flow_options: dict | None = None):
        self.src, self.out, self.levels, self.dask_processes = src, out, levels, dask_processes
        self.flow_options = dict(flow_options or {})  # extra BuildParams (e.g. max_task_runs)
        self.flow_runs: list[tuple[str, str]] = []  # (phase, flow run id) for counting task runs later
        self._cluster = None

    def _fresh(self, name: str) -> Path:
        path = self.out / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def _pyramid(self, chunks: Any = None):
        import xarray as xr

        from topozarr_core import create_pyramid

        ds = xr.open_zarr(self.src, chunks=chunks, consolidated=False)
        return create_pyramid(ds, levels=self.levels, crs=CRS)

    def core_zarr(self) -> dict:
        target = self._fresh("core.zarr")
        self._pyramid().write(str(target))
        return {}

    def core_icechunk(self) -> dict:
        import icechunk

        target = self._fresh("core.icechunk")
        repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(target)))
        session = repo.writable_session("main")
        self._pyramid().write(session.store)
        session.commit("bench: pyramid")
        return {}

    def _flow(self, phase: str, **target: Any) -> dict:
        from flows.build import build_pyramid
        from flows.params import BuildParams

        state = build_pyramid(BuildParams(source=str(self.src), levels=self.levels, crs=CRS, **self.flow_options,
                                          **target), return_state=True)
        if not state.is_completed():
            raise RuntimeError(f"{phase}: flow run ended {state.name}: {state.message}")
        self.flow_runs.append((phase, str(state.state_details.flow_run_id)))
        return {"flow_run_id": str(state.state_details.flow_run_id)}

    def flow_zarr(self) -> dict:
        return self._flow("flow zarr", target=str(self._fresh("flow.zarr")))

    def flow_icechunk(self) -> dict:
        return self._flow("flow icechunk", target=str(self._fresh("flow.icechunk")), target_format="icechunk")

    def dask(self) -> dict:
        pyramid = self._pyramid(chunks={})  # the source's own dask chunks
        target = self._fresh("dask.zarr")
        with self.cluster().as_current():
            pyramid.as_datatree().to_zarr(target, zarr_format=3, consolidated=False, encoding=pyramid.encoding)
        return {}

    def flow_dask(self) -> dict:
        """The flow with its batch tasks on the same LocalCluster (prefect-dask's DaskTaskRunner)."""
        from prefect_dask import DaskTaskRunner

        from flows.build import build_pyramid
        from flows.params import BuildParams

        runner = DaskTaskRunner(address=self.cluster().scheduler.address)
        params = BuildParams(source=str(self.src), levels=self.levels, crs=CRS, target=str(self._fresh("flow-dask.zarr")),
                             **self.flow_options)
        state = build_pyramid.with_options(task_runner=runner)(params, return_state=True)
        if not state.is_completed():
            raise RuntimeError(f"flow on dask: flow run ended {state.name}: {state.message}")
        self.flow_runs.append(("flow dask", str(state.state_details.flow_run_id)))
        return {"flow_run_id": str(state.state_details.flow_run_id)}

    def cluster(self):
        """One LocalCluster for the whole run (its start is not timed): 2 workers of 1 thread."""
        if self._cluster is None:
            from dask.distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=self.dask_processes,
                                   dashboard_address=None)
            self._cluster = (cluster, Client(cluster))
        return self._cluster[1]

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster[1].close()
            self._cluster[0].close()


class ClientRetries(logging.Handler):
    """Counts the Prefect client's retries and the seconds it sleeps before them, from its own debug
    line ("Received response with retryable status code 503. Another attempt will be made in 2.1s.")."""

    PATTERN = re.compile(r"status code (\d+)\. Another attempt will be made in ([0-9.]+)s")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count, self.seconds = 0, 0.0

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.search(record.getMessage())
        if match:
            self.count += 1
            self.seconds += float(match.group(2))
        if record.levelno >= logging.WARNING:  # what Prefect's handlers would have shown anyway
            logging.getLogger("prefect").handle(record)

    def install(self) -> "ClientRetries":
        """(Again before each phase: Prefect re-applies its logging configuration on the way.)"""
        log = logging.getLogger("prefect.client")
        if self not in log.handlers:
            log.addHandler(self)
        log.setLevel(logging.DEBUG)
        log.propagate = False  # its debug lines are counted here, not printed
        return self


RETRIES = ClientRetries()


def measure(fn: Callable[[], dict]) -> dict:
    os.sync()
    RETRIES.install()
    n0, s0 = RETRIES.count, RETRIES.seconds
    cpu0, busy0, t0 = os.times(), C.machine_busy_seconds(), time.perf_counter()
    extra = fn()
    seconds = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    others = max(0.0, C.machine_busy_seconds() - busy0 - cpu)
    return {"seconds": seconds, "cpu": cpu, "others_cpu": others, "client_retries": RETRIES.count - n0,
            "client_retry_sleep_s": RETRIES.seconds - s0, **extra}


def count_task_runs(flow_run_ids: list[str]) -> dict[str, int]:
    """Task runs the server recorded per flow run (task runs are recorded from events: wait for them)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    counts: dict[str, int] = {}
    with get_client(sync_client=True) as client:
        for run_id in flow_run_ids:
            last, stable = -1, 0
            for _ in range(50):
                n = len(client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                                              limit=200))  # the server's maximum
                stable = stable + 1 if n == last else 0
                last = n
                if stable >= 2:
                    break
                time.sleep(0.1)
            counts[run_id] = last
    return counts


def run_suite(name: str, phases: Phases, order: list[str], repeat: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {p: [] for p in order}
    for r in range(repeat):
        rotated = order[r % len(order):] + order[: r % len(order)]
        for phase in rotated:
            res = measure(getattr(phases, phase))
            res["repeat"] = r
            results[phase].append(res)
            print(f"  [{name} repeat {r + 1}/{repeat}] {phase:14s} {res['seconds']:7.2f} s  cpu {res['cpu']:6.2f} s"
                  f"  others {res['others_cpu']:5.2f} cpu-s  client retries {res['client_retries']}"
                  f" ({res['client_retry_sleep_s']:.1f} s asleep)", flush=True)
    return results


BASELINE = {"flow_zarr": "core_zarr", "flow_icechunk": "core_icechunk", "dask": "core_zarr", "flow_dask": "core_zarr"}
LABEL = {"core_zarr": "core zarr (Pyramid.write)", "flow_zarr": "flow zarr", "core_icechunk": "core icechunk + commit",
         "flow_icechunk": "flow icechunk", "dask": "dask as_datatree.to_zarr", "flow_dask": "flow zarr, DaskTaskRunner"}


def report(name: str, results: dict[str, list[dict]], tasks: dict[str, int]) -> str:
    rows = []
    for phase, runs in results.items():
        wall = C.summarize([x["seconds"] for x in runs])
        cpu = C.summarize([x["cpu"] for x in runs])
        others = C.summarize([x["others_cpu"] for x in runs])
        ratio = cpu_ratio = None
        base = BASELINE.get(phase)
        if base in results:
            by_rep = {x["repeat"]: x for x in results[base]}
            rs = C.summarize([x["seconds"] / by_rep[x["repeat"]]["seconds"] for x in runs])
            cs = C.summarize([x["cpu"] / by_rep[x["repeat"]]["cpu"] for x in runs])
            ratio = f"{rs['median']:.2f}x ({rs['min']:.2f}-{rs['max']:.2f}) vs {base}"
            cpu_ratio = f"{cs['median']:.2f}x"
        n_tasks = sorted({tasks.get(x.get("flow_run_id", ""), -1) for x in runs if "flow_run_id" in x})
        asleep = C.summarize([x["client_retry_sleep_s"] for x in runs])
        rows.append([LABEL[phase], C.fmt_num(wall["median"]), f"{C.fmt_num(wall['min'])}-{C.fmt_num(wall['max'])}",
                     C.fmt_num(cpu["median"]), cpu_ratio or "", ratio or "baseline" if not base else ratio,
                     ",".join(map(str, n_tasks)) if n_tasks else "", C.fmt_num(asleep["median"]),
                     C.fmt_num(others["max"])])
    headers = ["phase", "median s", "range s", "cpu s", "cpu ratio", "wall ratio (median, range)", "task runs",
               "client back-off s (asked, all threads)", "others cpu-s (max)"]
    return f"== {name}\n" + C.format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384, help="edge of the square float32 source (16384: 1 GB)")
    ap.add_argument("--levels", type=int, default=7)
    ap.add_argument("--source-chunk", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where sources are built once and reused")
    ap.add_argument("--tmpdir", default=None, help="where outputs and the Prefect home go (default: system temp)")
    ap.add_argument("--tiny", action="store_true", help="also the fixed-cost case: 256x256, 3 levels, core vs flow")
    ap.add_argument("--skip", nargs="*", default=[], choices=list(LABEL), help="phases to leave out")
    ap.add_argument("--dask-processes", action="store_true", help="LocalCluster of worker processes")
    ap.add_argument("--max-task-runs", type=int, default=None, help="the flows' max_task_runs (default: the flow's)")
    ap.add_argument("--cap-client-retry-sleep", type=float, default=None, help="diagnostic only, see the docstring")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-flow-", dir=args.tmpdir))
    _isolate_prefect(tmp)
    try:
        from prefect.testing.utilities import prefect_test_harness

        from flows.slots import LEASES_ON_DISK

        # slot leases on disk, as infra/prefect-server.sh and the test harness keep them (flows/slots.py)
        os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASES_ON_DISK)
        if args.cap_client_retry_sleep is not None:
            _cap_client_retry_sleep(args.cap_client_retry_sleep)
            print(f"DIAGNOSTIC: Prefect client retry sleeps capped at {args.cap_client_retry_sleep} s", flush=True)
        RETRIES.install()
        print(C.machine_summary(), f"load {C.load_average():.2f}", flush=True)
        src = source_path(args.cache_dir, args.size, args.source_chunk, args.seed)
        tiny = source_path(args.cache_dir, 256, 128, args.seed)
        t0 = time.perf_counter()
        with prefect_test_harness():
            server_s = time.perf_counter() - t0
            print(f"Prefect server start (not counted): {server_s:.2f} s", flush=True)
            order = [p for p in LABEL if p not in args.skip]
            warm = Phases(tiny, tmp / "warm", 3, args.dask_processes)
            for phase in order:  # untimed warm-up: imports, numba caches, flow registration, cluster start
                getattr(warm, phase)()
            options = {} if args.max_task_runs is None else {"max_task_runs": args.max_task_runs}
            suites = {f"{args.size}x{args.size}, {args.levels} levels": Phases(src, tmp / "main", args.levels,
                                                                                args.dask_processes, options)}
            if args.tiny:
                suites["256x256, 3 levels (fixed cost)"] = Phases(tiny, tmp / "tiny", 3, args.dask_processes, options)
            all_results, texts = {}, []
            for name, phases in suites.items():
                phases._cluster = warm._cluster  # one cluster for the run
                wanted = order if phases.src == src else [p for p in ("core_zarr", "flow_zarr") if p in order]
                results = run_suite(name, phases, wanted, args.repeat)
                tasks = count_task_runs([rid for _, rid in phases.flow_runs])
                texts.append(report(name, results, tasks))
                all_results[name] = {"results": results, "task_runs": tasks}
            warm.close()
        print(f"\nPrefect server start (not counted): {server_s:.2f} s; load average now {C.load_average():.2f}")
        for text in texts:
            print("\n" + text)
        if args.json:
            Path(args.json).write_text(json.dumps({"server_start_s": server_s, "suites": all_results}, indent=1,
                                                  default=str))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
