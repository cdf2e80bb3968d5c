"""The Icechunk steps both flows share: a fork of the staging branch for a stage's tiles, and the final
publication (the user's branch moved to the staging head by compare-and-swap)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from topozarr_core.store import icechunk_txn
from topozarr_flows.params import RunParams
from topozarr_flows.runs.task_options import RETRYING, RUN_CACHED


@task(name="fork-stage", **RUN_CACHED, **RETRYING)
def fork_stage(params: RunParams, staging: str, key: str) -> Any:
    """A picklable ForkSession of the staging head for a stage's tiles.

    :param params: the flow's parameters (an Icechunk target).
    :param staging: the Icechunk staging branch.
    :param key: the last part of the task's run-scoped cache key: ``S<stage>``, one fork per stage.
    """
    return icechunk_txn.fork(params.icechunk, staging)


@task(name="publish-branch", **RUN_CACHED, **RETRYING)
def publish_branch(params: RunParams, staging: str, base: str, key: str = "publish") -> str:
    """The final step: move the user's branch to the staging head (compare-and-swap).

    :param params: the flow's parameters (an Icechunk target).
    :param staging: the Icechunk staging branch.
    :param base: the user's branch head the run started from; the branch must still be there.
    :param key: the last part of the task's run-scoped cache key: one publication per flow run.
    :returns: the published snapshot id.
    """
    snap = icechunk_txn.publish(params.icechunk, staging, base)
    get_run_logger().info("published %s to branch %r", snap, params.branch)
    return snap
