"""Safety of incremental updates at the core: what a reader, a killed update, a changed history and a
concurrent writer can and cannot do to a pyramid (the flow's half: tests/flows/update/test_update_safety.py).

* The root is unpublished (no ``multiscales``, ``topozarr:status = "updating"``) before the first
  array changes and republished only as the last write: at no step of an update does the root
  publish a layout over arrays of mixed lengths; a SIGKILLed update leaves that unpublished root,
  and the next update resumes it to exactly a full build.
* A source whose existing gridded entries changed is refused (sampled level-0 chunks) before
  anything is written.
* A second writer on a plain Zarr target (local or S3) is refused with ``TargetBusy``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import xarray as xr
import zarr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.inputs import tree_state
from tests.helpers.update_safety import (
    SAFETY_KW,
    build_for_safety,
    changed_history,
    reader_view,
    root_attrs,
    safety_raster,
    time_lengths,
    write_source,
)
from topozarr_core import UpdateRefused, create_pyramid, plan_update, update_pyramid
from topozarr_core.publish.root_doc import STASH_KEY, STATUS_KEY
from topozarr_core.store.lease import TargetBusy, lease_for
from topozarr_core.update.checks import history_windows
from topozarr_core.update.pyramid_update import UPDATE_KEY

ROOT = Path(__file__).resolve().parents[3]


# -- the root during an update ---------------------------------------------------------------------


# 16 KiB chunks: shards 4, 5 and 21 steps deep at levels 0, 1 and 2, so 40 -> 41 steps relays nothing out
@pytest.mark.parametrize("nt,k,relayout,opts", [(12, 2, True, {}), (41, 40, False, {"target_chunk_bytes": 16384})])
def test_a_reader_never_sees_a_published_root_over_mixed_lengths(tmp_path, monkeypatch, nt, k, relayout, opts):
    """Every step of an update -- the documents of prepare, each region, each array of finish,
    the root publish -- is observed: the root is unpublished from the first array change to the
    publish, and published (consistent) before and after."""
    import topozarr_core.update.pyramid_update as upd
    import topozarr_core.write.executor as executor

    ds = safety_raster(nt)
    path = tmp_path / "u.zarr"
    build_for_safety(ds.isel(time=slice(0, k)), path, **opts)
    assert bool(plan_update(ds, path).info.relayout) == relayout
    seen: list[tuple[str, str]] = [("before", reader_view(path))]

    def observing(name, fn):
        def wrapped(*a, **kw):
            seen.append((f"{name}:before", reader_view(path)))
            out = fn(*a, **kw)
            seen.append((f"{name}:after", reader_view(path)))
            return out
        return wrapped

    for name in ("clear_chunks", "write_docs", "replace_array"):
        monkeypatch.setattr(upd, name, observing(name, getattr(upd, name)))
    monkeypatch.setattr(executor, "write_region", observing("region", executor.write_region))
    real_publish = upd.publish_root

    def publish(store, spec):
        seen.append(("publish:before", reader_view(path)))
        out = real_publish(store, spec)
        seen.append(("publish:after", reader_view(path)))
        return out

    monkeypatch.setattr(upd, "publish_root", publish)
    update_pyramid(ds, path, max_workers=1)
    seen.append(("after", reader_view(path)))
    assert seen[0] == ("before", "published") and seen[-2:] == [("publish:after", "published"), ("after", "published")]
    assert all(view == "unpublished" for _, view in seen[1:-2]), seen
    steps = {"write_docs:before", "region:before", "replace_array:before"} | ({"clear_chunks:before"} if relayout else set())
    assert steps <= {s for s, _ in seen}
    build_for_safety(ds, tmp_path / "full.zarr", **opts)
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))


_KILLED_UPDATE = """
import sys, time, pathlib
sys.path.insert(0, sys.argv[1])
import xarray as xr
import topozarr_core.write.executor as executor
from topozarr_core import update_pyramid

real = executor.write_region
started = pathlib.Path(sys.argv[3])

def slow(ctx, region):
    started.touch()
    time.sleep(0.5)
    return real(ctx, region)

executor.write_region = slow
update_pyramid(xr.open_zarr(sys.argv[2], chunks=None, consolidated=False), sys.argv[4], max_workers=1)
print("finished")
"""


def test_sigkilled_update_leaves_an_unpublished_root_and_is_resumed(tmp_path):
    ds = safety_raster(10)
    src, path, started = tmp_path / "src.zarr", tmp_path / "u.zarr", tmp_path / "started"
    source = write_source(ds, src)
    build_for_safety(source.isel(time=slice(0, 6)), path, crs="EPSG:4326")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_UPDATE, str(ROOT), str(src), str(started), str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not started.exists():  # regions are being written: after prepare, before finish
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the update never started writing regions"
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL

    attrs = root_attrs(path)
    assert "multiscales" not in attrs and attrs[STATUS_KEY] == "updating"
    assert attrs[UPDATE_KEY] == {"append_dim": "time", "from": 6, "to": 10}
    assert isinstance(attrs[STASH_KEY], dict)  # the layout, kept for the resume
    assert time_lengths(path) == {6, 10}  # the arrays really are mixed: only the root keeps readers out
    assert reader_view(path) == "unpublished"
    assert "multiscales" not in xr.open_zarr(path, consolidated=False).attrs  # the root group, as xarray reads it

    report = update_pyramid(source, path)  # the dead writer's lease is stale (its pid is gone)
    assert report.changed and (report.old_length, report.new_length) == (6, 10)
    build_for_safety(source, tmp_path / "full.zarr", crs="EPSG:4326")
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))
    assert not update_pyramid(source, path).changed


def test_interrupted_update_on_s3_is_resumed(tmp_path, s3_env, s3_prefix):
    import topozarr_core.write.executor as executor

    ds = safety_raster(8)
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    build_for_safety(ds.isel(time=slice(0, 3)), url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(executor, "write_region", lambda ctx, region: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            update_pyramid(ds, url)
    root = zarr.open_group(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), mode="r")
    assert "multiscales" not in root.attrs and root.attrs[STATUS_KEY] == "updating"
    assert update_pyramid(ds, url).old_length == 3
    build_for_safety(ds, tmp_path / "full.zarr")
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "full.zarr"))


def test_an_unfinished_build_is_still_refused(tmp_path):
    ds = safety_raster(4)
    path = tmp_path / "u.zarr"
    build_for_safety(ds.isel(time=slice(0, 2)), path)
    root = zarr.open_group(path, mode="r+")
    attrs = {k: v for k, v in root.attrs.items() if k != "multiscales"}
    root.attrs.put({**attrs, STATUS_KEY: "incomplete"})
    with pytest.raises(UpdateRefused, match="did not finish"):
        plan_update(ds, path)
    root.attrs.put({**attrs, STATUS_KEY: "updating"})  # updating, but no record of the update
    with pytest.raises(UpdateRefused, match="no record"):
        plan_update(ds, path)


def test_changed_gridded_history_is_refused(tmp_path):
    ds, changed = changed_history()
    path = tmp_path / "p.zarr"
    build_for_safety(ds.isel(time=slice(0, 2)), path, chunks_per_shard=1)
    before = tree_state(path)
    with pytest.raises(UpdateRefused, match=r"rewrote history: 'air' at index 0 along 'time' .*rebuild"):
        update_pyramid(changed, path)
    assert tree_state(path) == before
    # only the last old step changed: named
    last = ds.copy()
    air = ds.air.values.copy()
    air[1, 150:, 200:] = 0.0
    last["air"] = (ds.air.dims, air, ds.air.attrs)
    with pytest.raises(UpdateRefused, match="at index 1 along 'time'"):
        plan_update(last, path)
    # the check can be turned off (then the update keeps the stale steps, as before)
    assert plan_update(changed, path, verify_samples=0).info.verified_chunks == 0
    assert plan_update(ds, path).info.verified_chunks == 2  # both old steps, one chunk each
    assert tree_state(path) == before


def test_changed_history_is_refused_in_an_icechunk_session(tmp_path):
    import icechunk

    ds, changed = changed_history()
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    create_pyramid(ds.isel(time=slice(0, 2)), chunks_per_shard=1, **SAFETY_KW).write(session.store)
    built = session.commit("build")
    session = repo.writable_session("main")
    with pytest.raises(UpdateRefused, match="rewrote history: 'air' at index 0"):
        update_pyramid(changed, session)
    assert not session.has_uncommitted_changes and repo.lookup_branch("main") == built


def test_history_samples_are_deterministic_and_cover_the_first_and_last_entries():
    shape, chunks = (40, 2000, 3000), (1, 358, 358)
    a = history_windows(shape, chunks, 0, 37, 16, seed=7)
    assert a == history_windows(shape, chunks, 0, 37, 16, seed=7) and len(a) == 16
    times = sorted({w[0].start for w in a})
    assert times[0] == 0 and times[-1] == 36 and all(w[0].stop <= 37 for w in a)
    assert len({(w[1].start, w[2].start) for w in a}) > 4  # spread over the grid too
    small = history_windows((3, 300, 300), (1, 358, 358), 0, 2, 16, seed=7)
    assert [(w[0].start, w[0].stop, w[1].stop) for w in small] == [(0, 1, 300), (1, 2, 300)]  # all chunks
    assert history_windows((300, 300), (358, 358), None, 0, 16, seed=1) == [
        (slice(0, 300), slice(0, 300))]  # a variable without the append dim: its whole extent
    assert history_windows(shape, chunks, 0, 37, 0, seed=7) == []


# -- one writer at a time ----------------------------------------------------------------------------


def test_update_is_refused_while_another_writer_holds_the_lease(tmp_path):
    ds = safety_raster(6)
    path = tmp_path / "p.zarr"
    build_for_safety(ds.isel(time=slice(0, 3)), path)
    with lease_for(zarr.storage.LocalStore(str(path)), owner="another-run"):
        before = tree_state(path)
        with pytest.raises(TargetBusy, match="being written by another-run"):
            update_pyramid(ds, path)
        assert tree_state(path) == before  # byte for byte, lease included
    assert update_pyramid(ds, path).changed  # free again


def test_two_updates_at_once_the_second_is_refused(tmp_path, monkeypatch):
    import topozarr_core.write.executor as executor

    ds = safety_raster(9)
    path = tmp_path / "p.zarr"
    build_for_safety(ds.isel(time=slice(0, 5)), path)
    real = executor.write_region
    writing, release = threading.Event(), threading.Event()

    def held(ctx, region):
        writing.set()
        release.wait(30)
        return real(ctx, region)

    monkeypatch.setattr(executor, "write_region", held)
    outcome: dict = {}
    first = threading.Thread(target=lambda: outcome.setdefault("first", update_pyramid(ds, path, max_workers=1)))
    first.start()
    try:
        assert writing.wait(30)
        with pytest.raises(TargetBusy, match="being written by"):
            update_pyramid(ds, path)  # plans a resume of the first one's unpublished root, then meets its lease
    finally:
        release.set()
        first.join(60)
    assert outcome["first"].changed
    monkeypatch.undo()
    build_for_safety(ds, tmp_path / "full.zarr")
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))


def test_an_update_planned_before_another_writer_changed_the_pyramid_is_refused(tmp_path):
    ds = safety_raster(9)
    path = tmp_path / "p.zarr"
    build_for_safety(ds.isel(time=slice(0, 5)), path)
    stale = plan_update(ds, path)  # 5 -> 9, planned ...
    update_pyramid(ds.isel(time=slice(0, 7)), path)  # ... then someone else updates 5 -> 7
    before = tree_state(path)
    with pytest.raises(UpdateRefused, match="changed after this update was planned"):
        stale.write(path)
    assert tree_state(path) == before
    update_pyramid(ds, path)  # planning again works: 7 -> 9
    build_for_safety(ds, tmp_path / "full.zarr")
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))


def _objects(s3, prefix: str) -> dict[str, str]:
    listing = s3.boto3_client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def test_update_on_s3_is_refused_while_another_writer_holds_the_lease(s3_env, s3_prefix):
    ds = safety_raster(5)
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    build_for_safety(ds.isel(time=slice(0, 3)), url)
    with lease_for(s3_env.zarr_store(f"{s3_prefix}/p.zarr"), owner="another-run"):
        before = _objects(s3_env, s3_prefix)
        with pytest.raises(TargetBusy, match="another-run"):
            update_pyramid(ds, url)
        assert _objects(s3_env, s3_prefix) == before
