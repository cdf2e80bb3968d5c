#!/usr/bin/env bash
# Idempotently provision the Prefect server at $PREFECT_API_URL:
#   - process work pool ${TOPOZARR_POOL:-topozarr-pool}
#   - global concurrency limit topozarr-region-writes = ${TOPOZARR_REGION_WRITES_LIMIT:-4}
#     (the slots every region-batch write task of the build and update flows holds)
# Re-running it is safe; a changed limit value is updated in place.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
require_bin python

export TOPOZARR_POOL="${TOPOZARR_POOL:-topozarr-pool}"
export TOPOZARR_REGION_WRITES_LIMIT="${TOPOZARR_REGION_WRITES_LIMIT:-4}"

curl -fsS -o /dev/null --max-time 5 "${PREFECT_API_URL%/}/health" \
    || die "no Prefect API answering at $PREFECT_API_URL (start it: infra/prefect-server.sh start)"

"$BIN/python" - <<'PY'
import os

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

pool = os.environ["TOPOZARR_POOL"]
limits = {
    "topozarr-region-writes": int(os.environ["TOPOZARR_REGION_WRITES_LIMIT"]),
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

    for name, limit in limits.items():
        # creates if missing, updates the limit if it differs
        client.upsert_global_concurrency_limit_by_name(name, limit)
        gcl = client.read_global_concurrency_limit_by_name(name)
        assert gcl.limit == limit and gcl.active, gcl
        print(f"global concurrency limit {name!r} = {gcl.limit} (active={gcl.active})")
PY
