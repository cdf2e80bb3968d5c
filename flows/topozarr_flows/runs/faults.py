"""Fault injection for reliability tests and drills. Inactive unless ``TOPOZARR_FAULTS`` is set.

``TOPOZARR_FAULTS`` is a comma list of rules:

- ``rate=<0..1>``: every tile attempt fails at its start with that probability (seeded by
  ``TOPOZARR_FAULT_SEED``);
- ``tile=<key>[@<n>|@always]``: tile ``<key>`` (e.g. ``S0-00002``) fails at its start on its first
  ``n`` attempts (default 1), or always;
- ``store=<key>@<k>[:<errno>][@always]``: the ``k``-th chunk write of tile ``<key>`` raises
  ``OSError(errno)`` (default 5, EIO; 28 is ENOSPC), on its first attempt only unless ``@always``:
  the tile has then written part of its shards, as a real storage fault leaves it;
- ``delay=<seconds>``: every tile sleeps that long while holding its concurrency slot.

Attempts are counted per flow run, in files ``TOPOZARR_FAULT_DIR/<flow run id>/<key>.attempts``, so
counts survive process restarts and a retry of the same run continues them.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from zarr.core.buffer import Buffer
from zarr.storage import WrapperStore


class InjectedFault(RuntimeError):
    """A deliberately injected, transient failure."""


def _rules() -> list[tuple[str, str]]:
    raw = os.environ.get("TOPOZARR_FAULTS", "").strip()
    return [tuple(r.split("=", 1)) for r in raw.split(",") if "=" in r]  # type: ignore[misc]


def _folder() -> Path:
    folder = Path(os.environ.get("TOPOZARR_FAULT_DIR", ".topozarr-faults")) / _flow_run_id()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _attempt(key: str, kind: str = "attempts") -> int:
    """This flow run's count of ``kind`` events of tile ``key`` so far, this one included (a retry of
    the same run continues it; another run starts at 1, so runs can share one TOPOZARR_FAULT_DIR)."""
    with open(_folder() / f"{key}.{kind}", "a+") as fh:
        fh.write("x")
        fh.seek(0)
        return len(fh.read())


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "outside-a-flow-run")


def maybe_fail(key: str) -> None:
    """Raise InjectedFault when a configured rule says this attempt of tile ``key`` fails at its start."""
    rules = [(name, value) for name, value in _rules() if name != "store"]
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
        elif name == "tile":
            target, _, times = value.partition("@")
            if target == key and (times == "always" or attempt <= int(times or 1)):
                raise InjectedFault(f"injected failure in {key} (attempt {attempt})")


def wrap_store(key: str, store: Any) -> Any:
    """``store``, or a wrapper failing one chunk write of tile ``key`` when a ``store=`` rule says so."""
    for name, value in _rules():
        if name != "store":
            continue
        target, _, rest = value.partition("@")
        if target != key:
            continue
        always = rest.endswith("@always")
        nth, _, code = rest.removesuffix("@always").partition(":")
        attempt = _attempt(key, "store-attempts")
        if always or attempt == 1:
            return FailingStore(store, int(nth), int(code or errno.EIO))
    return store


class FailingStore(WrapperStore):
    """A store whose ``nth`` chunk write raises ``OSError(code)`` (the writes before it succeed)."""

    def __init__(self, store: Any, nth: int = 0, code: int = errno.EIO) -> None:
        super().__init__(store)
        self._nth, self._code = nth, code
        self._writes = 0
        self._guard = threading.Lock()

    async def set(self, key: str, value: Buffer) -> None:
        """The wrapped store's ``set``, raising the configured ``OSError`` at the ``nth`` chunk write (``zarr.json`` never fails).

        :param key: the key.
        :param value: the buffer.
        """
        if not key.endswith("zarr.json"):
            with self._guard:
                self._writes += 1
                fail = self._writes == self._nth
            if fail:
                raise OSError(self._code, os.strerror(self._code), key)
        await super().set(key, value)
