"""Object-store writes ride out endpoint outages (topozarr_core/store/retrying_store.py), and give up with one line.

A small TCP proxy on 127.0.0.1 sits in front of the moto endpoint (AWS_ENDPOINT_URL points at it).
It can be *cut*: existing connections are closed and new ones refused (``how="refuse"``: the
listener is closed, as when the server is down), accepted and reset at once (``how="reset"``: as
a load balancer without a healthy backend; obstore does not retry part of those errors itself) or
accepted and never answered (``how="stall"``: a hung server; each request ends at its timeout).
The outage starts when the proxy sees the first chunk PUT of level 0, so the write is in full flight.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time
import traceback
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import xarray as xr

from tests.compare import assert_same_pyramid
from tests.conftest import make_raster
from topozarr_core import create_pyramid

OUTAGE = 32.0  # seconds
#: The first level-0 chunk (shard) PUT of a pyramid ``p.zarr``: the moment the outage starts.
FIRST_CHUNK_PUT = rb"PUT /[^ \r\n]*/p\.zarr/0/[^ \r\n]*/c/"
KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI"


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
            _kill(s)
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
            _kill(s)
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
            _kill(s)

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
            _kill(src)
            _kill(dst)


def _kill(s: socket.socket) -> None:
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


def _raster() -> xr.Dataset:
    return make_raster(ny=400, nx=512, nt=2, nan_fraction=0.05)


def _pyramid(ds):
    return create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat")


# -- settings -----------------------------------------------------------------------------------

def test_retry_settings_defaults_env_and_options(s3_env, monkeypatch):
    from zarr.storage import ObjectStore as ZarrObjectStore

    from topozarr_core.store.retrying_store import RetrySettings
    from topozarr_core.store.targets import object_store_from_url

    for name in ("TOPOZARR_S3_RETRY_TIMEOUT", "TOPOZARR_S3_MAX_RETRIES", "TOPOZARR_S3_MAX_BACKOFF"):
        monkeypatch.delenv(name, raising=False)
    url = f"s3://{s3_env.bucket}/x/p.zarr"
    store = object_store_from_url(url)
    # a real zarr ObjectStore, named so that zarrs (io="rust") recognises it
    assert isinstance(store, ZarrObjectStore) and type(store).__name__ == "ObjectStore"
    assert store.retry == RetrySettings(retry_timeout=120, max_retries=100, init_backoff=0.1, max_backoff=4, base=2)
    rc = store.store.retry_config
    assert rc["retry_timeout"] == timedelta(seconds=120) and rc["max_retries"] == 100
    assert rc["backoff"]["max_backoff"] == timedelta(seconds=4)

    monkeypatch.setenv("TOPOZARR_S3_RETRY_TIMEOUT", "45")
    monkeypatch.setenv("TOPOZARR_S3_MAX_RETRIES", "7")
    monkeypatch.setenv("TOPOZARR_S3_MAX_BACKOFF", "2.5")
    store = object_store_from_url(url)  # read at store creation
    assert (store.retry.retry_timeout, store.retry.max_retries, store.retry.max_backoff) == (45, 7, 2.5)
    assert store.store.retry_config["retry_timeout"] == timedelta(seconds=45)
    assert store.with_read_only(True).retry == store.retry

    store = object_store_from_url(url, retry_config={"retry_timeout": timedelta(seconds=9), "max_retries": 3})
    assert (store.retry.retry_timeout, store.retry.max_retries, store.retry.max_backoff) == (9, 3, 2.5)

    monkeypatch.setenv("TOPOZARR_S3_RETRY_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="TOPOZARR_S3_RETRY_TIMEOUT"):
        object_store_from_url(url)


def test_what_is_retried_and_how_it_reads():
    from obstore.exceptions import GenericError, PermissionDeniedError

    from topozarr_core.store.retrying_store import is_transient, outage_message

    def obstore_error(inner: str) -> GenericError:
        return GenericError(f"Generic S3 error: Error performing PUT http://{KEY_ID}:{SECRET}@127.0.0.1:9/b/p.zarr/k?a=1 "
                            f"in 3.1s, after 10 retries, max_retries: 10, retry_timeout: 180s  - {inner}\n\n"
                            'Debug source:\nGeneric {\n    source: RetryError(\n        message: "Connection refused",\n')

    refused = obstore_error("HTTP error: error sending request")
    slow = obstore_error("Server error, body contains Error, with status 503 Service Unavailable: <?xml version="
                         '"1.0"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>')
    assert is_transient(refused) and is_transient(slow)
    assert is_transient(obstore_error("Client error with status 429 Too Many Requests: slow down"))
    assert not is_transient(obstore_error("Client error with status 403 Forbidden: <Error><Code>AccessDenied</Code>"))
    assert not is_transient(FileNotFoundError("k")) and not is_transient(PermissionDeniedError("no"))
    assert outage_message("writing", "s3://b/p.zarr", "PUT", "0/air/c/0/0/0", refused, 120.4, 120) == (
        "writing s3://b/p.zarr failed after 120 s of retries (limit: TOPOZARR_S3_RETRY_TIMEOUT=120 s): "
        "PUT 0/air/c/0/0/0: HTTP error: error sending request (Connection refused)")
    assert outage_message("writing", "s3://b/p.zarr", "PUT", "k", slow, 3, 3).endswith(
        "PUT k: GenericError: 503 Service Unavailable SlowDown: Please reduce your request rate.")


# -- riding out an outage -----------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_core_write_rides_out_outage(proxy, s3_env, s3_prefix, tmp_path):
    """Pyramid.write to an s3:// URL; the endpoint is down (connections refused) for 32 s mid-write."""
    ds = _raster()
    proxy.cut_on(FIRST_CHUNK_PUT, OUTAGE, how="refuse")
    t0 = time.monotonic()
    _pyramid(ds).write(f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr", mode="w")
    took = time.monotonic() - t0
    assert proxy.cuts == 1 and proxy.restored_at is not None, "the outage never started"
    assert took >= OUTAGE
    _pyramid(ds).write(tmp_path / "clean.zarr")
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "clean.zarr"))


@pytest.mark.timeout(240)
def test_flow_rides_out_outage(prefect_harness, proxy, s3_env, s3_prefix, tmp_path):
    """build_pyramid to an s3:// URL; new connections are reset for 32 s (what obstore alone does not retry)."""
    from topozarr_flows import BuildParams, build_pyramid

    src = tmp_path / "src.nc"
    _raster().drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    params = BuildParams(source=str(src), target=f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr", levels=2, x_dim="lon",
                         y_dim="lat", crs="EPSG:4326", concurrency_limit="s3-outage-writes", default_concurrency=8,
                         max_task_runs=6, validate_samples=1)
    proxy.cut_on(FIRST_CHUNK_PUT, OUTAGE, how="reset")
    t0 = time.monotonic()
    result = build_pyramid(params)
    took = time.monotonic() - t0
    assert proxy.cuts == 1 and proxy.restored_at is not None, "the outage never started"
    assert proxy.rejected > 0 and took >= OUTAGE
    assert [r["level"] for r in result["levels"]] == [0, 1] and result["spot_checks"] > 0
    clean = create_pyramid(xr.open_dataset(src, engine="h5netcdf"), levels=2, x_dim="lon", y_dim="lat",
                           crs="EPSG:4326")
    clean.write(tmp_path / "clean.zarr")
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "clean.zarr"))


# -- giving up ----------------------------------------------------------------------------------

@pytest.mark.timeout(90)
@pytest.mark.parametrize("how,when,userinfo", [("refuse", "before the write", True),
                                               ("reset", "at the first chunk PUT", False)])
def test_gives_up_with_one_line(proxy, s3_env, s3_prefix, monkeypatch, how, when, userinfo):
    from topozarr_core.store.retrying_store import ObjectStoreUnavailable

    monkeypatch.setenv("TOPOZARR_S3_RETRY_TIMEOUT", "3")
    public = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    url = public.replace("s3://", f"s3://{KEY_ID}:{SECRET}@") if userinfo else public + "?versionId=x"
    if when == "before the write":
        proxy.cut(None, how=how)  # for good
    else:
        proxy.cut_on(FIRST_CHUNK_PUT, None, how=how)
    t0 = time.monotonic()
    with pytest.raises(ObjectStoreUnavailable) as info:
        _pyramid(_raster()).write(url, mode="w", max_workers=2)
    took = time.monotonic() - t0
    assert proxy.cuts == 1
    assert 3 <= took < 30, took
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert public in msg and "failed after" in msg and "TOPOZARR_S3_RETRY_TIMEOUT=3 s" in msg, msg
    shown = "".join(traceback.format_exception(info.value))  # what a user sees, chained exceptions included
    for bad in (KEY_ID, SECRET, "versionId", "Debug source", "RetryError", "HttpError", "reqwest", "hyper_util",
                "Generic S3 error"):
        assert bad not in shown, (bad, shown)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# -- a bounded give-up --------------------------------------------------------------------------------

def _timed(store, op: str) -> tuple[float, BaseException | None]:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    proto = default_buffer_prototype()
    t0 = time.monotonic()
    try:
        if op == "get":
            sync(store.get("k", prototype=proto))
        else:
            sync(store.set("k", proto.buffer.from_bytes(b"y")))
    except Exception as err:  # noqa: BLE001 - returned to the test
        return time.monotonic() - t0, err
    return time.monotonic() - t0, None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["reset", "stall"])
def test_an_operation_gives_up_within_its_bound(proxy, s3_env, s3_prefix, monkeypatch, how):
    """The README's bound for one operation: TOPOZARR_S3_RETRY_TIMEOUT, plus at most one backoff
    (TOPOZARR_S3_MAX_BACKOFF, obstore's own retries sleep past the limit) or, when a request started just
    before the limit hangs, one request timeout. Attempts after the first end at the deadline: obstore's
    retries inside an attempt started just before it could otherwise run for a whole limit more."""
    from topozarr_core.store.retrying_store import ObjectStoreUnavailable, reset_outages
    from topozarr_core.store.targets import object_store_from_url

    limit, backoff, request_timeout = 2, 1, 1
    monkeypatch.setenv("TOPOZARR_S3_RETRY_TIMEOUT", str(limit))
    store = object_store_from_url(f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr",
                                  client_options={"timeout": f"{request_timeout}s"})
    assert _timed(store, "set")[1] is None
    proxy.cut(None, how=how)
    took = []
    for op in ("get", "set") * (4 if how == "reset" else 2):
        reset_outages()  # each operation on its own: no fail-fast after the previous one gave up
        seconds, err = _timed(store, op)
        assert isinstance(err, ObjectStoreUnavailable), err
        assert "\n" not in str(err) and f"TOPOZARR_S3_RETRY_TIMEOUT={limit} s" in str(err)
        took.append(round(seconds, 2))
    bound = limit + (backoff if how == "reset" else request_timeout + backoff)
    assert min(took) >= limit and max(took) < bound + 0.5, took


@pytest.mark.timeout(120)
def test_once_an_operation_gave_up_the_others_on_that_endpoint_fail_at_once(proxy, s3_env, s3_prefix, monkeypatch):
    """The first operation to give up (a whole TOPOZARR_S3_RETRY_TIMEOUT of failures) ends the ones in flight on
    the same endpoint, and new ones fail after one quick probe, until a request succeeds again."""
    from concurrent.futures import ThreadPoolExecutor

    from topozarr_core.store.retrying_store import ObjectStoreUnavailable
    from topozarr_core.store.targets import object_store_from_url

    monkeypatch.setenv("TOPOZARR_S3_RETRY_TIMEOUT", "3")
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    store = object_store_from_url(url)
    assert _timed(store, "set")[1] is None
    proxy.cut(None, how="refuse")
    t0 = time.monotonic()

    def staggered(i: int) -> tuple[float, BaseException | None]:
        time.sleep(0.6 * i)
        _, err = _timed(object_store_from_url(url), "get" if i % 2 else "set")
        return time.monotonic() - t0, err

    with ThreadPoolExecutor(4) as pool:
        ends = list(pool.map(staggered, range(4)))
    assert all(isinstance(err, ObjectStoreUnavailable) for _, err in ends), ends
    first = min(end for end, _ in ends)
    assert 3 <= first < 4.5 and max(end for end, _ in ends) < first + 0.6, ends
    seconds, err = _timed(object_store_from_url(url), "get")  # a new operation: one probe, no long wait
    assert isinstance(err, ObjectStoreUnavailable) and seconds < 1, (seconds, err)
    msg = str(err)
    assert "\n" not in msg and "TOPOZARR_S3_RETRY_TIMEOUT=3 s" in msg and url in msg, msg
    assert "still no answer" in msg and "Connection refused" in msg and "Generic S3 error" not in msg, msg
    proxy.restore()
    assert _timed(store, "get")[1] is None  # back: the probe succeeds, so does the operation
    assert _timed(store, "set")[1] is None


@pytest.mark.timeout(120)
def test_a_probe_without_answer_answers_for_a_second(proxy, s3_env, s3_prefix, monkeypatch):
    """After an operation gave up, a new one probes the endpoint once. When the endpoint hangs, a probe takes
    its whole timeout; for a second after one got no answer, new operations give up without a connection of
    their own (instead of one probe timeout per wave of batches). A refused probe is not reused."""
    from topozarr_core.store.retrying_store import PROBE_TIMEOUT, ObjectStoreUnavailable, reset_outages
    from topozarr_core.store.targets import object_store_from_url

    monkeypatch.setenv("TOPOZARR_S3_RETRY_TIMEOUT", "1")
    reset_outages()
    store = object_store_from_url(f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr", client_options={"timeout": "1s"})
    assert _timed(store, "set")[1] is None
    proxy.cut(None, how="stall")
    assert isinstance(_timed(store, "get")[1], ObjectStoreUnavailable)  # gives up after its whole limit
    before = proxy.accepted
    seconds, err = _timed(store, "get")  # the probe hangs until its timeout
    assert isinstance(err, ObjectStoreUnavailable) and PROBE_TIMEOUT <= seconds < PROBE_TIMEOUT + 1, seconds
    assert proxy.accepted == before + 1 and "still no answer" in str(err)
    seconds, err = _timed(store, "set")
    assert isinstance(err, ObjectStoreUnavailable) and seconds < 0.5 and proxy.accepted == before + 1  # no probe
    proxy.restore()
    proxy.cut(None, how="refuse")
    time.sleep(1.1)
    assert isinstance(_timed(store, "get")[1], ObjectStoreUnavailable)  # refused at once: not reused
    proxy.restore()
    assert _timed(store, "get")[1] is None  # probed again at once: back


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["initialise-target", "tiles"])
def test_a_long_outage_fails_the_flow_run_in_bounded_time_and_retry_completes_it(prefect_harness, proxy, s3_env,
                                                                                  s3_prefix, tmp_path, monkeypatch,
                                                                                  where):
    """The endpoint goes away for good at the first chunk PUT of initialise-target (a coordinate) or of the
    tiles (the data). The run ends Failed, with one line, within TOPOZARR_S3_RETRY_TIMEOUT plus slack
    (README), however many tiles are left: a task that failed with ObjectStoreUnavailable is not retried
    (the core already retried for the whole timeout), and the tiles after it fail at once. Measured before:
    initialise-target's 4 attempts took 4 x the timeout; each write task too, wave after wave. Once the
    endpoint is back, retrying the run completes it."""
    from topozarr_flows import BuildParams, build_pyramid
    from topozarr_flows.ops.retry import retry_here

    limit = 6
    monkeypatch.setenv("TOPOZARR_S3_RETRY_TIMEOUT", str(limit))
    src = tmp_path / "src.nc"
    _raster().drop_vars("spatial_ref").to_netcdf(src, engine="h5netcdf")
    params = BuildParams(source=str(src), target=f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr", levels=3, x_dim="lon",
                         y_dim="lat", crs="EPSG:4326", chunks_per_shard=1, max_tile_bytes=100_000,
                         concurrency_limit="s3-long-outage", default_concurrency=2, validate_samples=1)
    proxy.cut_on(FIRST_CHUNK_PUT if where == "initialise-target" else rb"PUT /[^ \r\n]*/p\.zarr/0/air/c/", None,
                 how="refuse")
    t0 = time.monotonic()
    state = build_pyramid(params, return_state=True)
    took = time.monotonic() - t0
    assert proxy.cuts == 1 and state.is_failed(), state
    message = state.message or ""
    assert "\n" not in message and "ObjectStoreUnavailable" in message, message
    assert f"TOPOZARR_S3_RETRY_TIMEOUT={limit} s" in message, message
    assert took < limit + 10, took  # the README's bound: the retry timeout plus slack

    proxy.restore()
    retried = retry_here(state.state_details.flow_run_id)
    assert retried.is_completed(), retried
    clean = create_pyramid(xr.open_dataset(src, engine="h5netcdf"), levels=3, x_dim="lon", y_dim="lat",
                           crs="EPSG:4326", chunks_per_shard=1)
    clean.write(tmp_path / "clean.zarr")
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "clean.zarr"))
