"""One Prefect API client per process and API, shared by the batch threads.

Opening a client costs about 30 ms of CPU (httpx loads the CA bundle into a new SSL context each
time), and the write slots need one per batch: a run of 50 batches spent more on that than on the
slot requests themselves. httpx clients are safe to share between threads, so each process keeps
one per API URL (and key) for its lifetime.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings

_clients: dict[tuple, Any] = {}
_lock = threading.Lock()


def shared_client() -> Any:
    """The entered ``SyncPrefectClient`` for the API of the current settings (their URL and key)."""
    settings = get_current_settings()
    key = (os.getpid(), str(settings.api.url), settings.api.key.get_secret_value() if settings.api.key else None)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            _clients[key] = client
        return client


@atexit.register
def _close_all() -> None:
    with _lock:
        for key, client in list(_clients.items()):
            if key[0] == os.getpid():
                try:
                    client.__exit__(None, None, None)
                except Exception:  # noqa: BLE001 -- the process is ending
                    pass
        _clients.clear()
