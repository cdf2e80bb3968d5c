"""Normalise the ``store`` argument of ``Pyramid.write``: paths, URLs, zarr stores, Icechunk sessions."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import zarr
from zarr.storage import LocalStore, ObjectStore


class TargetError(ValueError):
    """The target cannot be written; the message says why (never includes credentials)."""


#: Environment variables whose values must never appear in a message.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_ACCOUNT_KEY",
                   "AZURE_STORAGE_SAS_TOKEN", "GOOGLE_SERVICE_ACCOUNT_KEY")
_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")  # s3://KEY:SECRET@bucket/...
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_STRUCT_CODE = re.compile(r'code: "([^"]*)", message: "([^"]*)"')  # Rust debug form (icechunk / AWS SDK)
_HTTP_STATUS = re.compile(r"\b([45]\d\d [A-Z][A-Za-z ]*?):")
_DUMP = re.compile(r"\n\s*\n\s*(?:Debug source:|context:)")


def redact(text: str) -> str:
    """``text`` with credential values from the environment, URL userinfo (``s3://KEY:SECRET@...``) and AWS
    key ids replaced by ``***``."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 8:  # real keys are 20+ characters; shorter values would mask ordinary words
            text = text.replace(value, "***")
    text = _URL_USERINFO.sub(r"\1***@", text)
    return _AWS_KEY_ID.sub("***", text)


def root_cause(err: BaseException) -> BaseException:
    """The error at the bottom of ``err``'s chain (``raise ... from``, or raised while handling): what
    an operator has to act on (a full disk, a refused credential), not the layers that passed it on."""
    seen = {id(err)}
    while True:
        nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if nxt is None or id(nxt) in seen:
            return err
        seen.add(id(nxt))
        err = nxt


def error_summary(err: BaseException, limit: int = 300) -> str:
    """One line for people from an object-store or Icechunk error: the service's error code and message,
    without request dumps, Rust debug structures or response bodies, and with credentials redacted."""
    text = str(err)
    if m := _XML_CODE.search(text):  # an S3-style XML error body
        message = _XML_MESSAGE.search(text)
        status = _HTTP_STATUS.search(text)
        summary = f"{m.group(1)}: {message.group(1) if message else ''}".rstrip(": ")
        summary = f"{status.group(1)} {summary}" if status else summary
    elif m := _STRUCT_CODE.search(text):
        summary = f"{m.group(1)}: {m.group(2)}"
    else:
        summary = " ".join(_DUMP.split(text, maxsplit=1)[0].split())
    summary = redact(summary)
    if len(summary) > limit:
        summary = summary[: limit - 3] + "..."
    return f"{type(err).__name__}: {summary}" if summary else type(err).__name__


def store_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the storage backend said no" (I/O, object store, Icechunk storage)."""
    import icechunk
    import obstore.exceptions

    return (OSError, obstore.exceptions.BaseError, icechunk.IcechunkError)


def check_local_target(path: str | os.PathLike) -> None:
    """Refuse, before anything is created, a local target that can never become a writable directory."""
    p = Path(os.fspath(path).removeprefix("file://"))
    if p.exists():
        if not p.is_dir():
            raise TargetError(f"target {str(p)!r} is a file, not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise TargetError(f"target directory {str(p)!r} is not writable")
        return
    parent = p.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TargetError(f"target {str(p)!r} cannot be created: {str(parent)!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TargetError(f"target {str(p)!r} cannot be created: directory {str(parent)!r} is not writable")


def is_icechunk_store(store: Any) -> bool:
    return type(store).__module__.startswith("icechunk")


#: URL schemes obstore serves (``memory://`` is for tests).
OBJECT_SCHEMES = ("s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https", "memory")


def check_object_url(url: str, what: str = "target") -> None:
    """Refuse, with one line, a URL obstore cannot open (instead of its debug dump)."""
    scheme, _, rest = url.partition("://")
    shown = redact(url)[:120]
    if scheme.lower() not in OBJECT_SCHEMES:
        raise TargetError(f"{what} {shown!r}: unsupported URL scheme {scheme!r}; use a local path or an "
                          "s3://, gs:// or az:// URL")
    bucket = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if not bucket and scheme.lower() != "memory":
        raise TargetError(f"{what} {shown!r} names no bucket; write {scheme}://<bucket>/<prefix>")


def object_store_from_url(url: str, read_only: bool = False, **options: Any) -> ObjectStore:
    """An obstore-backed zarr store for s3://, gs://, az:// ... URLs (credentials from the environment).

    Requests are retried through outages (:mod:`.object_retry`): for ``TOPOZARR_S3_RETRY_TIMEOUT``
    seconds (default 120), backoff capped at ``TOPOZARR_S3_MAX_BACKOFF`` (4), at most
    ``TOPOZARR_S3_MAX_RETRIES`` (100) retries; ``retry_config=`` (obstore's format) overrides them.
    Then :class:`~.object_retry.ObjectStoreUnavailable` says, in one line, what failed where."""
    from obstore.store import from_url

    from .object_retry import RetryingObjectStore, RetrySettings, public_url

    check_object_url(url, options.pop("what", "target"))

    retry = RetrySettings.from_env().merged(options.pop("retry_config", None))
    client_options = dict(options.pop("client_options", {}) or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith("s3://") and endpoint:
        options.setdefault("endpoint", endpoint)
        if endpoint.startswith("http://"):
            client_options.setdefault("allow_http", True)
    client_options.setdefault("connect_timeout", "30s")
    client_options.setdefault("timeout", "120s")
    inner = from_url(url, client_options=client_options, retry_config=retry.obstore_config(), **options)
    probe_options = {**client_options, "connect_timeout": "3s", "timeout": "5s"}  # see object_retry.PROBE_TIMEOUT
    probe = from_url(url, client_options=probe_options, retry_config=retry.probe_config(), **options)
    return RetryingObjectStore(inner, read_only=read_only, retry=retry, location=public_url(url), probe=probe)


def probe_object_store(url: str) -> None:
    """One LIST request below ``url``: raises the backend's error for a missing bucket or rejected credentials."""
    import obstore

    store = object_store_from_url(url.rstrip("/"), read_only=True)
    next(iter(obstore.list(store.store, chunk_size=1)), None)


def resolve_store(target: Any, read_only: bool = False) -> Any:
    """A zarr store object for ``target`` (a path, URL, zarr store or Icechunk session).

    ``read_only`` applies to paths and URLs: a read-only local store does not create its directory."""
    if hasattr(target, "store") and type(target).__module__.startswith("icechunk"):
        return target.store  # an icechunk Session
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if isinstance(target, str):
        if "://" in target and not target.startswith("file://"):
            return object_store_from_url(target, read_only=read_only)
        return LocalStore(os.path.expanduser(target.removeprefix("file://")), read_only=read_only)
    if isinstance(target, zarr.abc.store.Store):
        return target
    raise TypeError(
        f"cannot write to {type(target).__name__}: pass a path, an object-store URL, a zarr store "
        "(e.g. zarr.storage.ObjectStore) or an Icechunk session/session.store"
    )


def check_writable(store: Any) -> None:
    """Refuse, with one line, a store opened read-only (before the first write would fail with the
    backend's own dump, e.g. Icechunk's ``ReadOnlyError ... icechunk/src/store.rs``)."""
    if not getattr(store, "read_only", False):
        return
    if is_icechunk_store(store):
        raise TargetError("the target is a read-only Icechunk session: write into "
                          "repo.writable_session('<branch>') (or its .store) and commit it afterwards")
    raise TargetError(f"the target store {describe_store(store)} was opened read-only; open it writable "
                      "(read_only=False) or pass a path or URL")


def describe_store(store: Any) -> str:
    """Short human label of a store for logs (never includes credentials)."""
    if isinstance(store, LocalStore):
        return f"local:{store.root}"
    if isinstance(store, ObjectStore):
        inner = store.store
        prefix = getattr(inner, "prefix", None)
        config = getattr(inner, "config", {}) or {}
        bucket = config.get("bucket") or config.get("aws_bucket") or config.get("AWS_BUCKET") or "?"
        return f"object:{type(inner).__name__}:{bucket}/{prefix or ''}"
    if is_icechunk_store(store):
        return "icechunk"
    return type(store).__name__
