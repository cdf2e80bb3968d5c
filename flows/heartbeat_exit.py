"""A flow run returns as soon as it ends, without waiting up to a second for Prefect's heartbeat thread.

Prefect 3.8's sync flow engine sends flow-run heartbeats (every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``,
180 s by default) from a daemon thread that checks its stop flag once a second, and joins that
thread when the run ends: every run (and every retry attempt) waited 0-1 s after its final state was
set before the call returned (0.5 s on average; a third of a tiny build's overhead). Prefect's async
engine already skips that join (``join_on_exit=False``); this makes the sync one do the same. The
thread still checks the flag before each heartbeat, so it sends none after the run ended, and the
heartbeats of a running flow are unchanged (``tests/test_heartbeat_exit.py`` checks both).

It replaces ``prefect.flow_engine._send_heartbeats``, a private name the engine looks up at each run:
prefect is pinned to 3.8.x, and the test fails if that name or its signature changes.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import prefect.flow_engine as _engine

#: Prefect's own context manager, kept on Prefect's module: flows/build.py loaded as a script (as a
#: deployment's entrypoint is) imports this module a second time, and must wrap Prefect's, not ours.
_ORIGINAL = getattr(_engine, "_topozarr_prefect_send_heartbeats", None) or getattr(_engine, "_send_heartbeats", None)
if _ORIGINAL is not None:
    _engine._topozarr_prefect_send_heartbeats = _ORIGINAL


@contextmanager
def send_heartbeats_without_join(engine: Any, join_on_exit: bool = True) -> Generator[None, None, None]:
    """Prefect's heartbeat context, never joining its thread on exit (``join_on_exit`` is ignored)."""
    assert _ORIGINAL is not None
    with _ORIGINAL(engine, join_on_exit=False):
        yield


def install() -> bool:
    """Use :func:`send_heartbeats_without_join` in this process's flow runs; False if Prefect has no such hook."""
    if _ORIGINAL is None:
        return False
    _engine._send_heartbeats = send_heartbeats_without_join
    return True


install()
