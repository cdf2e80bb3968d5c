"""Open a source dataset lazily from a path or URL: NetCDF, Zarr, or an Icechunk repository.

Spelling of a source string:
  ``/data/air.nc``, ``air.nc``            NetCDF (h5netcdf)
  ``/data/air.zarr``, ``s3://b/air.zarr`` Zarr (v2 or v3), opened with ``chunks=None`` (lazy, no dask)
  ``icechunk:///repo/path?branch=main``   Icechunk repository (local path or ``icechunk://s3://bucket/prefix``)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs

import xarray as xr

from topozarr_core.store.errors import TargetError, error_summary
from topozarr_core.store.targets import is_local_path, object_store_from_url

ICECHUNK_SCHEME = "icechunk://"


class SourceError(ValueError):
    """The source cannot be opened; the message says why (never includes credentials)."""


def parse_icechunk(url: str) -> tuple[str, str]:
    """``icechunk://<location>?branch=<b>`` -> (location, branch).

    :param url: the ``icechunk://`` URL (branch ``main`` when it names none).
    """
    rest = url[len(ICECHUNK_SCHEME):]
    location, _, query = rest.partition("?")
    branch = parse_qs(query).get("branch", ["main"])[0]
    if not location:
        raise SourceError(f"icechunk URL {url!r} names no repository")
    return location, branch


def open_source(source: str, variables: list[str] | None = None) -> xr.Dataset:
    """Open lazily; decoding as xarray does by default. Raises SourceError with a clear message.

    :param source: a path, an object-store URL or an ``icechunk://`` URL.
    :param variables: the data variables to keep (default all).
    """
    if not isinstance(source, str) or not source.strip():
        raise SourceError("source must be a non-empty path or URL")
    try:
        ds = _open(source)
    except (SourceError, TargetError) as err:
        if isinstance(err, SourceError):
            raise
        raise SourceError(str(err)) from None
    except FileNotFoundError:
        raise SourceError(f"source {source!r} does not exist") from None
    except Exception as err:  # noqa: BLE001 - re-raised with context, without secrets or backend dumps
        raise SourceError(f"cannot open source {source!r}: {error_summary(err)}") from None
    if variables:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise SourceError(f"variables {missing} are not in the source (it has {sorted(map(str, ds.data_vars))})")
        ds = ds[variables]
    return ds


def has_consolidated_metadata(path: Path) -> bool:
    """Whether the local Zarr store at ``path`` carries consolidated metadata (v2 ``.zmetadata``, or a
    v3 root document with ``consolidated_metadata``).

    Why: asked to guess (``consolidated=None``), xarray warns on every store without it, and Zarr v3
    stores usually have none: one look at the root document instead of a warning per run.

    :param path: the store's directory.
    """
    if (path / ".zmetadata").is_file():
        return True
    try:
        return json.loads((path / "zarr.json").read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError, AttributeError):
        return False


def _open(source: str) -> xr.Dataset:
    if source.startswith(ICECHUNK_SCHEME):
        from topozarr_core.store.icechunk_txn import IcechunkTarget

        location, branch = parse_icechunk(source)
        repo = IcechunkTarget(location, branch).open_repo(create=False)
        if branch not in repo.list_branches():
            raise SourceError(f"branch {branch!r} does not exist in the Icechunk repository {location!r}")
        session = repo.readonly_session(branch=branch)
        return xr.open_zarr(session.store, chunks=None, consolidated=False, zarr_format=3)
    if not is_local_path(source):
        return xr.open_zarr(object_store_from_url(source.rstrip("/"), what="source"), chunks=None,
                            consolidated=False)
    path = Path(source.removeprefix("file://"))
    if not path.exists():
        raise FileNotFoundError(source)
    if path.is_dir():
        try:
            return xr.open_zarr(os.fspath(path), chunks=None, consolidated=has_consolidated_metadata(path))
        except FileNotFoundError:
            raise SourceError(f"source {source!r} is a directory but not a Zarr store (no zarr.json or .zgroup)") from None
    return xr.open_dataset(path, engine="h5netcdf", chunks=None)
