"""The target contract: what a write may replace, and that every check runs before anything changes.

Each refusal is checked to leave the target (and the source) byte-for-byte as it was: names, sizes,
mtimes and content hashes of every file (``tree_state``), or every object's key and ETag on S3.
"""

from __future__ import annotations

import os
import threading

import pytest
import xarray as xr
import zarr

from tests.helpers.compare import assert_same_pyramid
from tests.helpers.inputs import assert_clear, tree_state
from tests.helpers.rasters import make_raster
from tests.helpers.targets import TARGET_KW
from topozarr_core import create_pyramid
from topozarr_core.publish.contract import ForeignTarget, UnsafeTarget
from topozarr_core.store.lease import LEASE_KEY, TargetBusy, acquire, holder


def refuse(fn, exc, match: str) -> str:
    with pytest.raises(exc, match=match) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    assert_clear(msg)
    return msg


# -- mode="w": only empty targets or pyramids of ours -------------------------------------------------

def test_foreign_file_in_target_folder_is_refused_and_kept(ds, tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    before = tree_state(target)
    msg = refuse(lambda: create_pyramid(ds, **TARGET_KW).write(target), ForeignTarget, "notes.txt")
    assert "overwrite_foreign=True" in msg
    assert tree_state(target) == before


def test_relative_parent_target_is_resolved(ds, tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.csv").write_text("1,2,3")
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = tree_state(victim)
    refuse(lambda: create_pyramid(ds, **TARGET_KW).write("../../victim"), ForeignTarget, "data.csv")
    assert tree_state(victim) == before


def test_opt_in_replaces_a_foreign_target(ds, tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "notes.txt").write_text("old")
    create_pyramid(ds, **TARGET_KW).write(target, overwrite_foreign=True)
    assert not (target / "notes.txt").exists()
    create_pyramid(ds, **TARGET_KW).write(tmp_path / "clean.zarr")
    assert_same_pyramid(str(target), str(tmp_path / "clean.zarr"))


def test_rebuild_of_our_pyramid_keeps_foreign_files_beside_it(ds, pyramid_dir, tmp_path):
    (pyramid_dir / "README.txt").write_text("notes of the data team")
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat").write(pyramid_dir)
    create_pyramid(ds, **TARGET_KW).write(pyramid_dir)  # fewer levels: the old level 2 goes
    assert (pyramid_dir / "README.txt").read_text() == "notes of the data team"
    assert not (pyramid_dir / "2").exists()
    create_pyramid(ds, **TARGET_KW).write(tmp_path / "clean.zarr")
    (pyramid_dir / "README.txt").unlink()
    assert_same_pyramid(str(pyramid_dir), str(tmp_path / "clean.zarr"))
    assert not (pyramid_dir / LEASE_KEY).exists()


@pytest.mark.parametrize("kind", ["zarr-group", "zarr-array", "other-multiscales"])
def test_foreign_zarr_is_refused(ds, tmp_path, kind):
    target = tmp_path / "foreign.zarr"
    if kind == "zarr-array":
        zarr.create_array(str(target), shape=(4,), dtype="i4")[:] = 7
        match = "zarr array at its root"
    else:
        g = zarr.open_group(str(target), mode="w", zarr_format=3)
        g.create_array("0", shape=(4,), dtype="f4")[:] = 1.0
        if kind == "other-multiscales":
            g.attrs["multiscales"] = {"layout": [{"asset": "0"}]}
            match = "multiscales pyramid that topozarr-flows did not write"
        else:
            match = "Zarr group that is not a topozarr-flows pyramid"
    before = tree_state(target)
    for mode in ("w", "a"):
        refuse(lambda: create_pyramid(ds, **TARGET_KW).write(target, mode=mode), (ForeignTarget, FileExistsError), match)  # noqa: B023
        assert tree_state(target) == before


def test_a_pyramid_written_by_the_dask_path_is_ours(ds, tmp_path):
    """``as_datatree().to_zarr`` writes the ownership marker: a rebuild replaces it, an update extends it."""
    from topozarr_core import update_pyramid
    from topozarr_core.publish.root_doc import OPTIONS_KEY

    grown = make_raster(ny=64, nx=64, nt=3)
    target = tmp_path / "dask.zarr"
    p = create_pyramid(grown.isel(time=slice(0, 2)), **TARGET_KW)
    p.as_datatree().to_zarr(str(target), zarr_format=3, consolidated=False, encoding=p.encoding)
    assert zarr.open_group(str(target), mode="r").attrs[OPTIONS_KEY]["factors"] == [1, 2]
    assert update_pyramid(grown, target, "time").changed
    (target / "README.txt").write_text("notes")
    create_pyramid(grown, **TARGET_KW).write(target, mode="w")  # no ForeignTarget: the tree is ours
    assert (target / "README.txt").read_text() == "notes"
    (target / "README.txt").unlink()
    create_pyramid(grown, **TARGET_KW).write(tmp_path / "clean.zarr")
    assert_same_pyramid(str(target), str(tmp_path / "clean.zarr"))


@pytest.mark.parametrize("mode", ["w", "w-"])
def test_an_empty_zarr_group_is_an_empty_target(ds, tmp_path, mode):
    target = tmp_path / "empty.zarr"
    zarr.open_group(str(target), mode="w", zarr_format=3)
    assert sorted(os.listdir(target)) == ["zarr.json"]
    create_pyramid(ds, **TARGET_KW).write(target, mode=mode)
    create_pyramid(ds, **TARGET_KW).write(tmp_path / "clean.zarr")
    assert_same_pyramid(str(target), str(tmp_path / "clean.zarr"))


def test_a_group_with_attributes_or_members_is_still_foreign(ds, tmp_path):
    titled = tmp_path / "titled.zarr"
    zarr.open_group(str(titled), mode="w", zarr_format=3).attrs["title"] = "someone's catalogue"
    member = tmp_path / "member.zarr"
    zarr.open_group(str(member), mode="w", zarr_format=3).create_group("child")
    for target in (titled, member):
        before = tree_state(target)
        refuse(lambda: create_pyramid(ds, **TARGET_KW).write(target), ForeignTarget, "Zarr group that is not")  # noqa: B023
        assert tree_state(target) == before


def test_s3_empty_group_is_an_empty_target(ds, s3_env, s3_prefix, tmp_path):
    zarr.open_group(s3_env.zarr_store(f"{s3_prefix}/p.zarr"), mode="w", zarr_format=3)
    create_pyramid(ds, **TARGET_KW).write(f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr")
    create_pyramid(ds, **TARGET_KW).write(tmp_path / "clean.zarr")
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "clean.zarr"))


# -- never: the filesystem root, home folders, the working directory and its ancestors, the source ------

@pytest.mark.parametrize("target,match", [
    ("/", "filesystem root"),
    ("~", "home folder"),
    (".", "working directory"),
    ("..", "ancestor of the working directory"),
    ("../../../../../../etc", "system folder"),
])
def test_never_replaced_locations(ds, target, match):
    refuse(lambda: create_pyramid(ds, **TARGET_KW).write(target, overwrite_foreign=True), UnsafeTarget, match)


def test_symlink_to_the_working_directory_is_resolved(ds, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "marker").write_text("x")
    os.symlink(tmp_path, tmp_path / "link")
    refuse(lambda: create_pyramid(ds, **TARGET_KW).write("link", overwrite_foreign=True), UnsafeTarget, "working directory")


@pytest.mark.parametrize("where,how", [("same", "is the source"), ("parent", "contains the source"),
                                       ("inside", "is inside the source")])
@pytest.mark.parametrize("mode", ["w", "a"])
def test_target_overlapping_the_source_is_refused(zarr_source, where, how, mode):
    src = xr.open_zarr(zarr_source, chunks=None, consolidated=False)
    target = {"same": zarr_source, "parent": zarr_source.parent, "inside": zarr_source / "pyr"}[where]
    before = tree_state(zarr_source.parent)
    refuse(lambda: create_pyramid(src, crs="EPSG:4326", **TARGET_KW).write(target, mode=mode, overwrite_foreign=True),
           UnsafeTarget, how)
    assert tree_state(zarr_source.parent) == before


def test_netcdf_source_inside_the_target_is_refused(ds, tmp_path):
    nc = tmp_path / "data" / "src.nc"
    nc.parent.mkdir()
    ds.drop_vars("spatial_ref").to_netcdf(nc, engine="h5netcdf")
    src = xr.open_dataset(nc, engine="h5netcdf")
    before = tree_state(nc.parent)
    refuse(lambda: create_pyramid(src, crs="EPSG:4326", **TARGET_KW).write(nc.parent, overwrite_foreign=True), UnsafeTarget,
           "contains the source")
    assert tree_state(nc.parent) == before


# -- mode="a" -------------------------------------------------------------------------------------------

def test_mode_a_needs_the_same_layout(ds, pyramid_dir):
    before = tree_state(pyramid_dir)
    refuse(lambda: create_pyramid(ds, chunks_per_shard=2, **TARGET_KW).write(pyramid_dir, mode="a", levels=[1]),
           ValueError, "chunks_per_shard")
    refuse(lambda: create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", method="max")
           .write(pyramid_dir, mode="a", levels=[2]), ValueError, "method")
    assert tree_state(pyramid_dir) == before


def test_mode_a_into_an_empty_target_is_refused(ds, tmp_path):
    refuse(lambda: create_pyramid(ds, **TARGET_KW).write(tmp_path / "new.zarr", mode="a"), ForeignTarget, "mode='a'")
    assert not (tmp_path / "new.zarr").exists()


BAD_DATASETS = {
    "datetime-attr": lambda ds: ds.assign_attrs(created=__import__("datetime").datetime(2020, 1, 1)),
    "set-attr": lambda ds: ds.assign_attrs(tags={"a", "b"}),
    "object-attr": lambda ds: ds.assign_attrs(thing=object()),
    "complex-var-attr": lambda ds: ds.assign(air=ds.air.assign_attrs(c=1 + 2j)),
    "empty-name": lambda ds: ds.rename(air=""),
    "dots-name": lambda ds: ds.rename(air=".."),
    "zarr-json-name": lambda ds: ds.rename(air="zarr.json"),
    "slash-name": lambda ds: ds.rename(air="a/b"),
    "dunder-name": lambda ds: ds.rename(air="__air"),
    "slash-coord": lambda ds: ds.assign_coords(**{"x/y": ((), 1)}),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_leaves_existing_pyramid_unchanged(ds, pyramid_dir, case):
    before = tree_state(pyramid_dir)
    bad = BAD_DATASETS[case](ds)
    with pytest.raises((ValueError, TypeError)) as info:
        create_pyramid(bad, **TARGET_KW).write(pyramid_dir)
    assert_clear(str(info.value))
    assert "\n" not in str(info.value)
    assert tree_state(pyramid_dir) == before


# -- object storage -------------------------------------------------------------------------------------

def _objects(s3, prefix: str) -> dict[str, str]:
    listing = s3.boto3_client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def test_s3_foreign_prefix_is_refused(ds, s3_env, s3_prefix):
    s3_env.boto3_client().put_object(Bucket=s3_env.bucket, Key=f"{s3_prefix}/p.zarr/report.pdf", Body=b"%PDF")
    before = _objects(s3_env, s3_prefix)
    refuse(lambda: create_pyramid(ds, **TARGET_KW).write(f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"), ForeignTarget,
           "report.pdf")
    assert _objects(s3_env, s3_prefix) == before


def test_s3_target_inside_the_source_is_refused(ds, s3_env, s3_prefix):
    url = f"s3://{s3_env.bucket}/{s3_prefix}/src.zarr"
    ds.to_zarr(s3_env.zarr_store(f"{s3_prefix}/src.zarr"), zarr_format=3, consolidated=False)
    src = xr.open_zarr(s3_env.zarr_store(f"{s3_prefix}/src.zarr", read_only=True), chunks=None, consolidated=False)
    before = _objects(s3_env, s3_prefix)
    refuse(lambda: create_pyramid(src, crs="EPSG:4326", **TARGET_KW).write(url + "/pyr", overwrite_foreign=True), UnsafeTarget,
           "inside the source")
    assert _objects(s3_env, s3_prefix) == before


# -- one writer at a time ------------------------------------------------------------------------------

def test_second_writer_is_refused_while_a_lease_is_live(ds, pyramid_dir):
    store = zarr.storage.LocalStore(str(pyramid_dir))
    lease = acquire(store, owner="another-run")
    try:
        before = tree_state(pyramid_dir)
        msg = refuse(lambda: create_pyramid(ds, **TARGET_KW).write(pyramid_dir), TargetBusy, "being written by another-run")
        assert "expires in" in msg
        assert tree_state(pyramid_dir) == before
    finally:
        lease.release()
    create_pyramid(ds, **TARGET_KW).write(pyramid_dir)  # free again
    assert holder(store) is None


def test_stale_leases_are_taken_over(ds, pyramid_dir):
    import json
    import socket

    dead = {"owner": "killed-run", "token": "t", "host": socket.gethostname(), "pid": 2**22 + 12345,
            "expires": 4e9, "ttl": 120}
    (pyramid_dir / LEASE_KEY).write_text(json.dumps(dead))
    create_pyramid(ds, **TARGET_KW).write(pyramid_dir)  # dead process on this host: taken over at once
    expired = {**dead, "host": "elsewhere", "pid": 1, "expires": 1.0}
    (pyramid_dir / LEASE_KEY).write_text(json.dumps(expired))
    create_pyramid(ds, **TARGET_KW).write(pyramid_dir)  # expired: taken over
    live = {**expired, "expires": 4e9}
    (pyramid_dir / LEASE_KEY).write_text(json.dumps(live))
    refuse(lambda: create_pyramid(ds, **TARGET_KW).write(pyramid_dir), TargetBusy, "host elsewhere")


def test_a_dead_writers_reused_pid_does_not_keep_the_target_busy(ds, pyramid_dir):
    """The lease records its process's start time: a live process with the writer's pid but another start
    time is not the writer (the pid was reused), so the lease is taken over at once, not after its ttl."""
    import json
    import socket
    import subprocess
    import sys

    import psutil

    from topozarr_core.store.lease import stale_reason

    store = zarr.storage.LocalStore(str(pyramid_dir))
    lease = acquire(store, owner="a-live-run")
    doc = holder(store)
    assert doc["pid"] == os.getpid() and doc["started"] == psutil.Process().create_time()
    lease.release()

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = psutil.Process(other.pid).create_time()
        live = {"owner": "a-live-run", "token": "t", "host": socket.gethostname(), "pid": other.pid,
                "started": started, "expires": 4e9, "ttl": 120}
        (pyramid_dir / LEASE_KEY).write_text(json.dumps(live))
        refuse(lambda: create_pyramid(ds, **TARGET_KW).write(pyramid_dir), TargetBusy, "a-live-run")
        reused = {**live, "owner": "a-killed-run", "started": started - 1000}  # its pid now names another process
        assert "reused" in stale_reason(reused, "me")
        (pyramid_dir / LEASE_KEY).write_text(json.dumps(reused))
        create_pyramid(ds, **TARGET_KW).write(pyramid_dir)  # taken over at once
        ours = {**reused, "pid": os.getpid()}  # the dead writer's pid is now this very process
        assert "reused" in stale_reason(ours, "me")
        (pyramid_dir / LEASE_KEY).write_text(json.dumps(ours))
        create_pyramid(ds, **TARGET_KW).write(pyramid_dir)
        old = {k: v for k, v in live.items() if k != "started"}  # a lease written before start times were kept
        assert stale_reason(old, "me") is None
    finally:
        other.kill()
        other.wait()
    assert holder(store) is None


def test_concurrent_writers_one_wins_the_other_is_refused(ds, tmp_path, s3_env, s3_prefix):
    """Two writes racing for one S3 target: exactly one proceeds; the result is a clean pyramid."""
    big = make_raster(ny=512, nx=512)
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def write() -> None:
        barrier.wait()
        try:
            create_pyramid(big, **TARGET_KW).write(url)
        except TargetBusy as err:
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(errors) == 1, errors  # they overlap: the second to reach the lease is refused
    create_pyramid(big, **TARGET_KW).write(tmp_path / "clean.zarr")
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "clean.zarr"))
