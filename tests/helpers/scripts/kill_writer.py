"""A "zygote" for the kill -9 tests of tests/core/publish/test_never_broken.py.

    python -m tests.helpers.scripts.kill_writer           (cwd: the repository root)

Imports numpy/xarray/zarr/numba/topozarr_core once, warms the numba kernels up with a tiny local
write, prints ``{"event": "ready"}`` and then serves one JSON command per stdin line. Each
``write`` command forks a fresh writer process (so a kill costs no interpreter start-up) that
rebuilds the target with ``Pyramid.write`` and reports its progress as JSON lines on stdout::

    {"event": "pid", "pid": N}                       (zygote, right after the fork)
    {"event": "mark", "pid": N, "mark": ..., "t": T}  (writer; T is time.monotonic(), host-wide)
    {"event": "exit", "pid": N, "status": S, "signal": SIG}   (zygote, once the writer is reaped)

The zygote reaps each writer at once (``waitpid``), so a SIGKILLed writer's pid stops existing
right away, as it does after a real ``kill -9`` of a run: the lease it left is then stale.

Markers come from wrappers installed here around the write protocol's steps (nothing in
topozarr_core is changed): ``start``; ``root-write-begin``/``root-written`` with ``published``
true or false (``layout.write_root``: the unpublished root, later the published one);
``deleting``/``deleted`` (``publish.steps.delete_nodes``: the old nodes of a ``mode="w"`` rebuild);
``level`` (``init_ahead.initialise_level``: a level (re)created); ``done`` (``write`` returned).

Command fields: ``target`` (a local path or an ``s3://`` URL), ``env`` (set in the writer, e.g.
AWS_*), ``source`` ({ny, nx, offset}: :func:`make_source`), ``pyramid`` (create_pyramid keyword
arguments), ``write`` (Pyramid.write keyword arguments), ``slow_delete`` (seconds to sleep per
file a local ``delete_dir`` removes: deletes files one by one, so a kill can land mid-delete).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_source(ny: int, nx: int, offset: float = 0.0):
    """The rasters of the tests: ``make_raster(ny, nx)`` with ``offset`` added to its values."""
    from tests.helpers.rasters import make_raster

    ds = make_raster(ny=ny, nx=nx)
    if offset:
        air = ds["air"]
        ds["air"] = (air + offset).astype(air.dtype).assign_attrs(air.attrs)
    return ds


def _emit(doc: dict) -> None:
    # os.write, not print: one unbuffered write per line (atomic on a pipe), nothing left in a
    # buffer to be duplicated by the next fork
    os.write(1, (json.dumps(doc) + "\n").encode())


def _mark(name: str, **kw: Any) -> None:
    _emit({"event": "mark", "pid": os.getpid(), "mark": name, "t": time.monotonic(), **kw})


def _install_markers() -> None:
    import topozarr_core.publish.level_init as init_ahead
    import topozarr_core.publish.steps as layout

    # publish.steps.delete_nodes is the one step that deletes nodes: the kill tests place kills inside it
    # (wrapping store.delete_dir instead would also mark the chunk-key deletes of other steps).
    write_root, delete_nodes, initialise_level = layout.write_root, layout.delete_nodes, init_ahead.initialise_level

    def marked_write_root(store: Any, attrs: dict) -> None:
        published = "multiscales" in attrs
        _mark("root-write-begin", published=published)
        write_root(store, attrs)
        _mark("root-written", published=published)

    async def marked_delete_nodes(store: Any, names: list[str]) -> None:
        _mark("deleting", names=list(names))
        await delete_nodes(store, names)
        _mark("deleted")

    def marked_initialise_level(store: Any, ds: Any, spec: Any, level: int, docs: Any = None) -> None:
        _mark("level", level=level)
        initialise_level(store, ds, spec, level, docs)

    layout.write_root = marked_write_root
    layout.delete_nodes = marked_delete_nodes
    init_ahead.initialise_level = marked_initialise_level


def _slow_local_deletes(per_file: float) -> None:
    """Make LocalStore.delete_dir remove files one at a time (``per_file`` s apart), deepest first.

    Replaces the public method (zarr.storage.LocalStore.delete_dir), not zarr's private helper behind it."""
    import asyncio

    from zarr.storage import LocalStore

    def delete_slowly(path: Path, prefix: str) -> None:
        if path.is_file():
            raise ValueError(f"delete_dir was passed a {prefix=!r} that is a file")
        if not path.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(path, topdown=False):
            for name in filenames:
                os.unlink(os.path.join(dirpath, name))
                time.sleep(per_file)
            for name in dirnames:
                os.rmdir(os.path.join(dirpath, name))
        os.rmdir(path)

    async def delete_dir(self: LocalStore, prefix: str) -> None:
        if self.read_only:
            raise ValueError("store was opened in read-only mode and does not support writing")
        await asyncio.to_thread(delete_slowly, Path(self.root) / prefix, prefix)

    LocalStore.delete_dir = delete_dir


def _write(cmd: dict) -> None:
    os.environ.update(cmd.get("env") or {})
    if cmd.get("slow_delete"):
        _slow_local_deletes(float(cmd["slow_delete"]))
    from topozarr_core import create_pyramid

    src = cmd["source"]
    ds = make_source(src["ny"], src["nx"], src.get("offset", 0.0))
    pyramid = create_pyramid(ds, x_dim="lon", y_dim="lat", **cmd["pyramid"])
    _mark("start")
    pyramid.write(cmd["target"], **cmd.get("write", {}))
    _mark("done")


def _warm_up() -> None:
    """Load the cached numba kernels and zarr codecs once, here, instead of in every writer."""
    import tempfile

    from topozarr_core import create_pyramid

    with tempfile.TemporaryDirectory(prefix="kill-writer-warmup-") as tmp:
        for method in ("mean", "max"):
            create_pyramid(make_source(256, 256), levels=2, x_dim="lon", y_dim="lat", method=method,
                           chunks_per_shard=1).write(os.path.join(tmp, f"{method}.zarr"), max_workers=1)


def main() -> int:
    import xarray  # noqa: F401
    import zarr  # noqa: F401

    import topozarr_core  # noqa: F401

    _warm_up()
    _install_markers()
    _emit({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the writer
            code = 0
            try:
                _write(cmd)
            except BaseException as err:  # noqa: BLE001 - reported, then the writer ends
                _mark("error", error=f"{type(err).__name__}: {err}"[:2000])
                code = 1
            finally:
                os._exit(code)
        _emit({"event": "pid", "pid": pid})
        _, status = os.waitpid(pid, 0)
        _emit({"event": "exit", "pid": pid, "status": os.waitstatus_to_exitcode(status),
               "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
