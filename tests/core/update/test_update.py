"""Incremental updates: a pyramid built from the first steps of a dataset and updated with the rest
equals a full build of the whole (zarr and Icechunk); a repeated update changes nothing;
incompatible sources are refused before anything is written; a crashed update resumes (the update
flow: tests/flows/update/test_update.py)."""

from __future__ import annotations

import json
import os

import icechunk
import numpy as np
import pytest
import zarr

from tests.helpers.compare import assert_same_pyramid, snapshot
from tests.helpers.rasters import make_raster
from tests.helpers.schemas import validate_conventions
from tests.helpers.updates import UPDATE_KW, build_for_update, file_stamps, update_raster
from topozarr_core import UpdateRefused, create_pyramid, plan_update, update_pyramid
from topozarr_core.plan.regions import restrict_plan
from topozarr_core.publish.root_doc import OPTIONS_KEY, STATUS_KEY
from topozarr_core.validate.pyramid import validate_pyramid
from topozarr_core.write.executor import tile_cache
from topozarr_core.write.window_cache import WindowCache

# -- equality with a full build ---------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5, 8, 11])
def test_update_equals_full_build(tmp_path, k):
    ds = update_raster()
    build_for_update(ds.isel(time=slice(0, k)), tmp_path / "u.zarr")
    report = update_pyramid(ds, tmp_path / "u.zarr", "time")
    assert (report.old_length, report.new_length, report.appended) == (k, 12, 12 - k)
    assert report.changed and report.regions > 0
    build_for_update(ds, tmp_path / "full.zarr")
    assert_same_pyramid(str(tmp_path / "u.zarr"), str(tmp_path / "full.zarr"))
    root = json.loads((tmp_path / "u.zarr" / "zarr.json").read_text())
    validate_conventions(root)
    assert STATUS_KEY not in root["attributes"] and "topozarr:update" not in root["attributes"]


def test_short_levels_are_relaid_out_and_long_ones_only_appended(tmp_path):
    """The shard depth along time grows with a short time axis: such arrays are rewritten whole,
    the others only get the new steps."""
    ds = update_raster(nt=21)
    build_for_update(ds.isel(time=slice(0, 20)), tmp_path / "u.zarr")
    update = plan_update(ds, tmp_path / "u.zarr")
    # 20 -> 21 steps: level 0's shard depth stays 16 (its byte budget), levels 1 and 2 go from 20 to 21
    assert [zarr.open_array(tmp_path / "u.zarr", path=f"{lvl}/air").shards[0] for lvl in range(3)] == [16, 20, 20]
    assert set(update.info.relayout) == {(1, "air"), (2, "air")}
    plan = update.region_plan()
    boxes = {lp.level: [r.box[0] for r in lp.regions] for lp in plan.levels}
    assert boxes[0] == [(20, 21)]  # only the new step, inside its partly filled shard
    assert boxes[1] == [(0, 21)] and boxes[2] == [(0, 21)]


def test_incremental_updates_one_after_another(tmp_path):
    ds = update_raster(nt=20)
    build_for_update(ds.isel(time=slice(0, 2)), tmp_path / "u.zarr")
    for n in (3, 7, 16, 17, 20):
        update_pyramid(ds.isel(time=slice(0, n)), tmp_path / "u.zarr")
    build_for_update(ds, tmp_path / "full.zarr")
    assert_same_pyramid(str(tmp_path / "u.zarr"), str(tmp_path / "full.zarr"))


@pytest.mark.parametrize("method", ["max", "sum", "nearest"])
def test_other_methods(tmp_path, method):
    ds = update_raster(nt=6)
    build_for_update(ds.isel(time=slice(0, 4)), tmp_path / "u.zarr", method=method)
    update_pyramid(ds, tmp_path / "u.zarr")  # the method comes from the pyramid
    build_for_update(ds, tmp_path / "full.zarr", method=method)
    assert_same_pyramid(str(tmp_path / "u.zarr"), str(tmp_path / "full.zarr"))


def test_integer_fill_value_band_dim_and_carried_variables(tmp_path):
    """Extra non-spatial dim after time, an integer variable with _FillValue, a carried variable
    and a non-index coordinate along time."""
    rng = np.random.default_rng(1)
    nt, nb = 9, 2
    ds = make_raster(ny=128, nx=160, nt=nt)
    counts = rng.integers(1, 50, size=(nt, nb, 128, 160)).astype("int16")
    counts[:, :, :20, :20] = -1
    ds["counts"] = (("time", "band", "lat", "lon"), counts, {"_FillValue": -1, "units": "1"})
    ds["station_total"] = (("time",), rng.random(nt))  # carried: no spatial dims
    ds = ds.assign_coords(day_of_year=("time", np.arange(nt) + 100), band=["a", "b"])
    build_for_update(ds.isel(time=slice(0, 4)), tmp_path / "u.zarr", method="max")
    update_pyramid(ds, tmp_path / "u.zarr")
    build_for_update(ds, tmp_path / "full.zarr", method="max")
    assert_same_pyramid(str(tmp_path / "u.zarr"), str(tmp_path / "full.zarr"))


def test_rust_io_update_matches(tmp_path):
    ds = update_raster()
    build_for_update(ds.isel(time=slice(0, 9)), tmp_path / "u.zarr")
    update_pyramid(ds, tmp_path / "u.zarr", io="rust")
    build_for_update(ds, tmp_path / "full.zarr")
    assert_same_pyramid(str(tmp_path / "u.zarr"), str(tmp_path / "full.zarr"))


def test_updated_pyramid_validates(tmp_path):
    ds = update_raster()
    build_for_update(ds.isel(time=slice(0, 7)), tmp_path / "u.zarr")
    update_pyramid(ds, tmp_path / "u.zarr", max_workers=1)
    report = validate_pyramid(create_pyramid(ds, levels=3, **UPDATE_KW), tmp_path / "u.zarr", samples_per_level=8)
    assert report.ok, report.problems
    root = zarr.open_group(tmp_path / "u.zarr", mode="r")
    assert root.attrs[OPTIONS_KEY] == {"x_dim": "lon", "y_dim": "lat", "factors": [1, 2, 4], "method": "mean",
                                       "chunks_per_shard": 4, "target_chunk_bytes": 524_288}


def test_only_the_new_shards_are_touched(tmp_path):
    """Appending 1 step rewrites only the shards holding it: every other shard file is untouched."""
    ds = make_raster(ny=200, nx=240, nt=41)
    path = tmp_path / "u.zarr"
    small = {"target_chunk_bytes": 16384}  # shards 4, 5 and 21 steps deep at levels 0, 1, 2: none grows
    build_for_update(ds.isel(time=slice(0, 40)), path, **small)
    before = file_stamps(path)
    report = update_pyramid(ds, path)
    assert report.relayout == [] and report.regions == 6  # one per spatial shard: 2 x 2 at level 0, 1 above
    after = file_stamps(path)
    depth = {lvl: zarr.open_array(path, path=f"{lvl}/air").shards[0] for lvl in range(3)}
    touched = {k for k in after if before.get(k) != after[k]}
    shards = [k.split(os.sep) for k in after if k.split(os.sep)[1:3] == ["air", "c"]]
    assert len({p[3] for p in shards if p[0] == "0"}) > 1  # several shards along time at level 0
    for parts in shards:  # only the shards holding step 40 were rewritten
        assert (os.sep.join(parts) in touched) == (int(parts[3]) == 40 // depth[int(parts[0])]), parts
    assert depth == {0: 4, 1: 5, 2: 21}
    build_for_update(ds, tmp_path / "full.zarr", **small)
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))


def test_update_on_s3(tmp_path, s3_env, s3_prefix):
    ds = update_raster(nt=8)
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    build_for_update(ds.isel(time=slice(0, 5)), url)
    assert update_pyramid(ds, url).changed
    build_for_update(ds, tmp_path / "full.zarr")
    assert_same_pyramid(s3_env.zarr_store(f"{s3_prefix}/p.zarr", read_only=True), str(tmp_path / "full.zarr"))
    assert not update_pyramid(ds, url).changed


# -- idempotence -------------------------------------------------------------------------------------


def test_second_update_changes_nothing(tmp_path):
    ds = update_raster()
    build_for_update(ds.isel(time=slice(0, 10)), tmp_path / "u.zarr")
    update_pyramid(ds, tmp_path / "u.zarr")
    before = file_stamps(tmp_path / "u.zarr")
    again = update_pyramid(ds, tmp_path / "u.zarr")
    assert not again.changed and again.regions == 0 and again.bytes_written == 0 and again.levels == []
    assert file_stamps(tmp_path / "u.zarr") == before  # not one file touched
    assert update_pyramid(ds, tmp_path / "u.zarr").regions == 0


def test_update_of_an_up_to_date_build_changes_nothing(tmp_path):
    ds = update_raster()
    build_for_update(ds, tmp_path / "u.zarr")
    before = file_stamps(tmp_path / "u.zarr")
    assert not update_pyramid(ds, tmp_path / "u.zarr").changed
    assert file_stamps(tmp_path / "u.zarr") == before


def test_pyramid_without_recorded_options(tmp_path):
    """Pyramids published before the options were recorded: options inferred from the layout."""
    ds = update_raster()
    build_for_update(ds.isel(time=slice(0, 6)), tmp_path / "u.zarr", method="min")
    root = zarr.open_group(tmp_path / "u.zarr", mode="r+")
    attrs = dict(root.attrs)
    attrs.pop(OPTIONS_KEY)
    root.attrs.put(attrs)
    update_pyramid(ds, tmp_path / "u.zarr")
    build_for_update(ds, tmp_path / "full.zarr", method="min")
    assert_same_pyramid(str(tmp_path / "u.zarr"), str(tmp_path / "full.zarr"))


# -- Icechunk ----------------------------------------------------------------------------------------


def test_icechunk_update_one_commit_then_nothing(tmp_path):
    ds = update_raster()
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    create_pyramid(ds.isel(time=slice(0, 5)), levels=3, **UPDATE_KW).write(session.store)
    first = session.commit("build")
    session = repo.writable_session("main")
    report = update_pyramid(ds, session)  # the Session itself
    assert report.changed
    assert repo.lookup_branch("main") == first  # nothing visible before the caller commits
    second = session.commit("update")
    assert [s.id for s in repo.ancestry(branch="main")][:2] == [second, first]
    build_for_update(ds, tmp_path / "full.zarr")
    assert_same_pyramid(repo.readonly_session("main").store, str(tmp_path / "full.zarr"))

    session = repo.writable_session("main")
    again = update_pyramid(ds, session.store)
    assert not again.changed and again.regions == 0
    assert not session.has_uncommitted_changes


def _refused(ds, path, match, **kw):
    before = snapshot(str(path))
    files = file_stamps(path)
    with pytest.raises(UpdateRefused, match=match):
        update_pyramid(ds, path, **kw)
    assert file_stamps(path) == files
    after = snapshot(str(path))
    assert sorted(before) == sorted(after)


def test_refuses_other_grid(built):
    ds, path = built
    _refused(ds.isel(lon=slice(0, 400)), path, "spatial grid")
    _refused(ds.assign_coords(lon=ds.lon + 0.5), path, "spatial grid")


def test_refuses_other_crs(built):
    ds, path = built
    _refused(ds.drop_vars("spatial_ref").proj.assign_crs(spatial_ref="EPSG:4269"), path, "CRS")
    _refused(ds.drop_vars("spatial_ref"), path, "CRS", crs="EPSG:3857")


def test_source_without_crs_uses_the_pyramids(built, tmp_path):
    ds, path = built
    no_crs = ds.drop_vars("spatial_ref")
    assert update_pyramid(no_crs, path).changed
    build_for_update(ds, tmp_path / "full.zarr")
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))


def test_refuses_other_variables(built):
    ds, path = built
    _refused(ds.assign(other=ds.air * 2), path, "variables")
    _refused(ds.rename({"air": "temperature"}), path, "variables")


def test_refuses_other_dtype(built):
    ds, path = built
    _refused(ds.assign(air=ds.air.astype("float64")), path, "dtype")


def test_refuses_other_attributes(built):
    ds, path = built
    changed = ds.copy()
    changed["air"] = ds.air.assign_attrs(units="degC")
    _refused(changed, path, "attributes")


def test_refuses_other_options_or_encoding(built, tmp_path):
    ds, path = built
    _refused(ds, path, "chunks_per_shard=4, not 2", chunks_per_shard=2)
    _refused(ds, path, "method='mean', not 'max'", method="max")
    _refused(ds, path, "factors", factors=[1, 2])
    # a source chunked so the spatial chunk edge snaps differently: another encoding
    _refused(ds.chunk({"time": 1, "lat": 100, "lon": 140}), path, "chunks of '0/air' differ")
    # a pyramid without recorded options, built with chunks_per_shard=2: the default 4 does not fit
    legacy = tmp_path / "legacy.zarr"
    build_for_update(ds.isel(time=slice(0, 6)), legacy, chunks_per_shard=2)
    root = zarr.open_group(legacy, mode="r+")
    attrs = dict(root.attrs)
    attrs.pop(OPTIONS_KEY)
    root.attrs.put(attrs)
    _refused(ds, legacy, "shards of '0/air' differ")


def test_refuses_shrunken_source(built):
    ds, path = built
    _refused(ds.isel(time=slice(0, 5)), path, "shrunken")


def test_refuses_rewritten_history(built):
    ds, path = built
    moved = ds.assign_coords(time=ds.time + np.timedelta64(1, "h"))
    _refused(moved, path, "rewrote history")
    carried = ds.assign(station=("time", np.arange(8.0)))
    other = path.parent / "c.zarr"
    build_for_update(carried.isel(time=slice(0, 6)), other)
    altered = carried.assign(station=("time", np.arange(8.0) + (np.arange(8) == 2)))
    _refused(altered, other, "rewrote history")


def test_refuses_bad_targets_and_dims(built, tmp_path):
    ds, path = built
    _refused(ds, path, "no 'band' dimension", append_dim="band")
    _refused(ds, path, "spatial dimension", append_dim="lat")
    with pytest.raises(UpdateRefused, match="holds no pyramid"):
        update_pyramid(ds, tmp_path / "empty.zarr")
    root = zarr.open_group(path, mode="r+")
    root.attrs.put({**dict(root.attrs), STATUS_KEY: "incomplete"})
    _refused(ds, path, "did not finish")


def test_refuses_pyramid_without_the_dim(tmp_path):
    ds = make_raster(ny=100, nx=120)
    build_for_update(ds, tmp_path / "p.zarr", levels=2)
    _refused(make_raster(ny=100, nx=120, nt=3), tmp_path / "p.zarr", "time|variables|dimension")


# -- interrupted updates -----------------------------------------------------------------------------


@pytest.mark.parametrize("k,fail_level", [(3, 1), (10, 2), (10, None)])
def test_crashed_update_is_resumed(tmp_path, monkeypatch, k, fail_level):
    import topozarr_core.update.pyramid_update as upd
    import topozarr_core.write.executor as executor

    ds = update_raster()
    path = tmp_path / "u.zarr"
    build_for_update(ds.isel(time=slice(0, k)), path)
    real = executor.write_region

    def crashing(ctx, region):
        if region.level == fail_level:
            raise RuntimeError("boom")
        return real(ctx, region)

    monkeypatch.setattr(executor, "write_region", crashing)
    if fail_level is None:  # crash after every region and the new coordinates, before the root metadata
        def failing_publish(self, store):
            raise RuntimeError("boom")

        monkeypatch.setattr(upd.PyramidUpdate, "publish", failing_publish)
    with pytest.raises(RuntimeError, match="boom"):
        update_pyramid(ds, path)
    monkeypatch.undo()
    root = zarr.open_group(path, mode="r")
    assert root.attrs[STATUS_KEY] == "updating"
    assert "multiscales" not in root.attrs  # unpublished while the arrays have mixed lengths
    assert root.attrs["topozarr:update"] == {"append_dim": "time", "from": k, "to": 12}
    report = update_pyramid(ds, path)
    assert report.changed and report.old_length == k
    build_for_update(ds, tmp_path / "full.zarr")
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))
    assert not update_pyramid(ds, path).changed


def test_interrupted_update_then_longer_source(tmp_path, monkeypatch):
    import topozarr_core.write.executor as executor

    ds = update_raster(nt=16)
    path = tmp_path / "u.zarr"
    build_for_update(ds.isel(time=slice(0, 6)), path)
    monkeypatch.setattr(executor, "write_region", lambda ctx, region: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        update_pyramid(ds.isel(time=slice(0, 10)), path)
    monkeypatch.undo()
    update_pyramid(ds, path)
    build_for_update(ds, tmp_path / "full.zarr")
    assert_same_pyramid(str(path), str(tmp_path / "full.zarr"))


# -- the plan helper -----------------------------------------------------------------------------------


def test_restrict_plan_keeps_regions_disjoint_per_shard():
    ds = update_raster(nt=40)
    p = create_pyramid(ds, levels=3, target_chunk_bytes=16384, **UPDATE_KW)  # shards 1, 4 and 8 steps deep
    full = p.region_plan()
    spec = full.var("air")
    for clip in (True, False):
        sub = restrict_plan(full, "time", 37, whole={(2, "air")}, clip=clip)
        assert [lp.level for lp in sub.levels] == [0, 1, 2]
        for lp in sub.levels:
            regions = list(lp.regions)
            unit = spec.encodings[lp.level].shards
            shard_ranges = [[(a // u, (b - 1) // u) for (a, b), u in zip(r.box, unit)] for r in regions]
            for i, ri in enumerate(shard_ranges):  # no two regions share a shard
                for rj in shard_ranges[i + 1:]:
                    assert not all(a0 <= b1 and b0 <= a1 for (a0, a1), (b0, b1) in zip(ri, rj))
            times = sorted({r.box[0] for r in regions})
            if lp.level == 2:  # whole: every shard along time
                assert times == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]
            elif clip:  # the new steps, split at level 0's one-step shards
                assert times == ([(37, 38), (38, 39), (39, 40)] if lp.level == 0 else [(37, 40)])
            else:  # whole shards from the one holding step 37 on
                assert all(t0 % unit[0] == 0 and t1 > 37 for t0, t1 in times) and times[0][0] <= 37
    assert restrict_plan(full, "time", 40, 40).levels == ()


@pytest.mark.parametrize("nt,k", [(300, 256), (21, 20)])
def test_update_memory_estimate_is_what_its_levels_in_memory_take(tmp_path, nt, k):
    """The estimate that decides whether an update keeps its levels in memory is the bytes those levels
    take: levels rewritten whole (relaid out: levels 1 and 2 of the 20 -> 21 update, whose time axis is
    shorter than a shard) are read back from the store and not counted; 256 -> 300 keeps both."""
    ds = update_raster(nt=nt)
    build_for_update(ds.isel(time=slice(0, k)), tmp_path / "u.zarr")
    update = plan_update(ds, tmp_path / "u.zarr")
    tiles = update.tile_plan()
    regions = tiles.region_plan(tiles.tiles)
    cache = tile_cache(tiles, regions, tiles.tiles)
    kept = [] if cache is None else [*cache.data.values(), *cache.missing.values()]
    info = update.info
    estimate = WindowCache.nbytes_for(regions, info.append_dim, info.new_length - info.old_length, set(info.relayout))
    assert estimate == sum(a.nbytes for a in kept)
    assert (estimate > 0) == (not info.relayout)
