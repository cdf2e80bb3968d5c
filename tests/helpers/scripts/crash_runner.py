"""Run one ``build-pyramid`` flow run in this process, so that a test can SIGKILL it mid-run.

    python -m tests.helpers.scripts.crash_runner PARAMS_JSON RUN_ID_FILE [MAX_WORKERS]

The flow run is created through the API first (as a deployment/worker would) and its id is
written to RUN_ID_FILE (atomically) before it starts, so the test knows which run to watch, kill
and retry. Everything else comes from the environment the test passes: ``PREFECT_API_URL`` (the
test harness), ``PREFECT_HOME``/``PREFECT_LOCAL_STORAGE_PATH`` (shared result storage, so a retry
in the test process finds the persisted results of the killed process) and ``TOPOZARR_FAULTS``
(``delay=...`` slows every batch down so the kill lands mid-run).

MAX_WORKERS bounds the thread pool: a SIGKILLed process cannot release the global concurrency
slots it holds (no worker runs the crash hook here: the retry releases them first, see
flows/topozarr_flows/prefect_api/recovery.py), so the test keeps that number below the limit's slots.

Deliberately imports nothing from ``tests.conftest``/``tests.helpers.services`` (which reset
PREFECT_API_URL for isolation).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    params_json, id_file = argv[0], Path(argv[1])
    max_workers = int(argv[2]) if len(argv) > 2 else None
    if not os.environ.get("PREFECT_API_URL"):
        print("crash_runner: PREFECT_API_URL must point at the test harness", file=sys.stderr)
        return 2
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.task_runners import ThreadPoolTaskRunner

    from topozarr_flows import BuildParams, build_pyramid

    params = BuildParams.model_validate_json(params_json)
    flow = build_pyramid.with_options(task_runner=ThreadPoolTaskRunner(max_workers=max_workers))
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flow, parameters={"params": params})
    tmp = id_file.with_suffix(".tmp")
    tmp.write_text(str(run.id))
    tmp.replace(id_file)
    state = run_flow(flow, flow_run=run, parameters={"params": params}, return_type="state")
    print(f"crash_runner: flow run {run.id} ended {state.type.value}", flush=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
