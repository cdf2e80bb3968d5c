"""Normalise the ``store`` argument of ``Pyramid.write``: paths, URLs, zarr stores, Icechunk sessions."""

from __future__ import annotations

import os
from typing import Any

import zarr
from zarr.storage import LocalStore, ObjectStore


def is_icechunk_store(store: Any) -> bool:
    return type(store).__module__.startswith("icechunk")


def object_store_from_url(url: str, **options: Any) -> ObjectStore:
    """An obstore-backed zarr store for s3://, gs://, az:// ... URLs (credentials from the environment)."""
    from obstore.store import from_url

    client_options = dict(options.pop("client_options", {}) or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith("s3://") and endpoint:
        options.setdefault("endpoint", endpoint)
        if endpoint.startswith("http://"):
            client_options.setdefault("allow_http", True)
    client_options.setdefault("connect_timeout", "30s")
    client_options.setdefault("timeout", "120s")
    return ObjectStore(from_url(url, client_options=client_options, **options))


def resolve_store(target: Any) -> Any:
    """A zarr store object for ``target`` (a path, URL, zarr store or Icechunk session)."""
    if hasattr(target, "store") and type(target).__module__.startswith("icechunk"):
        return target.store  # an icechunk Session
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if isinstance(target, str):
        if "://" in target and not target.startswith("file://"):
            return object_store_from_url(target)
        return LocalStore(target.removeprefix("file://"))
    if isinstance(target, zarr.abc.store.Store):
        return target
    raise TypeError(
        f"cannot write to {type(target).__name__}: pass a path, an object-store URL, a zarr store "
        "(e.g. zarr.storage.ObjectStore) or an Icechunk session/session.store"
    )


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
