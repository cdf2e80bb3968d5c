"""Single-process alternative to work pool + worker: serve the deployments from this process.

    python deployments/serve.py              # needs only a Prefect server ($PREFECT_API_URL)

Registers the deployments of ``prefect.yaml`` (build-pyramid-adhoc, build-pyramid-nightly,
update-pyramid-nightly) as *served* deployments (no work pool), then polls for their runs and
executes each in a subprocess until stopped with Ctrl-C (which pauses their schedules). It
registers the same names as ``deploy.py``: use one or the other; it refuses to take over names
that are registered on a work pool.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy import REPO_ROOT, load_specs, schedules_of  # noqa: E402


def _import_flow(entrypoint: str):
    """``flows/topozarr_flows/build/flow.py:build_pyramid`` -> the flow object of the installed module topozarr_flows.build.flow."""
    path, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="most flow runs executed at the same time")
    p.add_argument("--paused-schedules", action="store_true", help="serve with the schedules inactive")
    args = p.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("PREFECT_API_URL is not set: start a server first (infra/prefect-server.sh start)", file=sys.stderr)
        return 2
    os.chdir(REPO_ROOT)  # runs resolve the entrypoint and relative parameter paths from the repo root
    from prefect import serve
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    specs = load_specs()
    flows = {spec["name"]: _import_flow(spec["entrypoint"]) for spec in specs}
    with get_client(sync_client=True) as client:
        for spec in specs:
            full = f"{flows[spec['name']].name}/{spec['name']}"
            try:
                existing = client.read_deployment_by_name(full)
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                # Serving over a work-pool deployment leaves a mix of both that neither runs reliably.
                print(f"deployment {full} is registered on work pool {existing.work_pool_name!r}; delete it "
                      f"first (prefect deployment delete '{full}') or use that pool's worker", file=sys.stderr)
                return 1

    deployments = [
        flows[spec["name"]].to_deployment(
            name=spec["name"],
            schedules=schedules_of(spec, False if args.paused_schedules else None),
            concurrency_limit=spec.get("concurrency_limit"),
            parameters=spec.get("parameters") or {},
            description=spec.get("description"),
            tags=spec.get("tags"),
            enforce_parameter_schema=spec.get("enforce_parameter_schema", True),
        )
        for spec in specs
    ]
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
