"""Register the deployments of ``deployments/prefect.yaml`` from Python (no image is built).

    python deployments/deploy.py                        # all deployments, on $PREFECT_API_URL
    python deployments/deploy.py --only build-pyramid-adhoc --pool my-pool

The deployment definitions (names, entrypoint, schedules, parameters, work pool) are read from
``prefect.yaml`` beside this file, so ``prefect deploy --all --prefect-file deployments/prefect.yaml``
and this script register the same thing. The flow's code is "pulled" from this checkout: runs on
a process worker start in the repository root (``flow.from_source(<repo root>, entrypoint)``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
PREFECT_YAML = HERE / "prefect.yaml"


def load_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments:`` entries of prefect.yaml (YAML anchors already resolved)."""
    with open(path) as fh:
        return yaml.safe_load(fh)["deployments"]


def schedules_of(spec: dict[str, Any], active: bool | None = None) -> list:
    """prefect.yaml ``schedules:`` (cron entries) as prefect.schedules.Cron objects."""
    from prefect.schedules import Cron

    out = []
    for s in spec.get("schedules") or []:
        if "cron" not in s:
            raise ValueError(f"{spec['name']}: only cron schedules are supported here, got {s}")
        out.append(Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True) if active is None else active))
    return out


def register(
    names: list[str] | None = None,
    pool: str | None = None,
    repo: Path = REPO_ROOT,
    activate_schedules: bool | None = None,
) -> dict[str, UUID]:
    """Create or update the deployments; returns {"<flow name>/<deployment name>": id}.

    ``activate_schedules=False`` registers the schedules paused (True forces them on; None keeps
    prefect.yaml's ``active``)."""
    from prefect import Flow

    ids: dict[str, UUID] = {}
    for spec in load_specs():
        if names and spec["name"] not in names:
            continue
        flow = Flow.from_source(source=str(repo), entrypoint=spec["entrypoint"])
        wp = spec.get("work_pool") or {}
        ids[f"{flow.name}/{spec['name']}"] = flow.deploy(
            name=spec["name"],
            work_pool_name=pool or wp.get("name") or "topozarr-pool",
            work_queue_name=wp.get("work_queue_name"),
            job_variables=wp.get("job_variables") or None,
            build=False,
            push=False,
            schedules=schedules_of(spec, activate_schedules),
            concurrency_limit=spec.get("concurrency_limit"),
            parameters=spec.get("parameters") or {},
            description=spec.get("description"),
            tags=spec.get("tags"),
            enforce_parameter_schema=spec.get("enforce_parameter_schema", True),
            print_next_steps=False,
            ignore_warnings=True,
        )
    missing = set(names or ()) - {full.split("/", 1)[1] for full in ids}
    if missing:
        raise SystemExit(f"no such deployment in {PREFECT_YAML}: {sorted(missing)}")
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", metavar="NAME", help="register only this deployment (repeatable)")
    p.add_argument("--pool", default=os.environ.get("TOPOZARR_POOL"), help="work pool (default: prefect.yaml's)")
    p.add_argument("--paused-schedules", action="store_true", help="register schedules inactive")
    args = p.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("PREFECT_API_URL is not set: start the stack first (eval \"$(infra/up.sh)\")", file=sys.stderr)
        return 2
    ids = register(args.only, args.pool, activate_schedules=False if args.paused_schedules else None)
    for name, dep_id in ids.items():
        print(f"{name}: {dep_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
