"""``topozarr-flows run`` and ``topozarr-flows watch``: start a deployment's run and follow runs to their
end, printing the one line that says how each ended (:mod:`topozarr_flows.ops.watching`)."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_FAILED = 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` and ``watch`` sub-commands to the command line's parser.

    :param sub: the parser's sub-parsers.
    """
    run = sub.add_parser("run", help="start a run of DEPLOYMENT (<flow>/<deployment>), like `prefect deployment "
                         "run`; with --watch wait for its end and print its final state and message")
    run.add_argument("deployment")
    run.add_argument("--params", type=json.loads, default=None, help='JSON, e.g. \'{"params": {...}}\'')
    run.add_argument("--job-variable", action="append", default=[], metavar="KEY=JSON",
                     help='e.g. env=\'{"AWS_REGION": "eu-west-1"}\' (repeatable)')
    run.add_argument("--watch", action="store_true")
    run.add_argument("--timeout", type=float, help="seconds --watch waits at most")
    watch = sub.add_parser("watch", help="wait for the end of FLOW_RUN_ID and print its final state and message")
    watch.add_argument("flow_run_id")
    watch.add_argument("--timeout", type=float)


def job_variables(pairs: list[str]) -> dict:
    """``--job-variable KEY=VALUE`` pairs as a dict; a VALUE that is JSON is parsed, else kept as a string.

    :param pairs: the pairs as given; ValueError names one without ``=`` or without a key.
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--job-variable {pair[:60]!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def is_run_id(text: str) -> bool:
    """Whether ``text`` is a flow run id; if not, says so on stderr in one line (the value cut)."""
    from uuid import UUID

    try:
        UUID(text)
    except ValueError:
        print(f"not a flow run id: {text[:60]!r}", file=sys.stderr)
        return False
    return True


def follow(flow_run_id: str, timeout: float | None, start_after=None) -> int:
    """Wait for the run's end, print its line; 0 when it completed.

    :param flow_run_id: the flow run's id.
    :param timeout: seconds to wait (None: no limit).
    :param start_after: a final state id the run is in now (a retried run): wait for a different one.
    """
    from prefect.exceptions import ObjectNotFound

    from topozarr_flows.ops.watching import WatchTimeout, end_line, wait_for_end

    if not is_run_id(flow_run_id):
        return 2
    try:
        run = wait_for_end(flow_run_id, timeout=timeout, start_after=start_after)
    except WatchTimeout as err:
        print(str(err), file=sys.stderr)
        return EXIT_FAILED
    except ObjectNotFound:
        print(f"no flow run {flow_run_id} on the Prefect API", file=sys.stderr)
        return 2
    print(end_line(run), flush=True)
    return 0 if run.state.is_completed() else EXIT_FAILED


def main(args: argparse.Namespace) -> int:
    """Run the ``run`` or ``watch`` sub-command.

    :param args: the parsed command line.
    :returns: the process exit code (2 for a bad job variable or an unknown deployment).
    """
    if args.command == "watch":
        return follow(args.flow_run_id, args.timeout)
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        variables = job_variables(args.job_variable)
        run = run_deployment(args.deployment, parameters=args.params, job_variables=variables or None, timeout=0)
    except ValueError as err:
        print(str(err), file=sys.stderr)
        return 2
    except ObjectNotFound:
        print(f"no deployment {args.deployment!r} on the Prefect API", file=sys.stderr)
        return 2
    print(f"flow run {run.id} ({run.name}) of {args.deployment}", flush=True)
    return follow(str(run.id), args.timeout) if args.watch else 0
