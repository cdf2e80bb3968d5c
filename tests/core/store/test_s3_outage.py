"""Object-store writes ride out endpoint outages (topozarr_core/store/retrying_store.py), and give up with one line.

A small TCP proxy on 127.0.0.1 sits in front of the moto endpoint (AWS_ENDPOINT_URL points at it).
It can be *cut*: existing connections are closed and new ones refused (``how="refuse"``: the
listener is closed, as when the server is down), accepted and reset at once (``how="reset"``: as
a load balancer without a healthy backend; obstore does not retry part of those errors itself) or
accepted and never answered (``how="stall"``: a hung server; each request ends at its timeout).
The outage starts when the proxy sees the first chunk PUT of level 0, so the write is in full flight.
"""

from __future__ import annotations

import time
import traceback
from datetime import timedelta

import pytest

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.s3_proxy import FIRST_CHUNK_PUT, OUTAGE, outage_raster
from topozarr_core import create_pyramid

KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI"


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
    ds = outage_raster()
    proxy.cut_on(FIRST_CHUNK_PUT, OUTAGE, how="refuse")
    t0 = time.monotonic()
    _pyramid(ds).write(f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr", mode="w")
    took = time.monotonic() - t0
    assert proxy.cuts == 1 and proxy.restored_at is not None, "the outage never started"
    assert took >= OUTAGE
    _pyramid(ds).write(tmp_path / "clean.zarr")
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
        _pyramid(outage_raster()).write(url, mode="w", max_workers=2)
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
@pytest.mark.parametrize("ended_by", ["asyncio", "client"])
def test_a_probe_without_answer_answers_for_a_second(proxy, s3_env, s3_prefix, monkeypatch, ended_by):
    """After an operation gave up, a new one probes the endpoint once. When the endpoint hangs, a probe takes
    its whole timeout; for a second after one got no answer, new operations give up without a connection of
    their own (instead of one probe timeout per wave of batches). A refused probe is not reused.

    The probe's asyncio timeout and its client's own request timeout are both 5 s, so either may end it (a CI
    run had the client's win, and the next operation probed again for 5 s): ``client`` makes that one win."""
    from topozarr_core.store import retrying_store
    from topozarr_core.store.retrying_store import PROBE_TIMEOUT, ObjectStoreUnavailable, reset_outages
    from topozarr_core.store.targets import object_store_from_url

    if ended_by == "client":
        monkeypatch.setattr(retrying_store, "PROBE_TIMEOUT", PROBE_TIMEOUT + 1)

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
