"""Normalise the ``store`` argument of ``Pyramid.write``: paths, URLs, zarr stores, Icechunk sessions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import zarr
from zarr.storage import LocalStore, ObjectStore

from topozarr_core.store.errors import TargetError, redact


def check_local_target(path: str | os.PathLike) -> None:
    """Refuse, before anything is created, a local target that can never become a writable directory.

    :param path: the target directory (``file://`` allowed).
    """
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
    """Whether ``store`` is an Icechunk session's store (by the module of its type: icechunk is not imported here).

    :param store: any zarr store.
    """
    return type(store).__module__.startswith("icechunk")


#: URL schemes obstore serves (``memory://`` is for tests).
OBJECT_SCHEMES = ("s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https", "memory")


def check_object_url(url: str, what: str = "target") -> None:
    """Refuse, with one line, a URL obstore cannot open (instead of its debug dump).

    :param url: the URL.
    :param what: what the message calls it (``"target"``, ``"source"``).
    """
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

    Requests are retried through outages (:mod:`topozarr_core.store.retrying_store`): for ``TOPOZARR_S3_RETRY_TIMEOUT``
    seconds (default 120), backoff capped at ``TOPOZARR_S3_MAX_BACKOFF`` (4), at most
    ``TOPOZARR_S3_MAX_RETRIES`` (100) retries; ``retry_config=`` (obstore's format) overrides them.
    Then :class:`~topozarr_core.store.retrying_store.ObjectStoreUnavailable` says, in one line, what failed where.

    :param url: the ``s3://``, ``gs://`` or ``az://`` URL.
    :param read_only: open the store read-only.
    :param options: obstore options (``retry_config=`` among them).
    """
    from obstore.store import from_url

    from topozarr_core.store.retrying_store import RetryingObjectStore, RetrySettings, public_url

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


def is_local_path(target: Any) -> bool:
    """Whether ``target`` is a path on this machine: a ``str`` or ``PathLike`` with no URL scheme, or ``file://``.

    :param target: a path, a URL or anything else (False).
    """
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    return isinstance(target, str) and ("://" not in target or target.startswith("file://"))


def resolve_store(target: Any, read_only: bool = False) -> Any:
    """A zarr store object for ``target`` (a path, URL, zarr store or Icechunk session).

    ``read_only`` applies to paths and URLs: a read-only local store does not create its directory."""
    if hasattr(target, "store") and type(target).__module__.startswith("icechunk"):
        return target.store  # an icechunk Session
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if isinstance(target, str):
        if not is_local_path(target):
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
