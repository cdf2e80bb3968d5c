"""A flow run returns when it ends: Prefect's heartbeat thread is not joined (it sleeps in 1 s steps)."""

from __future__ import annotations

import threading

import prefect.flow_engine as engine
from prefect import flow
from prefect.runtime import flow_run

import flows.build  # noqa: F401  (importing the flows installs the hook)
from flows.heartbeat_exit import send_heartbeats_without_join


def _heartbeat_threads() -> list[threading.Thread]:
    """Prefect's heartbeat threads alive now (their target runs ``heartbeat_loop`` in a copied context)."""
    return [t for t in threading.enumerate() if getattr((getattr(t, "_args", None) or (None,))[0], "__name__", "")
            == "heartbeat_loop"]


def test_the_flows_use_the_heartbeat_context_that_does_not_join():
    # (by name: a flow module loaded as a script imports flows.heartbeat_exit once more)
    assert engine._send_heartbeats.__qualname__ == send_heartbeats_without_join.__qualname__
    assert engine._topozarr_prefect_send_heartbeats.__module__ == "prefect.flow_engine"  # what it wraps


def test_a_second_copy_of_the_module_wraps_prefects_context_not_the_first_copy():
    import importlib.util

    import flows.heartbeat_exit as first

    spec = importlib.util.spec_from_file_location("heartbeat_exit_again", first.__file__)
    again = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(again)
    try:
        assert again._ORIGINAL is first._ORIGINAL and again._ORIGINAL.__module__ == "prefect.flow_engine"
    finally:
        first.install()


def test_heartbeats_are_sent_while_running_and_none_after_the_run_returned(prefect_harness, monkeypatch):
    sent: list[tuple[str, bool]] = []  # (flow run id, whether the heartbeat thread was asked to stop)
    real_emit = engine.emit_event

    def recording_emit(event: str, *args, **kwargs):
        if event == "prefect.flow-run.heartbeat":
            sent.append((kwargs["resource"]["prefect.resource.id"], returned.is_set()))
        return real_emit(event, *args, **kwargs)

    monkeypatch.setattr(engine, "emit_event", recording_emit)
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    returned = threading.Event()
    seen: dict[str, object] = {}

    @flow
    def quick() -> str:
        seen["threads"] = _heartbeat_threads()
        return str(flow_run.id)

    joined: list[threading.Thread] = []
    real_join = threading.Thread.join

    def recording_join(self, timeout=None):
        if self in _heartbeat_threads():
            joined.append(self)
        return real_join(self, timeout)

    monkeypatch.setattr(threading.Thread, "join", recording_join)
    run_id = quick()
    monkeypatch.setattr(threading.Thread, "join", real_join)
    returned.set()
    assert seen["threads"], "the flow run started no heartbeat thread"
    assert not joined, "the run's end waited for the heartbeat thread (Prefect joins it: up to 1 s per run)"
    for t in seen["threads"]:
        t.join(timeout=5)
        assert not t.is_alive(), "the heartbeat thread did not stop by itself after the run ended"
    mine = [late for resource, late in sent if resource == f"prefect.flow-run.{run_id}"]
    assert mine and not any(mine), f"heartbeats of the run (True: sent after it returned): {mine}"
