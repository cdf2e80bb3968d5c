#!/usr/bin/env bash
# Start the whole local stack, in dependency order:
#   S3 (moto) -> PostgreSQL -> Prefect server -> Prefect setup (pool + limit) -> Dask cluster -> Prefect worker
# Prints the combined exports at the end; use:  eval "$(infra/up.sh)"
# The same exports stay in $TOPOZARR_STATE/stack.env while the stack runs (every script keeps
# it current), so another shell uses the stack with:  source .state/stack.env
# The Dask workers and the Prefect worker are started with the S3 env exported.
# Env knobs (they choose the addresses of services being started; a running service keeps the
# ones it recorded): TOPOZARR_STATE, VENV, PREFECT_PORT, S3_PORT, S3_BUCKET, DASK_SCHEDULER_PORT,
# DASK_HTTP_PORT, DASK_NWORKERS, DASK_NTHREADS, DASK_MEMORY_LIMIT, TOPOZARR_POOL,
# TOPOZARR_WRITES_LIMIT, TOPOZARR_WORKER_NAME, TOPOZARR_WORKER_LIMIT, PG_PORT; SKIP_POSTGRES=1,
# SKIP_DASK=1, SKIP_WORKER=1.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/_common.sh"

on_error() { echo "[up.sh] a step failed; stopping what was started (infra/down.sh)" >&2; "$here/down.sh" >&2 || true; }
trap on_error ERR

"$here/s3.sh" start >/dev/null
# Export AWS_* (and S3_BUCKET) so the Dask workers and the Prefect worker -- and the
# flow-run processes it spawns -- inherit the S3 endpoint configuration.
eval "$("$here/s3.sh" env)"
# The Prefect server's database, as production runs it (SKIP_POSTGRES=1: the server keeps SQLite).
if [ "${SKIP_POSTGRES:-0}" != 1 ]; then "$here/postgres.sh" start >/dev/null; fi
"$here/prefect-server.sh" start >/dev/null
# The clients below (setup, worker) talk to this server, whatever PREFECT_API_URL said before.
eval "$("$here/prefect-server.sh" env)"
"$here/setup-prefect.sh" >&2
if [ "${SKIP_DASK:-0}" != 1 ]; then "$here/dask-cluster.sh" start >/dev/null; fi
if [ "${SKIP_WORKER:-0}" != 1 ]; then "$here/worker.sh" start; fi
trap - ERR

[ -f "$STACK_ENV" ] || die "no $STACK_ENV written"
cat "$STACK_ENV"
echo "[up.sh] stack is up (exports kept in $STACK_ENV); stop it with infra/down.sh" >&2
