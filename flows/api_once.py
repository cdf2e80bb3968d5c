"""Prefect API requests sent exactly once, so that the caller decides how to wait.

Prefect 3.8's client retries a 429/502/503 after sleeping ``2**n`` seconds, and even with
``PREFECT_CLIENT_MAX_RETRIES=0`` it sleeps 2 s before handing the 503 back. A SQLite server answers
503 ("database is locked") whenever two writes collide, which the write slots' acquire and release
do many times a run: each collision cost a batch 2 s. Changing the setting per request is no cure
either: ``temporary_settings`` rebuilds Prefect's whole settings object (about 0.3 s of CPU each).
Here the request goes through the client's own httpx connection (its base URL, auth and headers)
but not its retry loop; :func:`post_patiently` asks again after 20 ms, doubling up to 0.5 s.
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

#: Answers that mean "ask again shortly" (the server is busy), and for how long to keep asking.
TRANSIENT = (429, 502, 503)
UNAVAILABLE_SECONDS = 120.0
FIRST_BACKOFF = 0.02
MAX_BACKOFF = 0.5


def post_once(client: Any, path: str, body: dict) -> httpx.Response:
    """POST ``body`` to ``path`` of the client's API once; raises ``httpx.HTTPStatusError`` on >= 400."""
    http = client._client  # noqa: SLF001 -- Prefect's httpx client: the API's base URL, auth and headers
    request = http.build_request("POST", path, json=body)
    if getattr(http, "enable_csrf_support", False):
        http._add_csrf_headers(request)  # noqa: SLF001 -- what its send() would add
    response = httpx.Client.send(http, request)  # the plain httpx send: no retry loop, no sleeps
    response.raise_for_status()
    return response


def post_patiently(client: Any, path: str, body: dict) -> httpx.Response:
    """:func:`post_once`, asked again while the server is busy (:data:`TRANSIENT`), for at most
    :data:`UNAVAILABLE_SECONDS`; any other error is raised at once."""
    backoff, busy_since = FIRST_BACKOFF, None
    while True:
        try:
            return post_once(client, path, body)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in TRANSIENT:
                raise
            busy_since = busy_since or time.monotonic()
            if time.monotonic() - busy_since > UNAVAILABLE_SECONDS:
                raise
            time.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, MAX_BACKOFF)
