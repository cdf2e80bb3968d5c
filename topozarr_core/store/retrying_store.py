"""Ride out object-store outages: retry settings for obstore and a retrying zarr ``ObjectStore``.

Two layers, one set of settings (:class:`RetrySettings`):

* obstore's own ``retry_config`` (``max_retries``, ``backoff``, ``retry_timeout``), given to
  ``obstore.store.from_url``. Measured with obstore 0.12.1 against moto behind a TCP proxy: it
  retries connection errors (connection refused, the endpoint down), connections dropped while a
  request is in flight, server errors and request timeouts -- for as long as ``retry_timeout`` and
  ``max_retries`` allow. Its defaults (10 retries, backoff from 0.1 s) give up within 1.5-3 s.
* :class:`ObjectStore` below, for what obstore does not retry at all: a connection accepted and
  reset at once (a load balancer without a healthy backend, a restarting server) fails about half
  of the time as hyper's "connection was not ready" (error kind ``Unknown``), which obstore returns
  at once whatever its ``retry_config``. The store retries every transient-looking failure of a
  zarr store operation (get, set, delete, list...) until the same ``retry_timeout`` has passed
  since the operation's first attempt, then raises :class:`ObjectStoreUnavailable`: one line
  naming the target URL (without credentials) and the cause, never obstore's debug dump.

Settings (read when a store is created): ``TOPOZARR_S3_RETRY_TIMEOUT`` (seconds, default 120),
``TOPOZARR_S3_MAX_RETRIES`` (default 100; the time limit is what normally ends the retries),
``TOPOZARR_S3_MAX_BACKOFF`` (seconds, default 4). They apply to every object-store URL (s3://,
gs://, az://...). A ``retry_config`` passed to :func:`~topozarr_core.store.targets.object_store_from_url`
(obstore's format) takes precedence over them.

How long an operation takes at most before :class:`ObjectStoreUnavailable`: ``retry_timeout``
from its first attempt. Its first attempt is obstore's (which gives up after the same
``retry_timeout``, plus one request ``timeout``, client option, 120 s by default, if a request it
started just before hangs); every later attempt is cut at the deadline (obstore's own retries
inside an attempt started just before it once ran on for up to a whole ``retry_timeout`` more).
Once one operation gave up on an endpoint, the others there fail fast (:mod:`topozarr_core.store.outages`).
Only the python codec pipeline goes through :class:`ObjectStore`'s retries: with ``io="rust"`` zarrs
rebuilds the obstore store (with its ``retry_config``) in Rust and does its own requests.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

import zarr.storage
from zarr.core.common import concurrent_map
from zarr.core.config import config as zarr_config

from topozarr_core.store.errors import TargetError, error_summary, redact
from topozarr_core.store.outages import OUTAGES, AttemptDeadline, EndpointGaveUp

T = TypeVar("T")

ENV_RETRY_TIMEOUT = "TOPOZARR_S3_RETRY_TIMEOUT"
ENV_MAX_RETRIES = "TOPOZARR_S3_MAX_RETRIES"
ENV_MAX_BACKOFF = "TOPOZARR_S3_MAX_BACKOFF"
#: Length limit of an :class:`ObjectStoreUnavailable` message.
MESSAGE_LIMIT = 300
#: Seconds a probe of an endpoint an operation gave up on may take (one request, no retries).
PROBE_TIMEOUT = 5.0
#: The key a probe asks for (any answer, "not found" included, means the endpoint is back).
PROBE_KEY = "zarr.json"
#: Seconds after a probe that failed slowly (a hung endpoint: it took its whole timeout) during which new
#: operations give up without probing (see :mod:`topozarr_core.store.outages`). A probe that failed in less
#: than this (refused at once) is not reused: the next one costs as little.
PROBE_REUSE = 1.0


class ObjectStoreUnavailable(TargetError):
    """The object store kept failing with transient errors until the retry timeout passed."""


@dataclass(frozen=True)
class RetrySettings:
    """How long and how often object-store requests are retried (seconds)."""

    retry_timeout: float = 120.0
    max_retries: int = 100
    init_backoff: float = 0.1
    max_backoff: float = 4.0
    base: float = 2.0

    @classmethod
    def from_env(cls, environ: Any = None) -> RetrySettings:
        """The settings with the ``TOPOZARR_S3_*`` variables of ``environ`` applied over the defaults.

        :param environ: the environment mapping (default ``os.environ``).
        """
        env = os.environ if environ is None else environ
        s = cls()
        return replace(
            s,
            retry_timeout=_env_number(env, ENV_RETRY_TIMEOUT, float, s.retry_timeout),
            max_retries=_env_number(env, ENV_MAX_RETRIES, int, s.max_retries),
            max_backoff=_env_number(env, ENV_MAX_BACKOFF, float, s.max_backoff),
        )

    def merged(self, retry_config: dict | None) -> RetrySettings:
        """These settings overridden by an obstore ``retry_config`` (timedelta or seconds values)."""
        if not retry_config:
            return self
        rc, backoff = dict(retry_config), dict(retry_config.get("backoff") or {})
        return replace(
            self,
            retry_timeout=_seconds(rc.get("retry_timeout", self.retry_timeout)),
            max_retries=int(rc.get("max_retries", self.max_retries)),
            init_backoff=_seconds(backoff.get("init_backoff", self.init_backoff)),
            max_backoff=_seconds(backoff.get("max_backoff", self.max_backoff)),
            base=float(backoff.get("base", self.base)),
        )

    def obstore_config(self) -> dict:
        """obstore's ``retry_config``."""
        return {
            "max_retries": self.max_retries,
            "retry_timeout": timedelta(seconds=self.retry_timeout),
            "backoff": {"init_backoff": timedelta(seconds=self.init_backoff),
                        "max_backoff": timedelta(seconds=self.max_backoff), "base": self.base},
        }

    def probe_config(self) -> dict:
        """obstore's ``retry_config`` for probes: one request, no retries."""
        return {**self.obstore_config(), "max_retries": 0, "retry_timeout": timedelta(seconds=PROBE_TIMEOUT)}

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1, 2, ...): exponential with full jitter, capped."""
        ceiling = min(self.max_backoff, self.init_backoff * self.base ** attempt)
        return random.uniform(min(self.init_backoff, ceiling), ceiling)


def _env_number(env: Any, name: str, kind: type, default: Any) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name} must be a non-negative {'integer' if kind is int else 'number'}, got {raw!r}")
    return value


def _seconds(value: Any) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#]*)[?#][^\s]*")


def public_url(text: str) -> str:
    """``text`` with every URL's userinfo (``KEY:SECRET@``), query string and fragment removed."""
    return _URL_QUERY.sub(r"\1", _URL_USERINFO.sub(r"\1", text))


# -- what is worth retrying ---------------------------------------------------------------------

_CLIENT_STATUS = re.compile(r"Client error with status (\d{3})")
_TRANSIENT = re.compile(
    r"HTTP error|error sending request|connection|connect error|timed out|timeout|Server error|status 5\d\d"
    r"|SlowDown|Too Many Requests|not ready|reset by peer|broken pipe|incomplete message|dispatch",
    re.IGNORECASE,
)
#: obstore's one-line prefix: "Generic S3 error: Error performing PUT <url> in 3.1s, after 10 retries,
#: max_retries: 10, retry_timeout: 180s  - HTTP error: error sending request" (no retries: "in 2ms - ...")
_PERFORMING = re.compile(r"^.*?Error performing (\w+) \S+ in [^-]*?-\s*")  # ("in 2ms - ..." without retries)
_CAUSE = re.compile(r'message: "([^"]+)"|hyper::Error\(\s*\w+,\s*"([^"]+)"')
_DEBUG = re.compile(r"\n\s*\n\s*(?:Debug source:|context:)")


def is_transient(err: BaseException) -> bool:
    """An obstore error that a later attempt may not hit: network errors, timeouts, 5xx, throttling.

    :param err: the error.
    """
    import obstore.exceptions

    if not isinstance(err, obstore.exceptions.GenericError):
        return False  # not found, permission denied, precondition, invalid path...: final answers
    head = _DEBUG.split(str(err), maxsplit=1)[0]
    if m := _CLIENT_STATUS.search(head):
        return m.group(1) in ("408", "429")
    return bool(_TRANSIENT.search(head))


def outage_message(verb: str, location: str, op: str, key: str, err: BaseException | None, elapsed: float,
                   limit: float, note: str = "") -> str:
    """One line for people: what failed where, for how long, and the network-level cause.

    For example ``writing s3://bucket/p.zarr failed after 120 s of retries (limit: TOPOZARR_S3_RETRY_TIMEOUT=120 s):
    PUT 0/air/c/0/0/0: HTTP error: error sending request (Connection refused)``.

    :param verb: what was being done, e.g. ``"writing"``.
    :param location: the store's URL (without credentials).
    :param op: the request, e.g. ``"PUT"``.
    :param key: the key it was for.
    :param err: the last transient error (None: no answer at all).
    :param elapsed: seconds spent retrying.
    :param limit: the retry timeout in seconds.
    :param note: why an operation gave up before its own limit (another one on the endpoint gave up).
    """
    limits = f"limit: {ENV_RETRY_TIMEOUT}={limit:g} s" + (f"; {note}" if note else "")
    msg = f"{verb} {location} failed after {elapsed:.0f} s of retries ({limits}): {op} {key}: "
    return _one_line(msg + ("no answer" if err is None else _cause(err)))


def _one_line(msg: str) -> str:
    msg = " ".join(redact(public_url(msg)).split())
    return msg if len(msg) <= MESSAGE_LIMIT else msg[: MESSAGE_LIMIT - 3] + "..."


def _cause(err: BaseException) -> str:
    """The network-level cause of an obstore error, without its request URL and debug dump."""
    text = str(err)
    head = " ".join(_DEBUG.split(text, maxsplit=1)[0].split())
    if m := _PERFORMING.match(head):
        head = head[m.end():]  # the request URL and retry counts of the last attempt only
    causes = [a or b for a, b in _CAUSE.findall(text)]
    cause = f" ({causes[-1]})" if causes and causes[-1].lower() not in head.lower() else ""
    return error_summary(err) if not head or "<Code>" in head else f"{head}{cause}"  # XML: code + message


# -- the store --------------------------------------------------------------------------------

class ObjectStore(zarr.storage.ObjectStore):
    """zarr's obstore-backed store, retrying transient failures (see the module docstring).

    Named ``ObjectStore`` on purpose: zarrs (``io="rust"``) recognises stores by their type's name.
    ``location`` is the URL shown in messages (give it without credentials)."""

    def __init__(self, store: Any, *, read_only: bool = False, retry: RetrySettings | None = None,
                 location: str | None = None, probe: Any = None) -> None:
        """:param store: the obstore store.
        :param read_only: refuse writes.
        :param retry: the retry settings (default: :meth:`RetrySettings.from_env`).
        :param location: the URL shown in messages, without credentials (default: the store's).
        :param probe: the same obstore store without retries (:meth:`RetrySettings.probe_config`), for
            the one request that tells whether an endpoint an operation gave up on is back.
        """
        super().__init__(store, read_only=read_only)
        self.retry = retry or RetrySettings.from_env()
        self.location = public_url(location) if location else _location_of(store)
        self.probe = probe
        self.endpoint = _endpoint_of(store)

    def with_read_only(self, read_only: bool = False) -> ObjectStore:
        """A copy of this store with ``read_only`` set, keeping the retry settings, location and probe.

        :param read_only: whether the copy refuses writes.
        """
        return type(self)(self.store, read_only=read_only, retry=self.retry, location=self.location, probe=self.probe)

    async def _retrying(self, verb: str, op: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
        started, attempt, last = time.monotonic(), 0, None
        limit = self.retry.retry_timeout
        if (ago := OUTAGES.gave_up_ago(self.endpoint)) is not None:
            await self._probe(verb, op, key, ago)
        while True:
            attempt += 1
            left = limit - (time.monotonic() - started)
            try:
                # the first attempt is obstore's (bounded by its own retry timeout); later ones end at the deadline
                result = await OUTAGES.attempt(self.endpoint, call, None if attempt == 1 else left)
            except EndpointGaveUp as cut:
                note = f"another request to this endpoint gave up {cut.seconds_ago:.0f} s ago"
                raise self._unavailable(verb, op, key, last, started, note) from None
            except AttemptDeadline:
                pass  # the previous attempt's error says what is wrong
            except Exception as err:
                if not is_transient(err):
                    OUTAGES.answered(self.endpoint)  # a final answer (e.g. not found): the endpoint is there
                    raise
                last = err
            else:
                OUTAGES.answered(self.endpoint)
                return result
            left = limit - (time.monotonic() - started)
            if left <= 0 or attempt > self.retry.max_retries:
                OUTAGES.give_up(self.endpoint)
                raise self._unavailable(verb, op, key, last, started) from None
            if (ago := OUTAGES.gave_up_ago(self.endpoint)) is not None:
                raise self._unavailable(verb, op, key, last, started,
                                        f"another request to this endpoint gave up {ago:.0f} s ago") from None
            await asyncio.sleep(min(self.retry.backoff(attempt), left))

    def _unavailable(self, verb: str, op: str, key: str, err: BaseException | None, started: float,
                     note: str = "") -> ObjectStoreUnavailable:
        return ObjectStoreUnavailable(outage_message(verb, self.location, op, key, err, time.monotonic() - started,
                                                     self.retry.retry_timeout, note))

    async def _probe(self, verb: str, op: str, key: str, ago: float) -> None:
        """An operation on this endpoint gave up ``ago`` seconds ago: one quick request tells whether it is
        back (then this operation retries as usual) or not (then it gives up at once)."""
        import obstore

        started, err = time.monotonic(), None
        note = f"another request to this endpoint gave up {ago:.0f} s ago; still no answer"
        if OUTAGES.probe_failed_within(self.endpoint, PROBE_REUSE):
            raise self._unavailable(verb, op, key, None, started, note) from None
        try:
            await asyncio.wait_for(obstore.head_async(self.probe or self.store, PROBE_KEY), PROBE_TIMEOUT)
        except TimeoutError:
            pass  # no answer: err stays None
        except Exception as probe_err:  # noqa: BLE001 -- any probe failure is classified just below
            if is_transient(probe_err):
                err = probe_err
            else:
                OUTAGES.answered(self.endpoint)
                return
        else:
            OUTAGES.answered(self.endpoint)
            return
        # No answer within PROBE_TIMEOUT (a hung endpoint): reused, see PROBE_REUSE. Whether asyncio's timeout or
        # the probe client's own (the same 5 s, reported as "error sending request") ends it is a race: judge by time.
        if err is None or time.monotonic() - started >= PROBE_REUSE:
            OUTAGES.probe_failed(self.endpoint)
        raise self._unavailable(verb, op, key, err, started, note) from None

    # reads
    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        """zarr's ``get``, retried through transient failures.

        :param key: the key.
        :param prototype: the buffer prototype.
        :param byte_range: the byte range to read, or None (all).
        """
        parent = super()
        return await self._retrying("reading", "GET", key, lambda: parent.get(key, prototype, byte_range))

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        """zarr's ``get_partial_values``, retried through transient failures.

        :param prototype: the buffer prototype.
        :param key_ranges: ``(key, byte range)`` pairs.
        """
        parent, key_ranges = super(), list(key_ranges)
        first = key_ranges[0][0] if key_ranges else ""
        return await self._retrying("reading", "GET", first,
                                    lambda: parent.get_partial_values(prototype, key_ranges))

    async def exists(self, key: str) -> bool:
        """zarr's ``exists``, retried through transient failures.

        :param key: the key.
        """
        parent = super()
        return await self._retrying("reading", "HEAD", key, lambda: parent.exists(key))

    async def getsize(self, key: str) -> int:
        """zarr's ``getsize``, retried through transient failures.

        :param key: the key.
        """
        parent = super()
        return await self._retrying("reading", "HEAD", key, lambda: parent.getsize(key))

    # writes
    async def set(self, key: str, value: Any) -> None:
        """zarr's ``set``, retried through transient failures.

        :param key: the key.
        :param value: the buffer to write.
        """
        parent = super()
        await self._retrying("writing", "PUT", key, lambda: parent.set(key, value))

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        # a retry after a lost response finds the object: AlreadyExistsError, which zarr suppresses
        """zarr's ``set_if_not_exists``, retried through transient failures.

        A retry after a lost response finds the object: AlreadyExistsError, which zarr suppresses.

        :param key: the key.
        :param value: the buffer to write.
        """
        parent = super()
        await self._retrying("writing", "PUT", key, lambda: parent.set_if_not_exists(key, value))

    async def delete(self, key: str) -> None:
        """zarr's ``delete``, retried through transient failures.

        :param key: the key.
        """
        parent = super()
        await self._retrying("writing", "DELETE", key, lambda: parent.delete(key))

    async def delete_dir(self, prefix: str) -> None:
        """zarr's ``delete_dir`` over a retried listing, each delete retried through transient failures.

        :param prefix: the directory (``""`` is the whole store).
        """
        self._check_writable()
        if prefix != "" and not prefix.endswith("/"):
            prefix += "/"
        metas = await self._collect(prefix)
        await concurrent_map([(m["path"],) for m in metas], self.delete, limit=zarr_config.get("async.concurrency"))

    # listings: collected whole (with retries), then yielded
    async def _collect(self, prefix: str | None) -> list:
        import obstore as obs

        return await self._retrying("listing", "LIST", prefix or "/",
                                    lambda: obs.list(self.store, prefix=prefix).collect_async())

    async def _list(self, prefix: str | None = None) -> AsyncGenerator[Any, None]:
        for item in await self._collect(prefix):
            yield item

    def list_dir(self, prefix: str) -> AsyncGenerator[str, None]:
        """zarr's ``list_dir``: the listing is collected whole with retries, then yielded.

        :param prefix: the directory.
        """
        parent = super()

        async def listed() -> list[str]:
            return [k async for k in parent.list_dir(prefix)]

        async def gen() -> AsyncGenerator[str, None]:
            for k in await self._retrying("listing", "LIST", prefix or "/", listed):
                yield k

        return gen()


def _endpoint_of(store: Any) -> str:
    """Which service and bucket an obstore store talks to (the key of :data:`topozarr_core.store.outages.OUTAGES`)."""
    config = getattr(store, "config", {}) or {}
    service = next((str(config[k]) for k in ("endpoint", "aws_endpoint", "azure_endpoint", "google_endpoint")
                    if config.get(k)), "")
    bucket = next((str(config[k]) for k in ("bucket", "aws_bucket", "container_name", "google_bucket")
                   if config.get(k)), "")
    return f"{type(store).__name__}:{service}/{bucket}"


def reset_outages() -> None:
    """Forget which endpoints operations gave up on (tests; see :mod:`topozarr_core.store.outages`)."""
    OUTAGES.clear()


def _location_of(store: Any) -> str:
    """``scheme://bucket/prefix`` of an obstore store (for messages)."""
    config = getattr(store, "config", {}) or {}
    name = type(store).__name__
    scheme = {"S3Store": "s3", "GCSStore": "gs", "AzureStore": "az"}.get(name, name)
    bucket = (config.get("bucket") or config.get("container_name") or config.get("aws_bucket")
              or config.get("google_bucket") or "?")
    prefix = getattr(store, "prefix", None) or ""
    return public_url(f"{scheme}://{bucket}/{prefix}".rstrip("/"))


#: The name to import (the class is called ObjectStore for zarrs' sake).
RetryingObjectStore = ObjectStore

__all__ = ["RetrySettings", "RetryingObjectStore", "ObjectStoreUnavailable", "is_transient", "public_url",
           "outage_message", "reset_outages", "ENV_RETRY_TIMEOUT", "ENV_MAX_RETRIES", "ENV_MAX_BACKOFF"]
