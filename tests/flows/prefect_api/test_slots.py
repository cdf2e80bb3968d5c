"""A tile's slot of the write limit, on Prefect's public concurrency API: held by its task run (the
server names it), given back when the tile ends, refused when the limit is missing, and given back by
task run at once after its process was SIGKILLed (topozarr_flows.prefect_api.recovery)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.exceptions import ObjectNotFound
from prefect.runtime import task_run

from topozarr_flows.prefect_api.recovery import recover
from topozarr_flows.prefect_api.slots import LimitMissing, hold_slot, holders, holders_line

ROOT = Path(__file__).resolve().parents[3]


def _active(harness, limit: str) -> int:
    with harness.client() as c:
        return c.read_global_concurrency_limit_by_name(f"tag:{limit}").active_slots


def _wait_until_recorded_running(harness, task_run_id: str, timeout: float = 60.0) -> None:
    """Wait until the API has the task run, Running. Prefect's server records task runs from the events
    their engine sends in the background, in order: after a test whose flows sent many events (e.g.
    test_flows.py's, which pytest-xdist may run just before this one in the same process), this task's
    own events wait behind them, and holders_line named the run "(deleted)" (the record was not there
    yet). Reproduced serially: test_flows.py's concurrency/artifact tests, then this test."""
    deadline = time.monotonic() + timeout
    with harness.client() as c:
        while True:
            try:
                run = c.read_task_run(uuid.UUID(task_run_id))
                if run.state is not None and run.state.is_running():
                    return
            except ObjectNotFound:
                pass
            assert time.monotonic() < deadline, f"task run {task_run_id} not recorded as Running in {timeout} s"
            time.sleep(0.05)


def test_a_held_slot_names_its_task_run_and_is_given_back(prefect_harness):
    limit = f"held-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 2)
    seen = {}

    @task(name="hold-a-slot")
    def hold() -> str:
        with hold_slot(limit, str(task_run.id)):
            _wait_until_recorded_running(prefect_harness, str(task_run.id))
            seen["holders"] = holders(limit)
            seen["line"] = holders_line(limit)
            seen["active"] = _active(prefect_harness, limit)
        return str(task_run.id)

    @flow(name="slot-probe")
    def probe() -> str:
        return hold()

    task_run_id = probe()
    assert [str(h) for h in seen["holders"]] == [task_run_id] and seen["active"] == 1
    assert seen["line"].startswith("held by 1 task run(s): hold-a-slot-") and "Running)" in seen["line"]
    assert _active(prefect_harness, limit) == 0 and holders(limit) == []


def test_a_missing_or_inactive_limit_is_an_error_not_unlimited(prefect_harness):
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with pytest.raises(LimitMissing, match="'no-such-limit' does not exist or is inactive"):
        with hold_slot("no-such-limit", None):
            pass
    with prefect_harness.client() as c:
        c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="tag:off-limit", limit=2, active=False))
    with pytest.raises(LimitMissing):
        with hold_slot("off-limit", None):
            pass


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from prefect import flow, task
    from prefect.runtime import flow_run, task_run
    from topozarr_flows.prefect_api.slots import hold_slot

    @task(name="doomed-tile")
    def doomed(limit):
        with hold_slot(limit, str(task_run.id)):
            Path(sys.argv[2]).write_text(f"{flow_run.id} {task_run.id}")
            time.sleep(600)

    @flow(name="doomed-run")
    def run(limit):
        doomed(limit)

    run(sys.argv[1])
""")


def test_recover_gives_back_a_killed_task_runs_slot_at_once_and_crashes_it(prefect_harness, tmp_path):
    limit = f"killed-{uuid.uuid4().hex[:6]}"
    prefect_harness.ensure_concurrency_limit(limit, 2)
    id_file = tmp_path / "flow-run-id"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, limit, str(id_file)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not id_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert id_file.exists(), "the holder never took its slot"
        # recover() finds the run's task runs through the API, which records them from events, later
        _wait_until_recorded_running(prefect_harness, id_file.read_text().split()[1])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    flow_run_id = id_file.read_text().split()[0]
    assert _active(prefect_harness, limit) == 1 and len(holders(limit)) == 1  # nothing gave it back
    found = recover(flow_run_id, limit, "its process was killed")
    assert (found.slots_released, found.task_runs_crashed) == (1, 1)
    assert _active(prefect_harness, limit) == 0 and holders(limit) == []
    with prefect_harness.client() as c:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])))
        assert [(r.name.rsplit("-", 1)[0], r.state.type.value, r.state.message) for r in runs] == [
            ("doomed-tile", "CRASHED", "its process was killed")]
