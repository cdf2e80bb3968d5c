"""Choose the codec pipeline that encodes and writes regions: zarr-python ("python") or zarrs ("rust").

The choice is scoped to the array handles a write opens (``zarr.config.set`` only while opening),
so it never leaks into other zarr work in the same process.
"""

from __future__ import annotations

from typing import Any, Callable

import zarr
from zarr.storage import LocalStore, ObjectStore

from .targets import is_icechunk_store

IO_CHOICES = ("python", "rust")
RUST_PIPELINE = "zarrs.ZarrsCodecPipeline"


def rust_supported(store: Any) -> bool:
    """zarrs serves local filesystem and obstore-backed stores; not Icechunk or memory stores."""
    return isinstance(store, (LocalStore, ObjectStore)) and not is_icechunk_store(store)


def check_io(io: str, store: Any) -> None:
    if io not in IO_CHOICES:
        raise ValueError(f"io must be one of {IO_CHOICES}, got {io!r}")
    if io == "rust" and not rust_supported(store):
        raise ValueError(
            f"io='rust' cannot write to {type(store).__name__}: zarrs serves local paths, LocalStore and "
            "obstore-backed ObjectStore targets only (zarrs would silently fall back to Python on this store); "
            "use io='python'"
        )


def open_array_for(io: str, store: Any) -> Callable[[Any, str, str], zarr.Array]:
    """An opener whose arrays carry the chosen codec pipeline."""
    check_io(io, store)

    def open_python(store: Any, path: str, mode: str) -> zarr.Array:
        return zarr.open_array(store=store, path=path, mode=mode, zarr_format=3)

    if io == "python":
        return open_python

    def open_rust(store: Any, path: str, mode: str) -> zarr.Array:
        with zarr.config.set({"codec_pipeline.path": RUST_PIPELINE}):
            return zarr.open_array(store=store, path=path, mode=mode, zarr_format=3)

    return open_rust


def pipeline_name(arr: zarr.Array) -> str:
    """Class name of the codec pipeline an array handle actually uses (tests assert on it)."""
    return type(arr._async_array.codec_pipeline).__name__
