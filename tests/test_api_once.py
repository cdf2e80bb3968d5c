"""A busy API (503) is asked again within milliseconds, not after Prefect's client sleeps of 2 s and more.

The server here is a stand-in on 127.0.0.1 that answers 503 "database is locked", as Prefect's SQLite
server does when two writes collide, a given number of times before it grants; the client is
Prefect's own, pointed at it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.api_client import shared_client
from flows.slots import hold_slot


class _Busy(BaseHTTPRequestHandler):
    busy_left = 0
    seen: list[tuple[str, str, int]] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, code: int, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if "/csrf-token" in self.path:  # what Prefect's server answers with CSRF protection off (its default)
            self.seen.append(("GET", self.path, 422))
            return self._answer(422, {"detail": "CSRF protection is disabled."})
        self.seen.append(("GET", self.path, 200))
        self._answer(200, {})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/increment-with-lease") and type(self).busy_left > 0:
            type(self).busy_left -= 1
            self.seen.append(("POST", self.path, 503))
            return self._answer(503, {"exception_message": "Service Unavailable", "detail": "database is locked"})
        self.seen.append(("POST", self.path, 200))
        if self.path.endswith("/increment-with-lease"):
            return self._answer(200, {"lease_id": str(uuid.uuid4()),
                                      "limits": [{"id": str(uuid.uuid4()), "name": "busy", "limit": 1}]})
        return self._answer(204)


@pytest.fixture
def busy_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Busy.seen = []
    try:
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{server.server_port}/api"}):
            yield _Busy
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_server_is_asked_again_without_the_clients_sleeps(busy_api, caplog):
    busy_api.busy_left = 5
    with caplog.at_level(logging.DEBUG, logger="prefect.client"):
        with hold_slot("busy") as lease_id:
            assert isinstance(lease_id, uuid.UUID)
    increments = [code for method, path, code in busy_api.seen if path.endswith("/increment-with-lease")]
    assert increments == [503] * 5 + [200]
    assert [code for _, path, code in busy_api.seen if path.endswith("/decrement-with-lease")] == [200]
    # Prefect's own retry loop never ran (it logs each sleep it takes, 2 s and more after a 503)
    assert not [r for r in caplog.records if "Another attempt will be made" in r.getMessage()]


def test_one_client_per_process_and_api(busy_api):
    first = shared_client()
    seen_in_thread = []
    context = contextvars.copy_context()  # the same settings in another thread: the same client
    t = threading.Thread(target=context.run, args=(lambda: seen_in_thread.append(shared_client()),))
    t.start()
    t.join()
    assert seen_in_thread == [first] and shared_client() is first
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert shared_client() is not first
    assert str(first.api_url).startswith(str(PREFECT_API_URL.value()).rstrip("/"))
