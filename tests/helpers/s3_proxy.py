"""A loopback TCP proxy in front of moto that can cut, refuse or stall connections (fixture ``proxy``),
shared by the core and flow halves of test_s3_outage."""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time
from urllib.parse import urlsplit

import pytest
import xarray as xr

from tests.helpers.rasters import make_raster

OUTAGE = 32.0  # seconds
#: The first level-0 chunk (shard) PUT of a pyramid ``p.zarr``: the moment the outage starts.
FIRST_CHUNK_PUT = rb"PUT /[^ \r\n]*/p\.zarr/0/[^ \r\n]*/c/"


class CuttableProxy:
    """TCP proxy 127.0.0.1:<port> -> 127.0.0.1:<upstream_port> (threads) that can be cut for a while.

    Listens on a port below the kernel's ephemeral range, so that while the listener is closed no
    outgoing connection can be given that port and reopening it cannot fail. Stops by itself
    ``lifetime`` seconds after it starts (and on :meth:`close`)."""

    def __init__(self, upstream_port: int, lifetime: float = 240.0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._timers: list[threading.Timer] = []
        self._trigger: tuple[re.Pattern, float | None, str] | None = None
        self.mode: str | None = None  # None: forwarding; "refuse" / "reset": cut
        self.closed = False
        self.cuts = 0
        self.cut_at: float | None = None
        self.restored_at: float | None = None
        self.rejected = 0  # connections reset during a "reset" cut
        self.accepted = 0  # connections the listener accepted
        self.port = self._listen(None)
        self._after(lifetime, self.close)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control ------------------------------------------------------------------------------
    def cut(self, seconds: float | None = None, how: str = "refuse") -> None:
        """Close every connection; until restored refuse (or reset) new ones. ``None``: for good."""
        assert how in ("refuse", "reset", "stall")
        with self._lock:
            if self.closed:
                return
            self.mode, self.cuts, self.cut_at = how, self.cuts + 1, time.monotonic()
            victims = list(self._conns)
            self._conns.clear()
            if how == "refuse" and self._listener is not None:
                victims.append(self._listener)
                self._listener = None
        for s in victims:
            kill_socket(s)
        if seconds is not None:
            self._after(seconds, self.restore)

    def cut_on(self, pattern: bytes, seconds: float | None, how: str = "refuse") -> None:
        """Cut (before forwarding it) when a client sends bytes matching ``pattern`` -- once."""
        self._trigger = (re.compile(pattern), seconds, how)

    def restore(self) -> None:
        with self._lock:
            if self.closed or self.mode is None:
                return
            reopen = self.mode == "refuse"
            held = list(self._conns) if self.mode == "stall" else []
            self._conns -= set(held)
            self.mode, self.restored_at = None, time.monotonic()
        for s in held:
            kill_socket(s)
        if reopen:
            self._listen(self.port)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            victims = list(self._conns) + ([self._listener] if self._listener else [])
            self._conns.clear()
            self._listener = None
            timers, self._timers = self._timers, []
        for t in timers:
            t.cancel()
        for s in victims:
            kill_socket(s)

    # -- machinery ----------------------------------------------------------------------------
    def _after(self, seconds: float, fn) -> None:
        t = threading.Timer(seconds, fn)
        t.daemon = True
        with self._lock:
            self._timers.append(t)
        t.start()

    def _listen(self, port: int | None) -> int:
        for _ in range(200):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port or random.randrange(20000, 32000)))
            except OSError:
                s.close()
                if port:
                    time.sleep(0.05)
                continue
            s.listen(256)
            with self._lock:
                if self.closed:
                    s.close()
                    return s.getsockname()[1]
                self._listener = s
            threading.Thread(target=self._accept, args=(s,), daemon=True, name="proxy-accept").start()
            return s.getsockname()[1]
        raise RuntimeError(f"cannot listen on 127.0.0.1:{port or '20000-32000'}")

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed (cut or close)
            with self._lock:
                mode, closed = self.mode, self.closed
                self.accepted += 1
            if mode == "stall" and not closed:
                with self._lock:
                    self._conns.add(client)  # held open, never read nor answered (closed by restore/close)
                continue
            if closed or mode is not None:
                if mode == "reset":
                    self.rejected += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # RST
                if closed:
                    return
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                trigger = self._trigger if from_client else None
                if trigger is not None and trigger[0].search(data):
                    self._trigger = None
                    self.cut(trigger[1], trigger[2])
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns -= {src, dst}
            kill_socket(src)
            kill_socket(dst)


def kill_socket(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def proxy(s3_env, monkeypatch):
    px = CuttableProxy(urlsplit(s3_env.endpoint_url).port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", px.url)
    monkeypatch.setenv("TOPOZARR_S3_MAX_BACKOFF", "1")  # back within a second of the endpoint's return
    try:
        yield px
    finally:
        px.close()


def outage_raster() -> xr.Dataset:
    return make_raster(ny=400, nx=512, nt=2, nan_fraction=0.05)
