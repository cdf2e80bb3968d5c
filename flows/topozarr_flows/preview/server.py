"""A loopback HTTP server for the preview page: the bundled page under ``/`` and the pyramid's keys
under ``/data/``, with the CORS and ``Range`` handling zarr-layer's fetch store needs.

Why stdlib ``http.server``: one user on 127.0.0.1, no dependency; a thread per request keeps the
page's parallel chunk fetches parallel.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from topozarr_core.store.errors import redact
from topozarr_core.text import short
from topozarr_flows.preview.pyramid_store import PyramidStore, parse_range, range_bounds

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger("topozarr.preview")


class PreviewServer(ThreadingHTTPServer):
    """Serves one pyramid; ``requested`` keeps the last data keys asked for (tests read it)."""

    daemon_threads = True

    def __init__(self, pyramid: PyramidStore, host: str = "127.0.0.1", port: int = 0,
                 static_dir: Path = STATIC_DIR):
        """:param pyramid: the pyramid to serve.
        :param host: a loopback address (any other is refused).
        :param port: the port (0: any free one).
        :param static_dir: the built page (its ``index.html`` must exist).
        """
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"preview serves on the loopback interface only, not host={short(host)!r}")
        if not (static_dir / "index.html").is_file():
            raise FileNotFoundError(f"the preview page is not built ({static_dir}/index.html is missing): run "
                                    "'make preview-page' (needs node and npm)")
        self.pyramid = pyramid
        self.static_dir = static_dir.resolve()
        self.requested: deque[str] = deque(maxlen=10_000)
        super().__init__((host, port), PreviewHandler)

    @property
    def url(self) -> str:
        """The server's address, ``http://<host>:<port>/``."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class PreviewHandler(BaseHTTPRequestHandler):
    """Answers the page's requests: the page's files, and the pyramid's keys (with byte ranges and CORS headers)."""
    server: PreviewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """The stdlib's request log, at debug level and with credentials redacted.

        :param format: the stdlib's format string.
        """
        log.debug(redact(format % args))

    def do_OPTIONS(self) -> None:  # noqa: N802 - stdlib naming
        """Answer a CORS preflight: 204 with the CORS headers."""
        self.send_response(204)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802
        """Serve the headers of a file or key, without the body."""
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        """Serve a file of the page or a key of the pyramid."""
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        try:
            if path.startswith("/data/"):
                self._data(path[len("/data/"):], body)
            elif path == "/info.json":
                payload = json.dumps(self.server.pyramid.info(), default=str).encode()
                self._send(200, payload, "application/json", body)
            else:
                self._static("index.html" if path in ("/", "") else path.lstrip("/"), body)
        except BrokenPipeError:
            pass
        except Exception as err:  # noqa: BLE001 - one redacted line to the page, never a dump
            self._send(502, f"{type(err).__name__}: {short(redact(str(err)), 200)}".encode(), "text/plain", body)

    def _static(self, name: str, body: bool) -> None:
        target = (self.server.static_dir / name).resolve()
        if not target.is_relative_to(self.server.static_dir) or not target.is_file():
            return self._send(404, b"not found", "text/plain", body)
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(200, target.read_bytes(), kind, body)

    def _data(self, key: str, body: bool) -> None:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or "\\" in p for p in parts):
            return self._send(400, b"bad key", "text/plain", body)
        self.server.requested.append(key)
        try:
            req = parse_range(self.headers.get("Range"))
        except ValueError as err:
            return self._send(416, str(err).encode(), "text/plain", body)
        store = self.server.pyramid
        if req is None:
            data = store.get(key)
            if data is None:
                return self._send(404, b"no such key", "text/plain", body)
            return self._send(200, data, "application/octet-stream", body)
        size = store.size(key)
        if size is None:
            return self._send(404, b"no such key", "text/plain", body)
        bounds = range_bounds(req, size)
        if bounds is None:
            return self._send(416, b"range not satisfiable", "text/plain", body,
                              {"Content-Range": f"bytes */{size}"})
        data = store.get(key, req) or b""
        start = bounds[0]
        self._send(206, data, "application/octet-stream", body,
                   {"Content-Range": f"bytes {start}-{start + len(data) - 1}/{size}"})

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Range, If-None-Match, If-Modified-Since")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges")

    def _send(self, status: int, data: bytes, kind: str, body: bool, headers: dict | None = None) -> None:
        self.send_response(status)
        self._cors()
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


@contextmanager
def serving(pyramid: PyramidStore, port: int = 0, static_dir: Path = STATIC_DIR) -> Iterator[PreviewServer]:
    """Run a :class:`PreviewServer` in a background thread for the duration of the block.

    :param pyramid: the pyramid to serve.
    :param port: the port (0: any free one).
    :param static_dir: the built page.
    """
    server = PreviewServer(pyramid, port=port, static_dir=static_dir)
    thread = threading.Thread(target=server.serve_forever, name="topozarr-preview", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
