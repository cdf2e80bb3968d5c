"""The preview server without a browser (``topozarr_flows.preview``): HTTP Range, CORS and the keys it
serves (credentials stay in the server), the level-0 time at the root for value selectors, the info
labels (dates in any CF calendar, names, units), refusals of what is not a published pyramid, the root's
viewer hints against the convention schemas, and ``topozarr-flows preview`` on an S3 pyramid opening the
browser. The page itself in Chromium: tests/browser/test_browser.py."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import xarray as xr
import xproj  # noqa: F401

from tests.helpers.block_pyramids import block_raster, write_pyramid
from topozarr_core import create_pyramid
from topozarr_flows.preview.pyramid_store import open_pyramid
from topozarr_flows.preview.server import serving

# ---------------------------------------------------------------- the server alone ---------------

@pytest.fixture
def plain_server(tmp_path):
    ds = block_raster(128, 128, x0=0.0, y0=10.0, step=0.05, crs="EPSG:4326", x_dim="lon", y_dim="lat", nt=2)
    path = write_pyramid(ds, tmp_path / "small.zarr", "lon", "lat", levels=2)
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<html>page</html>")
    with serving(open_pyramid(str(path)), static_dir=static) as server:
        yield server, path


def fetch(url: str, method: str = "GET", headers: dict | None = None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_server_ranges_cors_and_keys(plain_server):
    server, path = plain_server
    assert server.url.startswith("http://127.0.0.1:")
    whole = (path / "0" / "v" / "zarr.json").read_bytes()
    status, headers, body = fetch(server.url + "data/0/v/zarr.json")
    assert (status, body) == (200, whole)
    assert headers["Access-Control-Allow-Origin"] == "*" and headers["Accept-Ranges"] == "bytes"
    shard = next(p for p in (path / "0" / "v" / "c").rglob("*") if p.is_file())
    key = "data/" + shard.relative_to(path).as_posix()
    raw = shard.read_bytes()
    for rng, want in (("bytes=0-9", raw[:10]), ("bytes=-16", raw[-16:]), ("bytes=5-", raw[5:]),
                      (f"bytes=3-{len(raw) + 50}", raw[3:])):
        status, headers, body = fetch(server.url + key, headers={"Range": rng})
        assert (status, body) == (206, want), rng
        start = len(raw) - 16 if rng == "bytes=-16" else int(rng[6:].split("-")[0])
        assert headers["Content-Range"] == f"bytes {start}-{start + len(want) - 1}/{len(raw)}"
    assert fetch(server.url + key, headers={"Range": f"bytes={len(raw) + 1}-"})[0] == 416
    assert fetch(server.url + key, headers={"Range": "bytes=0-1,4-5"})[0] == 416
    status, headers, body = fetch(server.url + key, method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) == len(raw) and body == b""
    status, headers, _ = fetch(server.url + key, method="OPTIONS")
    assert status == 204 and "Range" in headers["Access-Control-Allow-Headers"]
    assert "Content-Range" in headers["Access-Control-Expose-Headers"]
    assert fetch(server.url + "data/0/nothing/zarr.json")[0] == 404
    for bad in ("data/../small.zarr/zarr.json", "data/0//v/zarr.json", "data/%2E%2E/x", "../../etc/passwd",
                "static/../../pyramid_store.py"):
        assert fetch(server.url + bad)[0] in (400, 404), bad
    assert fetch(server.url)[2] == b"<html>page</html>"


def test_server_serves_the_level_time_at_the_root_for_value_selectors(plain_server):
    server, path = plain_server
    assert server.pyramid.root_aliases == {}  # the pyramid has its own root copy: served as it is
    assert fetch(server.url + "data/time/zarr.json")[2] == (path / "time" / "zarr.json").read_bytes() \
        == (path / "0" / "time" / "zarr.json").read_bytes()
    # a pyramid written before root copies existed: the preview serves level 0's at the root
    shutil.rmtree(path / "time")
    with serving(open_pyramid(str(path)), static_dir=server.static_dir) as old:
        assert old.pyramid.root_aliases == {"time": "0/time"}
        assert fetch(old.url + "data/time/zarr.json")[2] == (path / "0" / "time" / "zarr.json").read_bytes()
    info = json.loads(fetch(server.url + "info.json")[2])
    assert list(info["variables"]) == ["v"] and len(info["coordinates"]["time"]) == 2
    assert info["attributes"]["multiscales"]["crs"] == "EPSG:4326"
    assert info["lonlat_bounds"] == pytest.approx([0.0, 3.6, 6.4, 10.0])


def test_info_labels_dates_in_any_calendar_and_shows_names_and_units(tmp_path):
    """What the page shows besides pixels, from the server's info.json: dates for a CF time axis in
    a calendar only cftime decodes (360 days: no January 31st, a February 30th), the variables' long names and
    units, the default clim (2..98th percentile of the coarsest level) and a label without quotes."""
    from topozarr_flows.preview.pyramid_store import coordinate_labels

    ds = block_raster(128, 128, x0=0.0, y0=10.0, step=0.05, crs="EPSG:4326", x_dim="lon", y_dim="lat", nt=3)
    ds = ds.assign_coords(time=xr.date_range("2021-01-30", periods=3, freq="D", calendar="360_day", use_cftime=True))
    ds["v"].attrs.update(long_name="Block value", units="m")
    path = write_pyramid(ds, tmp_path / "p360.zarr", "lon", "lat", levels=2)
    info = open_pyramid(str(path)).info()
    assert info["labels"]["time"] == ["2021-01-30", "2021-02-01", "2021-02-02"]  # no January 31st
    v = info["variables"]["v"]
    assert (v["long_name"], v["units"], v["dtype"]) == ("Block value", "m", "float32")
    coarse = ds["v"].isel(time=0).coarsen(lat=2, lon=2).mean().values
    assert v["range"] == pytest.approx(list(np.percentile(coarse, [2, 98])))
    assert info["label"] == str(path) and "'" not in info["label"]
    assert coordinate_labels("time", np.array([0, 30, 59]), {"units": "days since 2021-01-01", "calendar": "360_day"}) \
        == ["2021-01-01", "2021-02-01", "2021-02-30"]
    assert coordinate_labels("time", np.array([0, 6]), {"units": "hours since 2000-01-01"}) == [
        "2000-01-01 00:00", "2000-01-01 06:00"]
    assert coordinate_labels("depth", np.array([5.0, 10.5]), {"units": "m"}) == ["5 m", "10.5 m"]
    # a time axis xarray cannot decode keeps its numbers, with their units
    assert coordinate_labels("t", np.array([1, 2]), {"units": "fortnights since 2000-01-01"}) == [
        "1 fortnights since 2000-01-01", "2 fortnights since 2000-01-01"]


def test_preview_refuses_what_is_not_a_published_pyramid(tmp_path):
    from topozarr_flows.preview.pyramid_store import PreviewError

    with pytest.raises(PreviewError, match="has no root zarr.json"):
        open_pyramid(str(tmp_path))
    (tmp_path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                    "attributes": {"topozarr:status": "incomplete"}}))
    with pytest.raises(PreviewError, match="not a published pyramid: it is incomplete"):
        open_pyramid(str(tmp_path))
    with pytest.raises(PreviewError, match="cannot open PYRAMID"):
        open_pyramid(str(tmp_path / "no-repo"), icechunk=True)


def test_root_viewer_hints_validate_against_the_schemas(tmp_path):
    from tests.helpers.schemas import validate_conventions

    for crs, x0, y0, step, proj4 in (("EPSG:4326", 0.0, 10.0, 0.05, None),
                                     ("EPSG:3857", 0.0, 1.0e6, 1000.0, "+proj=merc"),
                                     ("EPSG:32616", 492_000.0, 3_770_000.0, 30.0, "+proj=utm +zone=16")):
        ds = block_raster(128, 128, x0=x0, y0=y0, step=step, crs=crs, x_dim="x", y_dim="y")
        path = write_pyramid(ds, tmp_path / f"{crs.replace(':', '_')}.zarr", "x", "y", levels=2)
        doc = json.loads((path / "zarr.json").read_text())
        validate_conventions(doc)
        attrs = doc["attributes"]
        assert attrs["multiscales"].get("crs") == (crs if crs != "EPSG:32616" else None)
        hint = attrs["topozarr:viewer"]
        assert hint["bounds"] == pytest.approx([x0, y0 - 128 * step, x0 + 128 * step, y0])
        assert hint["latIsAscending"] is False
        assert (hint.get("proj4") or "").startswith(proj4 or "") and ("proj4" in hint) == (proj4 is not None)
        assert "+type=crs" not in hint.get("proj4", "")


def test_cli_preview_serves_s3_and_opens_the_browser(tmp_path, s3_env, s3_prefix):
    """``preview`` refuses what is not a pyramid in one line; ``preview s3://...`` reads the pyramid
    with the environment's S3 settings (here moto's endpoint in AWS_ENDPOINT_URL), prints the page's
    URL and serves it; ``--open`` hands that URL to the web browser ($BROWSER)."""
    import subprocess
    import sys
    import time

    cli = [sys.executable, "-m", "topozarr_flows.ops.cli", "preview"]
    bad = subprocess.run(cli + [str(tmp_path / "nothing-here"), "--port", "0"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "nothing-here" in bad.stderr
    ds = block_raster(128, 128, x0=0.0, y0=10.0, step=0.05, crs="EPSG:4326", x_dim="lon", y_dim="lat")
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(url)
    opened, recorder = tmp_path / "opened.txt", tmp_path / "browser.py"
    recorder.write_text(f"import pathlib, sys\npathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n")
    env = {**os.environ, "BROWSER": f"{sys.executable} {recorder} %s"}
    proc = subprocess.Popen(cli + [url, "--port", "0", "--open"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        served = proc.stdout.readline().split(" at ")[1].split()[0]
        for _ in range(300):
            if opened.exists() and opened.read_text():
                break
            time.sleep(0.1)
        assert opened.read_text() == served
        info = json.loads(fetch(served + "info.json")[2])
        assert info["label"] == url and list(info["variables"]) == ["v"]
        assert json.loads(fetch(served + "data/zarr.json")[2])["attributes"]["multiscales"]["layout"]
        assert b"app.js" in fetch(served)[2] and fetch(served + "basemap/coast.geojson")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)

