#!/usr/bin/env bash
# Stop the whole local stack in reverse order. Safe to run when (parts of) it are not running.
# Each stop removes the service's recorded addresses; stack.env goes with the last one.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rc=0
"$here/worker.sh" stop || rc=1
"$here/dask-cluster.sh" stop || rc=1
"$here/prefect-server.sh" stop || rc=1
"$here/postgres.sh" stop || rc=1
"$here/s3.sh" stop || rc=1
exit $rc
