"""The Prefect API client of the flows' own requests (concurrency slots): one per process, and one that
rides out a busy SQLite server quickly.

Prefect's SQLite server answers 503 ("database is locked") whenever two writes collide, which the slot
requests of tiles starting together make them do. Prefect's client then sleeps ``2**attempt`` seconds
(2 s, jittered) before asking again: measured on the test harness's server, three tiles starting at
once each waited 1.9-2.0 s for a free slot, one alone 0.05 s. A PostgreSQL server (infra/postgres.sh,
what production runs) does not answer 503 for that: the same three took 0.1-0.2 s there. This client
keeps Prefect's own retry loop and adds an httpx transport (httpx's public extension point, passed
through ``get_client(httpx_settings=...)``) that asks again after 20 ms, doubling up to 0.5 s, while the
server answers 429/502/503, for at most :data:`BUSY_SECONDS`; only then does Prefect's client see the
answer. Opening a client costs about 30 ms of CPU (a new SSL context), so each process keeps one.
"""

from __future__ import annotations

import atexit
import os
import random
import threading
import time
from contextlib import ExitStack
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings

#: Answers that mean "ask again shortly" (the server is busy), and for how long to keep asking here.
BUSY = (429, 502, 503)
BUSY_SECONDS = 120.0
FIRST_BACKOFF = 0.02
MAX_BACKOFF = 0.5


_busy = [0]  # answers of a busy server asked again by this process (see busy_answers)
_busy_lock = threading.Lock()


def busy_answers() -> int:
    """How many busy answers (429/502/503) this process's requests were asked again after, so far."""
    return _busy[0]


class BusyRetryTransport(httpx.BaseTransport):
    """An httpx transport that sends a request again, after a short back-off, while the server is busy."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        """:param inner: the transport that sends the requests (default: httpx's, with 3 connection retries)."""
        self.inner = inner or httpx.HTTPTransport(retries=3)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; while the answer is 429/502/503, send it again after a growing back-off (for at most 120 s).

        :param request: the request.
        """
        backoff, since = FIRST_BACKOFF, time.monotonic()
        while True:
            response = self.inner.handle_request(request)
            if response.status_code not in BUSY or time.monotonic() - since > BUSY_SECONDS:
                return response
            response.read()
            response.close()
            with _busy_lock:
                _busy[0] += 1
            time.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, MAX_BACKOFF)

    def close(self) -> None:
        """Close the wrapped transport."""
        self.inner.close()


_clients: dict[tuple, Any] = {}
_open = ExitStack()  # the clients stay entered for the process's life
_lock = threading.Lock()


def client() -> Any:
    """The ``SyncPrefectClient`` of this process for the API of the current settings (its URL and key),
    with :class:`BusyRetryTransport`. Thread-safe: the tiles of a process share it."""
    settings = get_current_settings()
    key = (os.getpid(), str(settings.api.url), settings.api.key.get_secret_value() if settings.api.key else None)
    with _lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = _open.enter_context(
                get_client(sync_client=True, httpx_settings={"transport": BusyRetryTransport()}))
        return found


atexit.register(_open.close)
