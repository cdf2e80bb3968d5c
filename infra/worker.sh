#!/usr/bin/env bash
# Prefect process worker polling ${TOPOZARR_POOL:-topozarr-pool} on $PREFECT_API_URL.
#   infra/worker.sh start|stop|status
# Flow runs execute as subprocesses of the worker, with cwd = repo root, and inherit its
# environment (the S3 settings: from the shell, else from the running infra/s3.sh's record).
# Optional: TOPOZARR_WORKER_LIMIT (max concurrent flow runs), TOPOZARR_WORKER_NAME.
# While it runs, the pool, name and API it was started with are recorded in $TOPOZARR_STATE/worker.env.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

NAME=worker
use_recorded "$NAME" TOPOZARR_POOL TOPOZARR_WORKER_NAME   # while it runs: what it was started with
TOPOZARR_POOL="${TOPOZARR_POOL:-topozarr-pool}"
TOPOZARR_WORKER_NAME="${TOPOZARR_WORKER_NAME:-topozarr-worker-$(hostname)}"
POOL="$TOPOZARR_POOL" WORKER_NAME="$TOPOZARR_WORKER_NAME"
# the API it polls: while it runs, the recorded one; else $PREFECT_API_URL (see _common.sh)
if api="$(recorded "$NAME" PREFECT_API_URL)"; then PREFECT_API_URL="$api"; fi

case "${1:-}" in
start)
    require_bin prefect
    # Flow runs read S3 settings from the worker's environment: a worker started from a shell
    # without them (a new shell, a restart) gets the recorded ones of the running S3 endpoint.
    use_s3_record_if_unset
    curl -fsS -o /dev/null --max-time 5 "${PREFECT_API_URL%/}/health" \
        || die "no Prefect API answering at $PREFECT_API_URL (start it: infra/prefect-server.sh start)"
    args=(worker start --pool "$POOL" --type process --name "$WORKER_NAME"
          --install-policy never --no-create-pool-if-not-found)
    if [ -n "${TOPOZARR_WORKER_LIMIT:-}" ]; then args+=(--limit "$TOPOZARR_WORKER_LIMIT"); fi
    start_bg "$NAME" "$BIN/prefect" "${args[@]}"
    # Ready once the worker has registered itself with the pool (heartbeat).
    POOL="$POOL" WORKER_NAME="$WORKER_NAME" timeout 60 "$BIN/python" - <<'PY' || { tail -n 30 "$LOG_DIR/$NAME.log" >&2; die "worker did not register"; }
import os, time
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    while True:
        if any(w.name == os.environ["WORKER_NAME"] for w in c.read_workers_for_work_pool(os.environ["POOL"])):
            break
        time.sleep(0.5)
PY
    write_record "$NAME" TOPOZARR_POOL TOPOZARR_WORKER_NAME PREFECT_API_URL
    log "worker '$WORKER_NAME' polling pool '$POOL' at $PREFECT_API_URL"
    ;;
stop)
    stop_bg "$NAME" 30
    drop_record "$NAME"
    ;;
status)
    if is_running "$NAME"; then
        echo "$NAME: running (pid $(cat "$(pidfile "$NAME")")), '$WORKER_NAME' polling pool '$POOL' at $PREFECT_API_URL"
    else echo "$NAME: not running"; exit 3; fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
