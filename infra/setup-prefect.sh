#!/usr/bin/env bash
# Idempotently provision the Prefect server at $PREFECT_API_URL:
#   - process work pool ${TOPOZARR_POOL:-topozarr-pool}
#   - task concurrency limit topozarr-writes = ${TOPOZARR_WRITES_LIMIT:-4}
#     (the slots every tile task of the build and update flows holds; shown under Concurrency in the UI)
# Re-running it is safe; a changed limit value is updated in place.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
require_bin python

export TOPOZARR_POOL="${TOPOZARR_POOL:-topozarr-pool}"
export TOPOZARR_WRITES_LIMIT="${TOPOZARR_WRITES_LIMIT:-4}"

curl -fsS -o /dev/null --max-time 5 "${PREFECT_API_URL%/}/health" \
    || die "no Prefect API answering at $PREFECT_API_URL (start it: infra/prefect-server.sh start)"

"$BIN/python" - <<'PY'
import os

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

pool = os.environ["TOPOZARR_POOL"]
limits = {
    "topozarr-writes": int(os.environ["TOPOZARR_WRITES_LIMIT"]),
}

with get_client(sync_client=True) as client:
    try:
        wp = client.read_work_pool(pool)
        if wp.type != "process":
            raise SystemExit(f"work pool {pool!r} exists with type {wp.type!r}, expected 'process'")
        print(f"work pool {pool!r} (process) already exists")
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        print(f"work pool {pool!r} (process) created")

    for tag, limit in limits.items():
        # a task concurrency limit (tag): creates if missing, updates the limit if it differs
        client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
        gcl = client.read_global_concurrency_limit_by_name(f"tag:{tag}")
        assert gcl.limit == limit and gcl.active, gcl
        print(f"task concurrency limit {tag!r} = {gcl.limit} (active={gcl.active})")
PY
