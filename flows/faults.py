"""Fault injection for reliability tests. Inactive unless TOPOZARR_FAULTS is set.

``TOPOZARR_FAULTS`` is a comma list of rules, each ``rate=<0..1>`` (every batch attempt fails with
that probability; seeded by ``TOPOZARR_FAULT_SEED``) or ``batch=<key>[@<n>]`` (the batch with that
key, e.g. ``L0-B00002``, fails on its first ``n`` attempts; default 1), ``batch=<key>@always``, or
``delay=<seconds>`` (every batch sleeps that long while holding its concurrency slot).
Attempts are counted per flow run, in files ``TOPOZARR_FAULT_DIR/<flow run id>/<key>.attempts``, so
counts survive process restarts and a retry of the same run continues them.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path


class InjectedFault(RuntimeError):
    """A deliberately injected, transient failure."""


def _rules() -> list[tuple[str, str]]:
    raw = os.environ.get("TOPOZARR_FAULTS", "").strip()
    return [tuple(r.split("=", 1)) for r in raw.split(",") if "=" in r]  # type: ignore[misc]


def _attempt(key: str) -> int:
    """This flow run's attempt count of batch ``key`` (a retry of the same run continues it; another run
    starts at 1, so several runs can share one TOPOZARR_FAULT_DIR)."""
    folder = Path(os.environ.get("TOPOZARR_FAULT_DIR", ".topozarr-faults")) / _flow_run_id()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{key}.attempts", "a+") as fh:
        fh.write("x")
        fh.seek(0)
        return len(fh.read())


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "outside-a-flow-run")


def maybe_fail(key: str) -> None:
    """Raise InjectedFault when a configured rule says this attempt of batch ``key`` fails."""
    rules = _rules()
    if not rules:
        return
    attempt = _attempt(key) if any(name != "delay" for name, _ in rules) else 0
    for name, value in rules:
        if name == "delay":
            time.sleep(float(value))
        elif name == "rate":
            seed = os.environ.get("TOPOZARR_FAULT_SEED", "0")
            if random.Random(f"{seed}:{key}:{attempt}").random() < float(value):
                raise InjectedFault(f"injected transient failure in {key} (attempt {attempt})")
        elif name == "batch":
            target, _, times = value.partition("@")
            if target == key and (times == "always" or attempt <= int(times or 1)):
                raise InjectedFault(f"injected failure in {key} (attempt {attempt})")
