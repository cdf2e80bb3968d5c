#!/usr/bin/env bash
# Local Dask cluster on loopback: one scheduler (tcp://127.0.0.1:${DASK_SCHEDULER_PORT:-8786})
# and one `dask worker` command running ${DASK_NWORKERS:-2} worker processes with
# ${DASK_NTHREADS:-1} thread(s) each (memory limit ${DASK_MEMORY_LIMIT:-auto} per process).
# No dashboards (bokeh is not installed), but the scheduler/worker HTTP servers (health,
# metrics) still start and would bind 0.0.0.0 by default, so --dashboard-address pins them to
# 127.0.0.1: the scheduler's on ${DASK_HTTP_PORT:-8787}, the workers' on free ports.
#   infra/dask-cluster.sh start|stop|status|env
# While the scheduler runs, the values it was started with (recorded in
# $TOPOZARR_STATE/dask-scheduler.env) are used, whatever the DASK_* variables say.
#
# A flow uses it with:
#   from prefect_dask import DaskTaskRunner
#   @flow(task_runner=DaskTaskRunner(address=os.environ["DASK_SCHEDULER_ADDRESS"]))
# or, for an existing flow object:
#   my_flow.with_options(task_runner=DaskTaskRunner(address="tcp://127.0.0.1:8786"))
# Workers import task code by module name (cloudpickle pickles importable functions
# by reference), so they run with cwd = repo root and the project installed in
# $VENV; code outside the installed packages must be on PYTHONPATH here too.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

# While the scheduler runs: the recorded values it was started with (dask-scheduler.env).
use_recorded dask-scheduler DASK_SCHEDULER_PORT DASK_HTTP_PORT DASK_NWORKERS DASK_NTHREADS DASK_MEMORY_LIMIT
DASK_SCHEDULER_PORT="${DASK_SCHEDULER_PORT:-8786}"
DASK_HTTP_PORT="${DASK_HTTP_PORT:-8787}"
DASK_SCHEDULER_ADDRESS="tcp://127.0.0.1:${DASK_SCHEDULER_PORT}"
DASK_NWORKERS="${DASK_NWORKERS:-2}"
DASK_NTHREADS="${DASK_NTHREADS:-1}"
DASK_MEMORY_LIMIT="${DASK_MEMORY_LIMIT:-auto}"
PORT="$DASK_SCHEDULER_PORT" ADDRESS="$DASK_SCHEDULER_ADDRESS" NWORKERS="$DASK_NWORKERS"
ENV_VARS=(DASK_SCHEDULER_ADDRESS DASK_SCHEDULER_PORT DASK_HTTP_PORT DASK_NWORKERS DASK_NTHREADS DASK_MEMORY_LIMIT)

print_env() { local v; for v in "${ENV_VARS[@]}"; do printf 'export %s=%q\n' "$v" "${!v}"; done; }

case "${1:-}" in
start)
    require_bin dask
    use_s3_record_if_unset   # tasks on these workers read S3 settings from their environment
    if ! is_running dask-scheduler; then
        port_free "$PORT" || die "127.0.0.1:$PORT is already in use (DASK_SCHEDULER_PORT)"
        # taken, dask would silently move its HTTP server to another port than the recorded one
        port_free "$DASK_HTTP_PORT" || die "127.0.0.1:$DASK_HTTP_PORT is already in use (DASK_HTTP_PORT)"
        start_bg dask-scheduler "$BIN/dask" scheduler --host 127.0.0.1 --port "$PORT" \
            --no-dashboard --dashboard-address "127.0.0.1:${DASK_HTTP_PORT}"
    fi
    wait_port "$PORT" 60 dask-scheduler || die "dask scheduler failed to start"
    if ! is_running dask-worker; then
        mkdir -p "$STATE_DIR/dask-worker-space"
        start_bg dask-worker "$BIN/dask" worker "$ADDRESS" \
            --host 127.0.0.1 --nworkers "$NWORKERS" --nthreads "$DASK_NTHREADS" \
            --memory-limit "$DASK_MEMORY_LIMIT" --no-dashboard --dashboard-address 127.0.0.1:0 \
            --local-directory "$STATE_DIR/dask-worker-space"
    fi
    # Ready when all workers have registered with the scheduler.
    ADDRESS="$ADDRESS" NWORKERS="$NWORKERS" timeout 90 "$BIN/python" - <<'PY' || { tail -n 30 "$LOG_DIR/dask-worker.log" >&2; die "dask workers did not register"; }
import os
from distributed import Client
with Client(os.environ["ADDRESS"], timeout="30s") as c:
    c.wait_for_workers(int(os.environ["NWORKERS"]), timeout=60)
    print(f"dask cluster {os.environ['ADDRESS']}: {len(c.scheduler_info()['workers'])} workers", flush=True)
PY
    write_record dask-scheduler "${ENV_VARS[@]}"
    print_env
    ;;
stop)
    # Workers first so they do not log reconnect errors against a dead scheduler.
    stop_bg dask-worker 30
    stop_bg dask-scheduler 15
    drop_record dask-scheduler
    ;;
status)
    rc=0
    for n in dask-scheduler dask-worker; do
        if is_running "$n"; then
            case "$n" in
            dask-scheduler) where=" at $ADDRESS (HTTP 127.0.0.1:$DASK_HTTP_PORT)" ;;
            *) where=": $NWORKERS processes x $DASK_NTHREADS threads" ;;
            esac
            echo "$n: running (pid $(cat "$(pidfile "$n")"))$where"
        else echo "$n: not running"; rc=3; fi
    done
    exit $rc
    ;;
env)
    print_env
    ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
