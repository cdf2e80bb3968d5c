"""The build flow's Prefect part alone: what ``bench_flow.py``'s ``flow empty`` phases run.

This flow has the ``build-pyramid`` flow's tasks in its order, with its options (run-scoped persisted
results, the tile's retries), the write limit (ensured, and one slot held by the tile) and its two
artifacts, and bodies that do nothing else: from its run's start to its end it measures what Prefect
and the limit cost a build of one tile before any work. A module of its own so that Dask workers
import its tasks by name.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_image_artifact, create_table_artifact
from prefect.runtime import task_run

from topozarr_flows.params import BuildParams
from topozarr_flows.prefect_api.slots import hold_slot
from topozarr_flows.runs.task_options import RETRYING, RUN_CACHED, ensure_limit_task

#: A 1x1 PNG, as the quicklook artifact's data URL would hold a picture.
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
         "RU5ErkJggg==")


@task(name="plan-pyramid", **RUN_CACHED)
def plan(params: BuildParams, key: str = "plan") -> dict:
    return {"tiles": ["S0-00000"]}


@task(name="initialise-target", **RUN_CACHED)
def initialise(params: BuildParams, key: str = "initialise") -> dict:
    return {"staging": None}


@task(name="write-tile", task_run_name="tile-{key}", **RUN_CACHED, **RETRYING)
def tile(params: BuildParams, key: str) -> dict:
    with hold_slot(params.concurrency_limit, str(task_run.id)):
        return {"key": key}


@task(name="validate-pyramid", **RUN_CACHED)
def validate(params: BuildParams, key: str = "validate") -> dict:
    return {"spot_checks": 0}


@task(name="publish-metadata", **RUN_CACHED, **RETRYING)
def publish(params: BuildParams, key: str = "metadata") -> dict:
    return {}


@flow(name="prefect-floor", persist_result=True)
def empty_build(params: BuildParams) -> dict[str, Any]:
    """The build flow's tasks with empty bodies (see the module docstring).

    :param params: the parameters a build would take (only the limit's name and slots are used).
    """
    found = plan(params)
    ensure_limit_task(params.concurrency_limit, params.default_concurrency)
    initialise(params)
    rows = [tile.submit(params, key).result() for key in found["tiles"]]
    validate(params)
    publish(params)
    create_image_artifact(image_url=PIXEL, key="pyramid-quicklook", description="empty")
    create_table_artifact(rows, key="pyramid-levels", description="empty")
    return {"levels": rows}
