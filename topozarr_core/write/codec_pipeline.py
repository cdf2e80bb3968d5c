"""Choose the codec pipeline that encodes and writes regions: zarr-python ("python") or zarrs ("rust").

``io="auto"`` (the default) is ``"rust"`` on local filesystem targets and ``"python"`` elsewhere (and in a
process forked after zarrs ran in its parent: see :func:`zarrs_usable`): what
topozarr 0.2.1 does by itself when zarrs is installed (zarr picks zarrs for local stores), and the
fastest measured choice (``benchmarks/bench_write.py --io``). Object stores stay on Python under
``"auto"``: only Python's path goes through the retrying store's retries.

How the choice is applied
-------------------------
The usual way to pick zarrs is ``zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})``.
That config is one process-global dict, and donfig's ``config.set`` context manager mutates it and
restores the saved value on exit, so it is *not* thread-safe: a python write opening arrays while a
rust write is inside the block picks up zarrs, and interleaved enter/exit from two threads can leave
``codec_pipeline.path`` permanently set to zarrs. The writes whose arrays this project opens therefore
never touch the global config: an ``io="rust"`` opener opens the array normally and then swaps a
:class:`zarrs.ZarrsCodecPipeline` built for *that handle only* into it (:func:`attach_rust_pipeline`).
Only ``to_zarr`` of :meth:`Pyramid.as_datatree`, whose arrays xarray opens, sets the config for the
call (:func:`zarrs_while_opening`: under a lock, restored after).

No silent fallback
------------------
zarrs 0.2.3 falls back to zarr-python in two ways (see ``zarrs/pipeline.py``):

* unsupported *stores* (``MemoryStore``, ``IcechunkStore``, ...): the Rust constructor raises
  ``NotImplementedError("zarrs-python does not support X stores")``, zarr-python's
  ``create_codec_pipeline`` swallows it and builds a ``BatchedCodecPipeline`` instead -- even with
  ``codec_pipeline.strict=True``;
* unsupported *metadata / selections / dtypes* (datetime, strings, non-slice indexing): the
  ``ZarrsCodecPipeline`` keeps a ``python_impl`` and quietly uses it, unless strict.

Here both are errors: :func:`check_io` rejects unsupported stores up front, and the attached
pipeline is built strict (``python_impl=None``), so anything zarrs cannot encode raises instead of
being encoded by Python. Supported: local paths / ``LocalStore`` and ``ObjectStore`` wrapping an
obstore S3/GCS/Azure/HTTP/Local store (zarrs rebuilds the obstore store in Rust from its config).

Write handles get zarrs; read handles (mode ``"r"``) get it on local stores only and stay on
zarr-python on object stores, see ``_open_rust``.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import zarr
from zarr.storage import LocalStore, ObjectStore

from topozarr_core.store.targets import is_icechunk_store, is_local_path, resolve_store

IO_CHOICES = ("auto", "python", "rust")
RUST_PIPELINE = "zarrs.ZarrsCodecPipeline"
#: zarr's own codec pipeline, the config's default.
DEFAULT_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"

#: zarrs ``chunk_concurrent_maximum`` for region writes; ``None`` lets zarrs decide. Tried 1, 2: no clear gain
#: over the default on 2 cores (benchmarks/bench_io.py --rust-chunk-concurrency).
RUST_CHUNK_CONCURRENT_MAXIMUM: int | None = None
#: zarrs ``num_threads`` (its rayon pool); ``None`` = zarrs default (all cores). Tried 1, 2: no clear gain.
RUST_NUM_THREADS: int | None = None


def _is_memory_object_store(store: Any) -> bool:
    return isinstance(store, ObjectStore) and type(store.store).__name__ == "MemoryStore"


def rust_supported(store: Any) -> bool:
    """zarrs serves local filesystem and obstore-backed stores; not Icechunk or memory stores.

    :param store: the target zarr store.
    """
    return (
        isinstance(store, (LocalStore, ObjectStore))
        and not is_icechunk_store(store)
        and not _is_memory_object_store(store)
    )


#: This process ran a zarrs pipeline (its Rust thread pools may be running).
_zarrs_started = False
#: This process was forked from one that had: zarrs' thread pools do not survive fork() (a write hangs).
_zarrs_forked = False


def _after_fork_in_child() -> None:
    global _zarrs_forked
    _zarrs_forked = _zarrs_forked or _zarrs_started


os.register_at_fork(after_in_child=_after_fork_in_child)


def zarrs_usable() -> bool:
    """Whether zarrs can write in this process: not in a child forked after zarrs started here.

    Why: zarrs' Rust thread pool does not survive ``fork()``; a forked child's write would wait for
    threads that no longer exist (seen: a ``multiprocessing`` "fork" child after a local write).
    """
    return not _zarrs_forked


def resolve_io(io: str, store: Any) -> str:
    """The pipeline ``io`` means on ``store``: ``"auto"`` is ``"rust"`` on a ``LocalStore``, else ``"python"``.

    :param io: ``"auto"``, ``"python"`` or ``"rust"`` (checked with :func:`check_io`).
    :param store: the target zarr store.
    :returns: ``"python"`` or ``"rust"``.
    """
    check_io(io, store)
    if io != "auto":
        return io
    return "rust" if isinstance(store, LocalStore) and zarrs_usable() else "python"


def check_io(io: str, store: Any) -> None:
    """Refuse, in one line, an unknown ``io`` or ``io="rust"`` on a store that zarrs cannot serve.

    :param io: ``"auto"``, ``"python"`` or ``"rust"``.
    :param store: the target zarr store.
    """
    if io not in IO_CHOICES:
        raise ValueError(f"io must be one of {IO_CHOICES}, got {io!r}")
    if io == "rust" and not zarrs_usable():
        raise ValueError("io='rust' cannot write in a process forked after zarrs ran in its parent (zarrs' "
                         "thread pool does not survive fork(), the write would hang); use io='python', or "
                         "start the process with the 'spawn' or 'forkserver' method")
    if io == "rust" and not rust_supported(store):
        what = type(store).__name__
        if isinstance(store, ObjectStore):
            what = f"ObjectStore({type(store.store).__name__})"
        raise ValueError(
            f"io='rust' cannot write to {what}: zarrs serves local paths, LocalStore and "
            "obstore-backed ObjectStore (S3/GCS/Azure/HTTP/local file) targets only (on memory and Icechunk "
            "stores zarrs would silently fall back to zarr-python); use io='python'"
        )


class RustPipelineError(RuntimeError):
    """zarrs could not build its codec pipeline for an array (and we refuse to fall back)."""


def _rust_impl(metadata: Any, store: Any) -> Any:
    from zarrs._internal import CodecPipelineImpl

    cfg = zarr.config  # read-only here: never mutated
    validate = cfg.get("codec_pipeline.validate_checksums", True)
    try:
        return CodecPipelineImpl(
            json.dumps(metadata.to_dict()),
            store_config=store,
            validate_checksums=True if validate is None else bool(validate),
            chunk_concurrent_minimum=cfg.get("codec_pipeline.chunk_concurrent_minimum", None),
            chunk_concurrent_maximum=RUST_CHUNK_CONCURRENT_MAXIMUM,
            num_threads=RUST_NUM_THREADS,
            direct_io=False,
        )
    except NotImplementedError as e:  # unsupported store: zarr-python would silently use Python
        raise RustPipelineError(f"io='rust': {e}; use io='python'") from e
    except (TypeError, ValueError) as e:  # unsupported metadata/codec or store config
        raise RustPipelineError(f"io='rust': zarrs cannot handle this array/store: {e}") from e


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_of(err: BaseException) -> OSError | None:
    """The ``OSError`` a zarrs error stands for (zarrs raises ``RuntimeError("... (os error 28)")``).

    Why: a full disk or a refused permission must read as Python's own ``OSError`` (``[Errno 28] No
    space left on device``), in the failure line and for the retry rules, whichever pipeline wrote.

    :param err: an exception raised by a zarrs pipeline call.
    :returns: the ``OSError``, or None when ``err`` carries no OS error number.
    """
    found = _OS_ERROR.search(str(err)) if isinstance(err, RuntimeError) else None
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


async def os_errors_raised(call: Awaitable[Any]) -> Any:
    """Await a zarrs pipeline call, raising its OS errors as ``OSError`` (see :func:`os_error_of`)."""
    try:
        return await call
    except RuntimeError as e:
        os_err = os_error_of(e)
        if os_err is None:
            raise
        raise os_err from None  # the root cause, as zarr-python would raise it


def attach_rust_pipeline(arr: zarr.Array) -> zarr.Array:
    """Make ``arr`` (this handle only) read and write through a strict zarrs pipeline."""
    from topozarr_core.write.zarrs_pipeline import OsErrorZarrsPipeline

    global _zarrs_started
    _zarrs_started = True
    aa = arr._async_array
    store = aa.store_path.store
    pipeline = OsErrorZarrsPipeline(
        metadata=aa.metadata,
        store=store,
        impl=_rust_impl(aa.metadata, store),
        python_impl=None,  # strict: unsupported dtype/selection raises instead of using Python
    )
    object.__setattr__(aa, "codec_pipeline", pipeline)  # AsyncArray is a frozen dataclass
    return arr


def _open_python(store: Any, path: str, mode: str) -> zarr.Array:
    return zarr.open_array(store=store, path=path, mode=mode, zarr_format=3)


def _open_rust(store: Any, path: str, mode: str) -> zarr.Array:
    arr = _open_python(store, path, mode)
    if mode == "r" and not isinstance(store, LocalStore):
        # Read handles on object stores (the level a later stage starts from, a level re-read when
        # levels are not kept in memory) stay on zarr-python: zarrs 0.2.3 hangs on partial chunk/shard
        # *reads* from ObjectStore(S3Store) (the call holds the GIL and never issues the HTTP request).
        # Local reads go through zarrs: it decodes a level 2-3x faster (a final stage's read-back).
        return arr
    return attach_rust_pipeline(arr)


def open_array_for(io: str, store: Any) -> Callable[[Any, str, str], zarr.Array]:
    """An opener ``(store, path, mode) -> zarr.Array`` whose arrays carry the chosen codec pipeline.

    :param io: ``"auto"`` (see :func:`resolve_io`), ``"python"`` (zarr's codec pipeline) or ``"rust"`` (zarrs).
    :param store: the target zarr store (checked with :func:`check_io`).
    """
    return _open_rust if resolve_io(io, store) == "rust" else _open_python


_config_lock = threading.Lock()


@contextmanager
def zarrs_while_opening(store: Any) -> Iterator[bool]:
    """While the block runs, arrays that zarr opens use zarrs when ``io="auto"`` would write ``store``
    with it (a local target) and zarr's config still names zarr's own pipeline; yields whether it does.

    For writes whose arrays another library opens (xarray's ``to_zarr`` of :meth:`Pyramid.as_datatree`):
    the arrays carry the pipeline to Dask's workers. Unlike :func:`attach_rust_pipeline`, this sets
    zarr's process-wide config for the block (under a lock, so two such blocks never interleave their
    restores), and zarrs keeps its fallback to zarr-python for what it cannot encode (a datetime
    coordinate). Arrays other threads open meanwhile get zarrs too: the same documents and values,
    another encoder.

    :param store: the target: a path, a URL or a zarr store.
    """
    target = resolve_store(store, read_only=True) if is_local_path(store) else store
    if not (resolve_io("auto", target) == "rust" and zarr.config.get("codec_pipeline.path") == DEFAULT_PIPELINE):
        yield False
        return
    from topozarr_core.write.zarrs_pipeline import PIPELINE_PATH

    global _zarrs_started
    with _config_lock:
        _zarrs_started = True
        with zarr.config.set({"codec_pipeline.path": PIPELINE_PATH}):
            yield True


def pipeline_name(arr: zarr.Array) -> str:
    """Name of the codec pipeline an array handle actually uses (tests assert on it).

    ``"ZarrsCodecPipeline"`` only when the Rust implementation is live and strict (no Python
    fallback); a zarrs pipeline whose Rust side failed reports ``"ZarrsCodecPipeline(fallback)"``,
    one that may fall back per call (zarrs's non-strict default) ``"ZarrsCodecPipeline(non-strict)"``.

    :param arr: an open array.
    """
    cp = arr._async_array.codec_pipeline
    name = type(cp).__name__
    if any(c.__name__ == "ZarrsCodecPipeline" for c in type(cp).__mro__):
        name = "ZarrsCodecPipeline"
        if getattr(cp, "impl", None) is None:
            return f"{name}(fallback)"
        if getattr(cp, "python_impl", None) is not None:
            return f"{name}(non-strict)"
    return name

