"""The Prefect server under a flow of many small tiles: SQLite (the embedded default) against PostgreSQL
(what infra/up.sh runs, as production would).

For each database, a real ``prefect server`` is started with the infra/ scripts in a private state dir
on free loopback ports (``infra/postgres.sh`` first for PostgreSQL), then one ``build-pyramid`` flow runs
in this process against it, on the default thread runner: a ``--side`` squared float32 raster (11264: 500
MB), two levels, one chunk per shard, 100 kB tiles: one tile per level-0 shard and one per level-1 shard
(2,420 tiles with the planner's balanced chunks), besides planning, initialising, validating and publishing. Printed per
database: wall seconds of the flow, task runs, CPU seconds of the server's processes during the flow
(the Prefect server, and PostgreSQL's for PostgreSQL) and per task run, the CPU of this process, and
the server's "database is locked" answers: requests the API answered 503 because SQLite was busy
(the server is started with ``PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true``, so each is logged) and the
requests of this process that were asked again after such an answer.

Usage::

    python benchmarks/bench_server.py                 # 2,420 tiles on each database
    python benchmarks/bench_server.py --side 4096 --only postgres
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import _common as C  # noqa: E402

LOCKED_ANSWER = "Encountered retryable exception in request"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_cpu(pid_file: Path) -> float:
    """CPU seconds of the process in ``pid_file`` and everything under it (0 when it is not running)."""
    import psutil

    try:
        root = psutil.Process(int(pid_file.read_text()))
        procs = [root, *root.children(recursive=True)]
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


class Server:
    """A prefect server on SQLite or PostgreSQL, started and stopped with the infra/ scripts."""

    def __init__(self, database: str, root: Path) -> None:
        self.database, self.state = database, root / f"state-{database}"
        self.state.mkdir(parents=True)
        self.state.chmod(0o755)  # PostgreSQL's own user must reach its data dir
        port = _free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
        self.env.update(VENV=sys.prefix, TOPOZARR_STATE=str(self.state), PREFECT_PORT=str(port),
                        PG_PORT=str(_free_port()), PREFECT_HOME=str(self.state / "prefect-home"),
                        PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true", PREFECT_SERVER_ANALYTICS_ENABLED="false")

    def _sh(self, *args: str) -> None:
        done = subprocess.run([str(REPO / "infra" / args[0]), *args[1:]], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"infra/{' '.join(args)} failed:\n{done.stderr[-3000:]}")

    def start(self) -> None:
        if self.database == "postgres":
            self._sh("postgres.sh", "start")
        self._sh("prefect-server.sh", "start")

    def stop(self) -> None:
        self._sh("prefect-server.sh", "stop")
        if self.database == "postgres":
            self._sh("postgres.sh", "stop")

    def cpu(self) -> float:
        return _tree_cpu(self.state / "prefect-server.pid") + _tree_cpu(self.state / "postgres.pid")

    def locked_answers(self) -> int:
        log = self.state / "logs" / "prefect-server.log"
        return log.read_text(errors="replace").count(LOCKED_ANSWER) if log.exists() else 0


def source(path: Path, side: int) -> str:
    """A ``side`` x ``side`` float32 raster as a Zarr."""
    return C.write_source_zarr(C.synthetic_dataset((side, side), seed=1), path, chunks={"y": 1024, "x": 1024})


def run_flow(server: Server, src: str, target: Path) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from topozarr_flows import BuildParams, build_pyramid
    from topozarr_flows.prefect_api.client import busy_answers

    params = BuildParams(source=src, target=str(target), levels=2, x_dim="x", y_dim="y", crs="EPSG:3857",
                         chunks_per_shard=1, max_tile_bytes=100_000, max_task_runs=100_000)
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        cpu0, busy0, server0, asked0 = os.times(), C.machine_busy_seconds(), server.cpu(), busy_answers()
        t0 = time.perf_counter()
        state = build_pyramid(params, return_state=True)
        seconds = time.perf_counter() - t0
        cpu1 = os.times()
        server_cpu = server.cpu() - server0
        if not state.is_completed():
            raise RuntimeError(f"the flow run ended {state.name}: {state.message}")
        run_id = state.state_details.flow_run_id
        # the run's events and logs reach this server before it is stopped (else they wait for it at exit)
        EventsWorker.drain_all(timeout=60)
        APILogWorker.drain_all(timeout=60)
        names: list[str] = []
        with get_client(sync_client=True) as client:
            while batch := client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                                                 limit=200, offset=len(names)):
                names += [t.name for t in batch]
    runs, tiles = len(names), sum(name.startswith("tile-") for name in names)
    return {"seconds": seconds, "task_runs": runs, "server_cpu": server_cpu,
            "flow_cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "others_cpu": max(0.0, C.machine_busy_seconds() - busy0 - server_cpu),
            "asked_again": busy_answers() - asked0, "tiles": tiles}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=11264, help="edge of the square raster (11264: 2,420 tiles)")
    ap.add_argument("--only", choices=["sqlite", "postgres"], default=None)
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-server-", dir=args.tmpdir))
    root.chmod(0o755)
    os.environ["PREFECT_HOME"] = str(root / "client-home")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(root / "results")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["TOPOZARR_RETRY_DELAY"] = "0"
    try:
        print(C.machine_summary(), f"load {C.load_average():.2f}", flush=True)
        src = source(root / "src.zarr", args.side)
        rows = []
        for database in ("sqlite", "postgres"):
            if args.only and database != args.only:
                continue
            server = Server(database, root)
            server.start()
            try:
                locked0 = server.locked_answers()
                res = run_flow(server, src, root / f"{database}.zarr")
                res["locked"] = server.locked_answers() - locked0
            finally:
                server.stop()
            print(f"  {database}: {res['seconds']:.1f} s, {res['task_runs']} task runs ({res['tiles']} tiles), server {res['server_cpu']:.1f} "
                  f"cpu-s, {res['locked']} 'database is locked' answers", flush=True)
            rows.append([database, f"{res['seconds']:.1f}", res["task_runs"], f"{res['server_cpu']:.1f}",
                         f"{1000 * res['server_cpu'] / max(res['task_runs'], 1):.1f}", f"{res['flow_cpu']:.1f}",
                         res["locked"], res["asked_again"], f"{res['others_cpu']:.1f}"])
        headers = ["database", "flow s", "task runs", "server cpu-s", "server cpu ms / task run", "flow process cpu-s",
                   "'database is locked' answers", "requests asked again here", "others cpu-s"]
        print(f"\n{args.side}x{args.side} float32, 2 levels, 100 kB tiles: one flow each\n"
              + C.format_table(headers, rows))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
