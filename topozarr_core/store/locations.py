"""Where a store or a dataset lives, as comparable locations: does a target overlap its source?

Why: a target equal to, inside, or containing the source would delete or corrupt the source. A
location is a resolved local path (``~``, ``..`` and symlinks resolved) or an object-store URL
``scheme://bucket/prefix``; two overlap when one is a prefix of the other at a ``/`` boundary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr
import zarr
from zarr.storage import LocalStore, ObjectStore

from topozarr_core.store.targets import is_local_path

_SCHEMES = {"S3Store": "s3", "GCSStore": "gs", "AzureStore": "az", "HTTPStore": "http"}


@dataclass(frozen=True)
class Location:
    """``kind`` is "local" (``path`` absolute, resolved) or "object" (``path`` = scheme://bucket/prefix)."""

    kind: str
    path: str

    def overlaps(self, other: Location) -> bool:
        """Whether one location contains the other (or they are the same).

        :param other: the other location.
        """
        if self.kind != other.kind:
            return False
        a, b = self.path.rstrip("/") + "/", other.path.rstrip("/") + "/"
        return a.startswith(b) or b.startswith(a)

    def __str__(self) -> str:
        return self.path


def local_location(path: str | os.PathLike) -> Location:
    """The location of a local path, resolved (``file://`` and ``~`` allowed).

    :param path: the path.
    """
    return Location("local", str(Path(os.fspath(path).removeprefix("file://")).expanduser().resolve()))


def url_location(url: str) -> Location:
    """``s3://[user@]bucket/prefix?query`` -> ``s3://bucket/prefix`` (credentials and query dropped).

    :param url: an object-store URL.
    """
    scheme, _, rest = url.partition("://")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, _, prefix = rest.partition("/")
    netloc = netloc.rsplit("@", 1)[-1]
    return Location("object", f"{scheme.lower()}://{netloc}/{prefix.strip('/')}".rstrip("/"))


def location_of_string(source: str) -> Location | None:
    """The location a path or URL names (``icechunk://<location>?...`` names its repository).

    :param source: a path or URL (empty: None).
    """
    if source.startswith("icechunk://"):
        source = source[len("icechunk://"):].split("?", 1)[0]
    if not is_local_path(source):
        return url_location(source)
    return local_location(source) if source else None


def location_of_store(store: Any) -> Location | None:
    """Where a zarr store keeps its keys (None for memory stores and stores of unknown kind)."""
    if isinstance(store, LocalStore):
        return local_location(store.root)
    if isinstance(store, ObjectStore):
        inner = store.store
        scheme = _SCHEMES.get(type(inner).__name__)
        config = getattr(inner, "config", {}) or {}
        bucket = config.get("bucket") or config.get("container_name") or config.get("url")
        if scheme is None or not bucket:
            return None
        return Location("object", f"{scheme}://{bucket}/{(getattr(inner, 'prefix', '') or '').strip('/')}".rstrip("/"))
    return None


def _backing_array(var: xr.Variable) -> zarr.Array | None:
    data = getattr(var, "_data", None)
    for _ in range(8):  # MemoryCached -> CopyOnWrite -> LazilyIndexed -> backend wrapper
        if data is None:
            return None
        inner = getattr(data, "_array", None)
        if isinstance(inner, zarr.Array):
            return inner
        data = getattr(data, "array", None)
    return None


def dataset_locations(ds: xr.Dataset | None, extra: tuple[str, ...] = ()) -> list[Location]:
    """Every location ``ds`` reads from: its ``encoding["source"]``, the stores of lazily opened Zarr
    arrays, and ``extra`` path/URL strings (e.g. the flow's ``source`` parameter)."""
    found: list[Location | None] = [location_of_string(s) for s in extra if isinstance(s, str)]
    if ds is None:
        return [loc for loc in found if loc is not None]
    source = ds.encoding.get("source")
    if isinstance(source, str):
        found.append(location_of_string(source))
    for var in ds.variables.values():
        src = var.encoding.get("source")
        if isinstance(src, str):
            found.append(location_of_string(src))
        arr = _backing_array(var)
        if arr is not None:
            found.append(location_of_store(arr.store))
    out: list[Location] = []
    for loc in found:
        if loc is not None and loc not in out:
            out.append(loc)
    return out


__all__ = ["Location", "local_location", "url_location", "location_of_string", "location_of_store",
           "dataset_locations"]
