"""``topozarr-flows``: run the build flow ad hoc, or the self-contained demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from topozarr_core.plan.tiles import DEFAULT_TILE_BYTES
from topozarr_flows.ops import cli_runs


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
    b.add_argument("--io", choices=["auto", "python", "rust"], default="auto",
                   help="codec pipeline: auto (zarrs on local targets), python or rust")
    b.add_argument("--mode", choices=["w", "w-", "a"], default="w")
    b.add_argument("--overwrite-foreign", action="store_true",
                   help="let --mode w replace a TARGET holding data topozarr-flows did not write (deletes it all)")
    b.add_argument("--concurrency", type=int, default=4, help="slots when the flow creates the limit")
    b.add_argument("--max-tile-mb", type=int, help="input MB per tile task (default: %(default)s)",
                   default=DEFAULT_TILE_BYTES // 2**20)
    d = sub.add_parser("demo", help="generate demo data and build it into a local Icechunk repo")
    d.add_argument("--out", default="demo-output")
    r = sub.add_parser("retry", help="retry a finished build or update flow run (the same run id) like the "
                       "UI's Retry button: AwaitingRetry, forced; a worker runs it again")
    r.add_argument("flow_run_id")
    r.add_argument("--here", action="store_true", help="execute it in this process instead of via a worker "
                   "(needed for runs without a deployment)")
    r.add_argument("--unfinished", action="store_true", help="also a run the API still shows as Running (or "
                   "Pending, ...) whose process is gone, e.g. after its worker was killed")
    r.add_argument("--watch", action="store_true", help="wait for the retried run's end and print its final "
                   "state and message")
    cli_runs.add_parsers(sub)
    v = sub.add_parser("preview", help="serve a web map of PYRAMID (maplibre + zarr-layer) on 127.0.0.1")
    v.add_argument("pyramid", help="a local path, an s3:// URL (AWS_* environment, AWS_ENDPOINT_URL for another "
                   "S3 service) or an Icechunk repository")
    v.add_argument("--icechunk", action="store_true", help="PYRAMID is an Icechunk repository (found by itself "
                   "for a local folder)")
    v.add_argument("--branch", default="main", help="the Icechunk branch to show")
    v.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    v.add_argument("--open", action="store_true", help="open the page in the default web browser ($BROWSER)")
    return p


def _preview(args: argparse.Namespace) -> int:
    from topozarr_flows.preview.pyramid_store import PreviewError, open_pyramid
    from topozarr_flows.preview.server import PreviewServer

    try:
        pyramid = open_pyramid(args.pyramid, icechunk=args.icechunk, branch=args.branch)
        server = PreviewServer(pyramid, port=args.port)
    except (PreviewError, FileNotFoundError) as err:
        print(str(err), file=sys.stderr)
        return 2
    except OSError as err:
        print(f"preview: cannot listen on 127.0.0.1:{args.port}: {err.strerror} (choose another --port; 0 picks "
              "a free one)", file=sys.stderr)
        return 2
    print(f"previewing {server.pyramid.label} at {server.url}  (Ctrl-C stops)", flush=True)
    if args.open:
        import webbrowser

        if not webbrowser.open(server.url):
            print(f"preview: no web browser to open; open {server.url} yourself", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``topozarr-flows`` command line: parse ``argv`` and run the sub-command.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    :returns: the process exit code.
    """
    args = _build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry off-machine
    from topozarr_flows.prefect_api.slots import LEASES_ON_DISK

    # an ephemeral server started by this process keeps leases on disk (see topozarr_flows.prefect_api.slots.LEASES_ON_DISK)
    os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASES_ON_DISK)
    from topozarr_flows.params import BuildParams

    if args.command == "retry":
        return _retry(args.flow_run_id, args.here, args.unfinished, args.watch)
    if args.command in ("run", "watch"):
        return cli_runs.main(args)
    if args.command == "preview":
        return _preview(args)
    try:
        if args.command == "demo":
            import icechunk

            from topozarr_flows.ops.demo import write_demo_source

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
                default_concurrency=args.concurrency, max_tile_bytes=args.max_tile_mb * 2**20,
            )
    except ValidationError as err:
        print(f"invalid parameters:\n{err}", file=sys.stderr)
        return 2
    from topozarr_flows.build.flow import build_pyramid
    from topozarr_flows.ops.refusals import exit_code, failure_line, refusals_without_tracebacks, settle_logs

    with refusals_without_tracebacks():
        state = build_pyramid(params, return_state=True)
    if not state.is_completed():  # one line (no traceback); exit code 2 for a refusal, as for bad parameters
        settle_logs()
        print(failure_line(state), file=sys.stderr)
        return exit_code(state)
    result = state.result()
    print(json.dumps({k: v for k, v in result.items()}, indent=2, default=str))
    if args.command == "demo":
        print(f"\npyramid published to the 'main' branch of {params.target}\n"
              f"open it: icechunk.Repository.open(icechunk.local_filesystem_storage({params.target!r}))"
              ".readonly_session('main').store")
    return 0


def _retry(flow_run_id: str, here: bool, unfinished: bool = False, watch: bool = False) -> int:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from topozarr_flows.ops.retry import RetryRefused, mark_for_retry, retry_here

    if not cli_runs.is_run_id(flow_run_id):
        return 2
    try:
        if here:
            state = retry_here(flow_run_id, unfinished=unfinished)
            print(f"flow run {flow_run_id}: {state.name} ({state.type.value})")
            if state.message and not state.is_completed():
                print(" ".join(state.message.split()))
            return 0 if state.is_completed() else 1
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            deployment = client.read_deployment(run.deployment_id) if run.deployment_id else None
        if deployment is None:
            print(f"flow run {flow_run_id} has no deployment, so no worker would run it: use --here",
                  file=sys.stderr)
            return 2
        mark_for_retry(flow_run_id, unfinished=unfinished)
    except RetryRefused as err:
        print(str(err), file=sys.stderr)
        return 1
    except ObjectNotFound:
        print(f"no flow run {flow_run_id} on the Prefect API", file=sys.stderr)
        return 1
    by = (f"a worker polling pool {deployment.work_pool_name!r}" if deployment.work_pool_name
          else f"the process serving deployment {deployment.name!r}")
    print(f"flow run {flow_run_id}: AwaitingRetry; {by} will run it again", flush=True)
    return cli_runs.follow(flow_run_id, None, start_after=run.state.id) if watch else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
