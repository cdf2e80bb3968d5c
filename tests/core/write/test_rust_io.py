"""io="rust": regions encoded and written by zarrs, proven by spying on the pipelines that ran.

Every equality test also records, per chunk key, which codec pipeline wrote it (a wrapper around
``ZarrsCodecPipeline.write`` and ``BatchedCodecPipeline.write``), so a silent fallback to Python --
or Rust leaking into a python write -- fails the test.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import uuid

import numpy as np
import pytest
import zarr
import zarrs.pipeline
from zarr.core.buffer import default_buffer_prototype
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore, ObjectStore, StorePath

from tests.helpers.disks import small_tmpfs
from tests.helpers.rasters import make_raster
from topozarr_core import create_pyramid
from topozarr_core.write.codec_pipeline import (
    RustPipelineError,
    attach_rust_pipeline,
    check_io,
    open_array_for,
    os_error_of,
    pipeline_name,
    resolve_io,
)

pytestmark = pytest.mark.filterwarnings("ignore:Successfully reconstructed a store:RuntimeWarning")

BUCKET = "topozarr-test"  # the session S3 server's bucket (S3Service.bucket)
SMALL_REGIONS = 64 * 1024  # several regions per level, so the thread pool really interleaves


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def s3_endpoint(s3_env) -> str:
    """The session's loopback moto S3 server (tests/helpers/services.py), its AWS_* variables set."""
    return s3_env.endpoint_url


def _s3_store(endpoint: str, prefix: str) -> ObjectStore:
    from obstore.store import S3Store

    return ObjectStore(
        S3Store(
            BUCKET,
            prefix=prefix,
            endpoint=endpoint,
            access_key_id="testing",
            secret_access_key="testing",
            region="us-east-1",
            client_options={"allow_http": True},
        )
    )


@pytest.fixture
def make_store(tmp_path, request):
    """``make_store(kind, name)`` -> a fresh LocalStore or S3-backed ObjectStore."""

    def make(kind: str, name: str):
        if kind == "local":
            return LocalStore(tmp_path / f"{name}.zarr")
        endpoint = request.getfixturevalue("s3_endpoint")
        return _s3_store(endpoint, f"{uuid.uuid4().hex}/{name}.zarr")

    return make


class PipelineSpy:
    """Records ``(pipeline, store id, chunk key)`` for every chunk any codec pipeline writes."""

    def __init__(self, monkeypatch):
        self.records: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()
        z_write = zarrs.pipeline.ZarrsCodecPipeline.write
        b_write = BatchedCodecPipeline.write
        spy = self

        async def zarrs_write(pipe, batch_info, value, drop_axes=()):
            batch_info = list(batch_info)
            kind = "rust" if pipe.impl is not None and pipe.python_impl is None else "rust-with-fallback"
            spy.add(kind, [(id(pipe.store), bs.path) for bs, *_ in batch_info])
            return await z_write(pipe, batch_info, value, drop_axes)

        async def batched_write(pipe, batch_info, value, drop_axes=()):
            batch_info = list(batch_info)
            # inner (per-shard) pipelines write into in-memory shard setters: only store writes count
            spy.add("python", [(id(bs.store), bs.path) for bs, *_ in batch_info if isinstance(bs, StorePath)])
            return await b_write(pipe, batch_info, value, drop_axes)

        monkeypatch.setattr(zarrs.pipeline.ZarrsCodecPipeline, "write", zarrs_write)
        monkeypatch.setattr(BatchedCodecPipeline, "write", batched_write)

    def add(self, kind, items):
        with self._lock:
            self.records.extend((kind, sid, key) for sid, key in items)

    def keys(self, kind: str, store=None, data_only: bool = True) -> set[str]:
        return {
            key
            for k, sid, key in self.records
            if k == kind and (store is None or sid == id(store)) and (not data_only or _is_region_key(key))
        }


def _is_region_key(key: str) -> bool:
    """Chunks of the arrays the region writer fills: ``<level>/air/c/...`` and the missing counts."""
    parts = key.split("/")
    return "c" in parts and (parts[0] == "_topozarr_missing" or parts[1] == "air")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _all_keys(store) -> list[str]:
    async def collect():
        return [k async for k in store.list()]

    return sorted(sync(collect()))


def _zarr_jsons(store) -> dict[str, dict]:
    out = {}
    for key in _all_keys(store):
        if key == "zarr.json" or key.endswith("/zarr.json"):
            buf = sync(store.get(key, prototype=default_buffer_prototype()))
            out[key] = json.loads(buf.to_bytes())
    return out


def _arrays(store) -> dict[str, np.ndarray]:
    """Every array in the hierarchy, decoded by a fresh zarr-python handle (independent reader)."""
    root = zarr.open_group(store, mode="r", zarr_format=3)
    out = {}
    for path, node in root.members(max_depth=None):
        if isinstance(node, zarr.Array):
            assert pipeline_name(node) == "BatchedCodecPipeline"
            out[path] = node[...]
    return out


def _assert_same_output(store_py, store_rs) -> None:
    meta_py, meta_rs = _zarr_jsons(store_py), _zarr_jsons(store_rs)
    assert meta_py and set(meta_py) == set(meta_rs)
    for key in meta_py:
        assert meta_py[key] == meta_rs[key], key
    arr_py, arr_rs = _arrays(store_py), _arrays(store_rs)
    assert set(arr_py) == set(arr_rs)
    assert not any(p.startswith("_topozarr_missing") for p in arr_py)  # scratch counts go at publish
    for path in arr_py:
        assert arr_py[path].dtype == arr_rs[path].dtype, path
        np.testing.assert_array_equal(arr_py[path], arr_rs[path], err_msg=path)  # NaN == NaN here
    chunk_keys = [k for k in _all_keys(store_py) if _is_region_key(k)]
    assert chunk_keys and chunk_keys == [k for k in _all_keys(store_rs) if _is_region_key(k)]


def _datasets():
    return {"2d": make_raster(ny=600, nx=700, nan_fraction=0.05), "3d": make_raster(ny=400, nx=520, nt=3, nan_fraction=0.05)}


# ---------------------------------------------------------------------------------------------
# output identity + which pipeline ran
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["local", "s3"])
@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_rust_output_identical_and_written_by_zarrs(kind, dim, make_store, monkeypatch):
    ds = _datasets()[dim]
    p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", chunks_per_shard=2, target_chunk_bytes=64 * 1024)
    keep = dim == "2d"  # 3d re-reads the previous level from the store (partial-shard reads)
    spy = PipelineSpy(monkeypatch)

    store_py = make_store(kind, "py")
    rep_py = p.write(store_py, io="python", max_region_bytes=SMALL_REGIONS, keep_levels_in_memory=keep, stats=True)
    store_rs = make_store(kind, "rs")
    rep_rs = p.write(store_rs, io="rust", max_region_bytes=SMALL_REGIONS, keep_levels_in_memory=keep, stats=True)
    assert (rep_py.io, rep_rs.io) == ("python", "rust")
    assert rep_rs.regions >= 14  # several shards per level, partial edge shards included

    on_disk_rs = {k for k in _all_keys(store_rs) if _is_region_key(k)}
    # the scratch missing counts are deleted when the pyramid is published
    published = lambda keys: {k for k in keys if not k.startswith("_topozarr_missing/")}  # noqa: E731
    # every region chunk of the rust target was written by a strict zarrs pipeline, none by Python ...
    assert published(spy.keys("rust", store_rs)) == on_disk_rs
    assert spy.keys("python", store_rs) == set()
    assert spy.keys("rust-with-fallback") == set()
    # ... and the python target never saw zarrs
    assert spy.keys("rust", store_py, data_only=False) == set()
    assert published(spy.keys("python", store_py)) == {k for k in _all_keys(store_py) if _is_region_key(k)}

    _assert_same_output(store_py, store_rs)


def test_rust_write_to_s3_url(s3_endpoint, monkeypatch):
    """``p.write("s3://...")`` (obstore ``from_url`` with client options) also runs zarrs."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    spy = PipelineSpy(monkeypatch)
    ds = make_raster(ny=300, nx=360, nan_fraction=0.05)
    p = create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", chunks_per_shard=1, target_chunk_bytes=64 * 1024)
    url = f"s3://{BUCKET}/{uuid.uuid4().hex}/url.zarr"
    assert p.write(url, io="rust", stats=True).io == "rust"
    store = _s3_store(s3_endpoint, url.split(f"{BUCKET}/", 1)[1])
    on_store = {k for k in _all_keys(store) if _is_region_key(k)}
    assert on_store and spy.keys("rust") == on_store and spy.keys("python") == set()
    got = zarr.open_group(store, mode="r")["0/air"][...]
    np.testing.assert_array_equal(got, ds["air"].values)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_open_array_for_gives_strict_zarrs_handles(kind, make_store):
    store = make_store(kind, "handles")
    zarr.create_array(store, name="a", shape=(40, 40), chunks=(10, 10), shards=(20, 20), dtype="f4", fill_value=np.nan)
    rs = open_array_for("rust", store)(store, "a", "r+")
    py = open_array_for("python", store)(store, "a", "r+")
    # read-only handles stay on zarr-python on S3 (zarrs 0.2.3 hangs on partial reads there); local ones read with zarrs
    reader = open_array_for("rust", store)(store, "a", "r")
    assert pipeline_name(reader) == ("ZarrsCodecPipeline" if kind == "local" else "BatchedCodecPipeline")
    assert pipeline_name(rs) == "ZarrsCodecPipeline"
    assert rs.async_array.codec_pipeline.python_impl is None  # strict: nothing to fall back to
    assert pipeline_name(py) == "BatchedCodecPipeline"
    values = np.arange(1600, dtype="f4").reshape(40, 40)
    values[:7, :9] = np.nan
    rs[:, :] = values
    np.testing.assert_array_equal(py[:, :], values)  # written by Rust, read by Python
    np.testing.assert_array_equal(reader[5:33, 2:39], values[5:33, 2:39])  # a partial read across shards
    np.testing.assert_array_equal(rs[:, :], values)  # and by Rust (whole shards: fine on S3 too)
    rs[3:13, 5:15] = -1.0  # partial-shard write (read-modify-write inside zarrs)
    values[3:13, 5:15] = -1.0
    np.testing.assert_array_equal(py[:, :], values)


# ---------------------------------------------------------------------------------------------
# no leaks into other zarr work in the process
# ---------------------------------------------------------------------------------------------
def test_rust_write_leaves_global_config_alone(tmp_path, raster2d):
    before = zarr.config.get("codec_pipeline.path")
    p = create_pyramid(raster2d, levels=2, x_dim="lon", y_dim="lat")
    p.write(tmp_path / "rs.zarr", io="rust")
    assert zarr.config.get("codec_pipeline.path") == before
    fresh = zarr.open_array(LocalStore(tmp_path / "rs.zarr"), path="0/air", mode="r")
    assert pipeline_name(fresh) == "BatchedCodecPipeline"
    other = zarr.create_array(LocalStore(tmp_path / "other.zarr"), shape=(4,), chunks=(2,), dtype="f4")
    assert pipeline_name(other) == "BatchedCodecPipeline"


def test_concurrent_python_and_rust_writes_do_not_cross(tmp_path, monkeypatch):
    ds = make_raster(ny=400, nx=500, nan_fraction=0.05)
    p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", chunks_per_shard=1, target_chunk_bytes=64 * 1024)
    spy = PipelineSpy(monkeypatch)
    stores = {io: LocalStore(tmp_path / f"{io}.zarr") for io in ("python", "rust")}
    want = {"python": "BatchedCodecPipeline", "rust": "ZarrsCodecPipeline"}
    errors: list[BaseException] = []
    wrong_handles: list[str] = []

    def in_threads(target, ios):
        barrier = threading.Barrier(len(ios))

        def run(io):
            try:
                barrier.wait()
                target(io)
            except BaseException as e:  # noqa: BLE001 -- pragma: no cover - surfaced below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(io,)) for io in ios]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors

    def write_twice(io):
        for _ in range(2):
            p.write(stores[io], io=io, max_region_bytes=SMALL_REGIONS, max_workers=2)

    def open_many(io):
        # like the 2 pool workers of a rust write racing a python write; the former
        # zarr.config.set-based opener crossed over (and left the config on zarrs) here
        opener = open_array_for(io, stores[io])
        for _ in range(300):
            name = pipeline_name(opener(stores[io], "0/air", "r+"))
            if name != want[io]:
                wrong_handles.append(f"{io} got {name}")

    in_threads(write_twice, ["python", "rust"])
    in_threads(open_many, ["python", "rust", "rust"])
    assert not wrong_handles, wrong_handles[:5]
    assert zarr.config.get("codec_pipeline.path").endswith("BatchedCodecPipeline")

    rs_chunks = {k for k in _all_keys(stores["rust"]) if _is_region_key(k)}
    py_chunks = {k for k in _all_keys(stores["python"]) if _is_region_key(k)}
    assert spy.keys("rust", stores["rust"]) == rs_chunks
    assert spy.keys("python", stores["rust"]) == set()
    assert spy.keys("python", stores["python"]) == py_chunks
    assert spy.keys("rust", stores["python"], data_only=False) == set()
    _assert_same_output(stores["python"], stores["rust"])


def test_python_open_while_rust_open_in_flight_stays_python(tmp_path, monkeypatch):
    """Deterministic interleaving: a python handle is opened while a rust opener is mid-open.

    A ``zarr.config.set``-scoped opener fails this (the python handle gets zarrs); ours must not.
    """
    store = LocalStore(tmp_path)
    zarr.create_array(store, name="a", shape=(8,), chunks=(4,), dtype="f4")
    real_open = zarr.open_array
    rust_mid_open, python_opened = threading.Event(), threading.Event()

    def open_and_pause(*args, **kwargs):
        arr = real_open(*args, **kwargs)
        if threading.current_thread().name == "rust-opener":
            rust_mid_open.set()
            assert python_opened.wait(10)
        return arr

    monkeypatch.setattr(zarr, "open_array", open_and_pause)
    got: dict[str, str] = {}

    def rust():
        got["rust"] = pipeline_name(open_array_for("rust", store)(store, "a", "r+"))

    def python():
        assert rust_mid_open.wait(10)
        got["python"] = pipeline_name(open_array_for("python", store)(store, "a", "r+"))
        got["fresh"] = pipeline_name(real_open(store=store, path="a", mode="r"))
        python_opened.set()

    threads = [threading.Thread(target=rust, name="rust-opener"), threading.Thread(target=python, name="py-opener")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert got == {"rust": "ZarrsCodecPipeline", "python": "BatchedCodecPipeline", "fresh": "BatchedCodecPipeline"}


# ---------------------------------------------------------------------------------------------
# io="auto" (the default): zarrs on local targets, as topozarr does when zarrs is installed
# ---------------------------------------------------------------------------------------------
def test_default_io_writes_local_targets_with_zarrs(tmp_path, monkeypatch):
    ds = _datasets()["3d"]
    p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", chunks_per_shard=2, target_chunk_bytes=64 * 1024)
    spy = PipelineSpy(monkeypatch)
    store = LocalStore(tmp_path / "auto.zarr")
    assert p.write(store, stats=True).io == "rust"
    on_disk = {k for k in _all_keys(store) if _is_region_key(k)}
    assert on_disk and spy.keys("rust", store) == on_disk and spy.keys("python", store) == set()
    assert p.write(tmp_path / "path.zarr", stats=True).io == "rust"  # a local path too
    py = LocalStore(tmp_path / "py.zarr")
    p.write(py, io="python")
    _assert_same_output(py, store)


@pytest.mark.parametrize("target", ["memory", "obstore-memory", "icechunk-session", "s3"])
def test_default_io_keeps_python_elsewhere(target, raster2d, request):
    """Object stores keep the retrying store's retries; memory and Icechunk are not served by zarrs."""
    from obstore.store import MemoryStore as ObstoreMemory

    store = {
        "memory": lambda: MemoryStore(),
        "obstore-memory": lambda: ObjectStore(ObstoreMemory()),
        "icechunk-session": _icechunk_store,
        "s3": lambda: _s3_store(request.getfixturevalue("s3_endpoint"), f"{uuid.uuid4().hex}/auto.zarr"),
    }[target]()
    p = create_pyramid(raster2d, levels=2, x_dim="lon", y_dim="lat")
    assert p.write(store, stats=True).io == "python"


def _in_fork_child(fn) -> dict:
    """Run ``fn()`` in a fork()ed child; its result (or error) as JSON. A hang is killed after 60 s."""
    import select
    import signal

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = {"ok": fn()}
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{type(err).__name__}: {err}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 60)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return {"hung": True}
        return json.loads(os.read(r, 65536) or b'{"error": "no output"}')
    finally:
        os.close(r)
        os.waitpid(pid, 0)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_a_forked_child_after_zarrs_ran_writes_with_python_instead_of_hanging(tmp_path):
    """zarrs' thread pool does not survive fork(): a forked child's zarrs write hangs (measured: the
    kill -9 test's forked writers hung once regions spanned several shards). "auto" then picks Python;
    an explicit "rust" is refused in one line."""
    ds = make_raster(ny=512, nx=512)
    p = create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", chunks_per_shard=1, target_chunk_bytes=64 * 1024)
    assert p.write(tmp_path / "parent.zarr", max_workers=2, stats=True).io == "rust"  # zarrs ran in this process
    child = _in_fork_child(lambda: p.write(tmp_path / "child.zarr", max_workers=2, stats=True).io)
    assert child == {"ok": "python"}
    refused = _in_fork_child(lambda: p.write(tmp_path / "child-rs.zarr", io="rust"))
    assert "forked after zarrs ran" in refused.get("error", ""), refused
    _assert_same_output(LocalStore(tmp_path / "parent.zarr"), LocalStore(tmp_path / "child.zarr"))


def test_resolve_io():
    assert resolve_io("auto", MemoryStore()) == "python"
    assert resolve_io("python", LocalStore("/tmp")) == "python"
    with pytest.raises(ValueError, match="io must be one of"):
        resolve_io("zarrs", LocalStore("/tmp"))


def test_os_error_of_zarrs_messages():
    err = os_error_of(RuntimeError("No space left on device (os error 28)"))
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and str(err) == "[Errno 28] No space left on device"
    assert os_error_of(RuntimeError("codec failed")) is None
    assert os_error_of(ValueError("(os error 28)")) is None


@pytest.fixture
def full_disk(tmp_path):
    """A real 1 MiB tmpfs: a pyramid's metadata fits, its shards do not."""
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        yield mount


def test_a_full_disk_under_zarrs_is_an_oserror(full_disk):
    """zarrs says ``RuntimeError: No space left on device (os error 28)``; the user gets Python's OSError."""
    store = LocalStore(full_disk / "a.zarr")
    zarr.create_array(store, name="a", shape=(1024, 1024), chunks=(256, 256), shards=(512, 512), dtype="f4")
    arr = open_array_for("rust", store)(store, "a", "r+")
    assert pipeline_name(arr) == "ZarrsCodecPipeline"
    with pytest.raises(OSError) as got:
        arr[:] = np.random.default_rng(3).random((1024, 1024)).astype("f4")  # incompressible: 4 MB
    assert got.value.errno == errno.ENOSPC and "os error" not in str(got.value)
    assert got.value.__cause__ is None and got.value.__suppress_context__  # the root cause, not zarrs' words


# ---------------------------------------------------------------------------------------------
# unsupported targets: clear errors, never a silent fallback
# ---------------------------------------------------------------------------------------------
def _icechunk_store():
    import icechunk

    repo = icechunk.Repository.create(icechunk.in_memory_storage())
    return repo.writable_session("main")


@pytest.mark.parametrize("target", ["memory", "obstore-memory", "icechunk-session", "icechunk-store"])
def test_rust_rejects_unsupported_stores(target, raster2d):
    from obstore.store import MemoryStore as ObstoreMemory

    store = {
        "memory": lambda: MemoryStore(),
        "obstore-memory": lambda: ObjectStore(ObstoreMemory()),
        "icechunk-session": _icechunk_store,
        "icechunk-store": lambda: _icechunk_store().store,
    }[target]()
    p = create_pyramid(raster2d, levels=2, x_dim="lon", y_dim="lat")
    with pytest.raises(ValueError, match="io='rust' cannot write to"):
        p.write(store, io="rust")
    inner = store.store if target == "icechunk-session" else store
    assert _all_keys(inner) == []  # rejected before anything was written


def test_unknown_io_rejected(tmp_path):
    with pytest.raises(ValueError, match="io must be one of"):
        check_io("fortran", LocalStore(tmp_path))


def test_zarrs_itself_falls_back_silently_on_memory_store():
    """Why check_io exists: with zarrs selected by config (even strict), a MemoryStore array quietly
    gets zarr-python's pipeline. If zarrs ever stops doing this, revisit the README."""
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline", "codec_pipeline.strict": True}):
        arr = zarr.create_array(MemoryStore(), shape=(4,), chunks=(2,), dtype="f4")
    assert pipeline_name(arr) == "BatchedCodecPipeline"
    with pytest.raises(RustPipelineError, match="does not support MemoryStore"):
        attach_rust_pipeline(arr)


def test_attached_pipeline_is_strict(tmp_path):
    """What zarrs cannot encode raises instead of being handed to Python."""
    store = LocalStore(tmp_path)
    zarr.create_array(store, name="t", shape=(4,), chunks=(2,), dtype="datetime64[ns]")
    arr = open_array_for("rust", store)(store, "t", "r+")
    with pytest.raises(zarrs.pipeline.UnsupportedDataTypeError):
        arr[:] = np.arange(4).astype("datetime64[ns]")
