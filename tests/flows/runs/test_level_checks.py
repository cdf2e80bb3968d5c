"""The background checks of a flow run: references first, then each level once, all taken by validate-pyramid."""

from __future__ import annotations

import threading
import time

from topozarr_core.validate.pyramid import LevelCheck
from topozarr_flows.runs import level_checks


def _check(log: list):
    def check(level: int) -> LevelCheck:
        log.append(("check", level))
        return LevelCheck(level, {"level": level}, 1, [])
    return check


def test_references_are_prepared_before_any_check_and_taken_checks_wait_for_them():
    log, release = [], threading.Event()

    def prepare():
        release.wait(5)
        log.append(("prepare", None))
        return 3

    with level_checks.checking("run-a", _check(log), prepare) as checks:
        checks.level_written(0)
        checks.level_written(0)  # reported twice, checked once
        time.sleep(0.2)
        assert log == []  # the check waits behind the references
        threading.Timer(0.2, release.set).start()
        taken = level_checks.take("run-a")
        assert log == [("prepare", None), ("check", 0)] and sorted(taken) == [0]
        assert checks.prepared()
    assert level_checks.take("run-a") == {}  # dropped with its block


def test_a_failed_prepare_costs_only_time():
    log = []

    def prepare():
        raise OSError("source gone")

    with level_checks.checking("run-b", _check(log), prepare) as checks:
        checks.level_written(1)
        assert sorted(level_checks.take("run-b")) == [1] and not checks.prepared()
