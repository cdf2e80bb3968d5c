"""``topozarr-flows``: run the build flow ad hoc, or the self-contained demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="topozarr-flows", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a pyramid from SOURCE into TARGET (runs the Prefect flow)")
    b.add_argument("source")
    b.add_argument("target")
    b.add_argument("--icechunk", action="store_true", help="TARGET is an Icechunk repository (created if missing)")
    b.add_argument("--branch", default="main")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--levels", type=int)
    g.add_argument("--factors", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 1,4,16")
    b.add_argument("--x-dim", default="x")
    b.add_argument("--y-dim", default="y")
    b.add_argument("--method", default="mean")
    b.add_argument("--crs")
    b.add_argument("--variables", type=lambda s: s.split(","))
    b.add_argument("--chunks-per-shard", type=lambda s: None if s == "none" else int(s), default=4)
    b.add_argument("--io", choices=["python", "rust"], default="python")
    b.add_argument("--mode", choices=["w", "w-", "a"], default="w")
    b.add_argument("--overwrite-foreign", action="store_true",
                   help="let --mode w replace a TARGET holding data topozarr-flows did not write (deletes it all)")
    b.add_argument("--concurrency", type=int, default=4, help="slots when the flow creates the limit")
    b.add_argument("--regions-per-batch", type=int)
    d = sub.add_parser("demo", help="generate demo data and build it into a local Icechunk repo")
    d.add_argument("--out", default="demo-output")
    r = sub.add_parser("retry", help="retry a failed flow run exactly like the UI's Retry button")
    r.add_argument("flow_run_id")
    r.add_argument("--here", action="store_true", help="execute it in this process instead of via a worker")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry off-machine
    from .params import BuildParams

    if args.command == "retry":
        from .retry import mark_for_retry, retry_here

        if args.here:
            state = retry_here(args.flow_run_id)
            print(f"flow run {args.flow_run_id}: {state.type.value}")
            return 0 if state.is_completed() else 1
        print(f"flow run {args.flow_run_id}: {mark_for_retry(args.flow_run_id)} (a worker will run it again)")
        return 0
    try:
        if args.command == "demo":
            from .demo import write_demo_source

            import icechunk

            # The demo repo is on the local filesystem, where icechunk warns on every session that
            # concurrent commits are unsafe; this flow commits one at a time, so keep the demo quiet.
            icechunk.set_logs_filter("error")
            out = Path(args.out).resolve()
            source = write_demo_source(out)
            params = BuildParams(source=str(source), target=str(out / "pyramid.icechunk"),
                                 target_format="icechunk", levels=4, x_dim="lon", y_dim="lat")
        else:
            params = BuildParams(
                source=args.source, target=args.target, target_format="icechunk" if args.icechunk else "zarr",
                branch=args.branch, levels=args.levels, factors=args.factors, x_dim=args.x_dim,
                y_dim=args.y_dim, method=args.method, crs=args.crs, variables=args.variables,
                chunks_per_shard=args.chunks_per_shard, io=args.io, mode=args.mode,
                overwrite_foreign=args.overwrite_foreign,
                default_concurrency=args.concurrency, regions_per_batch=args.regions_per_batch,
            )
    except ValidationError as err:
        print(f"invalid parameters:\n{err}", file=sys.stderr)
        return 2
    from .build import build_pyramid

    result = build_pyramid(params)
    print(json.dumps({k: v for k, v in result.items()}, indent=2, default=str))
    if args.command == "demo":
        print(f"\npyramid published to the 'main' branch of {params.target}\n"
              f"open it: icechunk.Repository.open(icechunk.local_filesystem_storage({params.target!r}))"
              ".readonly_session('main').store")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
