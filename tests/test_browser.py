"""The pyramids in a real browser: Debian's headless Chromium (software WebGL) runs the bundled
preview page (maplibre-gl + @carbonplan/zarr-layer) against pyramids written by the project and
served by ``flows.preview.server`` on 127.0.0.1.

Each dataset is made of uniform blocks of 64x64 level-0 cells with grey values 16..240 (colormap
``greys``, clim [0, 255]), neighbouring blocks differing by at least 48, so a pixel's grey *is* the
value under it and a block drawn in the wrong place is seen at once. References are independent:
the values of a level are ``xarray.coarsen`` of the source, positions come from pyproj and the map's
own projection, the level expected at a zoom from the cell size versus the screen pixel size.

The browser tests are skipped when /usr/bin/chromium is missing, except under CI (``CI=true``),
where that fails; the server tests (Range, CORS, keys, credentials) always run.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import threading
from collections import deque
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pyproj
import pytest
import xarray as xr
import xproj  # noqa: F401

from flows.preview.pyramid_store import open_pyramid
from flows.preview.server import STATIC_DIR, serving
from topozarr_core import ZarrLayerVarConfig, create_pyramid

CHROMIUM = "/usr/bin/chromium"

BLOCK = 64
VIEW = (800, 600)
MAGENTA = (255, 0, 255)
#: Console messages that are harmless here; anything else of type error or warning fails a test.
#: None was seen in these runs; these two are Chromium's own notes about how the tests render, not
#: about the page: software WebGL (no GPU here) and the tests reading the canvas back.
KNOWN_HARMLESS = (
    "Automatic fallback to software WebGL has been deprecated",
    "GPU stall due to ReadPixels",
)


# ---------------------------------------------------------------- data ---------------------------

def block_raster(ny: int, nx: int, x0: float, y0: float, step: float, crs: str, x_dim: str, y_dim: str,
                 nt: int | None = None) -> xr.Dataset:
    """Blocks of BLOCK x BLOCK cells, values 16 + 16 * ((5 by + 3 bx + 7 t) mod 15); y descending."""
    by, bx = np.meshgrid(np.arange(ny) // BLOCK, np.arange(nx) // BLOCK, indexing="ij")
    steps = [0] if nt is None else range(nt)
    planes = [16.0 + 16.0 * ((5 * by + 3 * bx + 7 * t) % 15) for t in steps]
    values = np.stack(planes).astype("float32")
    x = x0 + (np.arange(nx) + 0.5) * step
    y = y0 - (np.arange(ny) + 0.5) * step
    dims: tuple[str, ...] = (y_dim, x_dim)
    coords: dict = {y_dim: y, x_dim: x}
    if nt is None:
        values = values[0]
    else:
        dims = ("time",) + dims
        coords["time"] = (np.datetime64("2020-01-01") + np.arange(nt) * np.timedelta64(1, "D")).astype("datetime64[ns]")
    ds = xr.Dataset({"v": (dims, values)}, coords=coords)
    return ds.proj.assign_crs(spatial_ref=crs)


def write_pyramid(ds: xr.Dataset, path: Path, x_dim: str, y_dim: str, levels: int) -> Path:
    create_pyramid(ds, levels=levels, x_dim=x_dim, y_dim=y_dim, method="mean",
                   layer_hints={"v": ZarrLayerVarConfig(colormap="greys", clim=[0, 255])}).write(str(path))
    return path


# ---------------------------------------------------------------- browser ------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists() or not (STATIC_DIR / "app.js").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs {CHROMIUM} (apt-get install chromium) and the built page (make): "
                        "the browser tests must not be skipped there")
        pytest.skip(f"needs {CHROMIUM} and the built preview page (make)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--ignore-gpu-blocklist", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
            viewport={"width": VIEW[0], "height": VIEW[1]},
            device_scale_factor=1,
        )
        yield context
        context.close()


class Viewer:
    """One page on the preview server, with helpers over the page's ``window.__topozarr`` hook."""

    def __init__(self, context, server, query: str = "", settle: bool = True):
        self.server = server
        self.page = context.new_page()
        self.console: list[tuple[str, str]] = []
        self.page.on("console", lambda m: self.console.append((m.type, f"{m.text} [{m.location.get('url', '')}]")))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))
        self.page.goto(server.url + query)
        self.page.wait_for_function("window.__topozarr && window.__topozarr.ready", timeout=60_000)
        if settle:
            self.settle()

    def settle(self) -> None:
        self.page.wait_for_function("window.__topozarr.settled()", timeout=90_000, polling=100)

    def jump(self, lon: float, lat: float, zoom: float) -> None:
        self.server.requested.clear()
        self.page.evaluate("([lon, lat, zoom]) => window.__topozarr.jumpTo({center: [lon, lat], zoom})",
                           [lon, lat, zoom])
        self.page.wait_for_timeout(200)
        self.settle()

    def levels_fetched(self, var: str = "v") -> set[int]:
        """Levels whose chunks of ``var`` the page fetched since the last jump (the server's log)."""
        return {int(k.split("/")[0]) for k in list(self.server.requested) if f"/{var}/c/" in k}

    def pixels(self) -> np.ndarray:
        shot = self.page.evaluate("window.__topozarr.pixels()")
        rgba = np.frombuffer(base64.b64decode(shot["rgba"]), dtype=np.uint8)
        return rgba.reshape(shot["height"], shot["width"], 4)

    def project(self, lonlat: np.ndarray) -> np.ndarray:
        return np.array(self.page.evaluate("pts => pts.map(([x, y]) => window.__topozarr.project(x, y))",
                                           np.asarray(lonlat).tolist()))

    def query(self, lon: float, lat: float):
        return self.page.evaluate("([x, y]) => window.__topozarr.query(x, y)", [lon, lat])["value"]

    def errors(self) -> list[tuple[str, str]]:
        bad = [(t, m) for t, m in self.console if t in ("error", "warning", "pageerror")
               and not any(k in m for k in KNOWN_HARMLESS)]
        return bad + [("hook", e) for e in self.page.evaluate("window.__topozarr.errors")]


@pytest.fixture
def view(browser, request):
    opened: list[Viewer] = []

    def open_view(pyramid_path: Path | str, query: str = "", icechunk: bool = False, branch: str = "main"):
        ctx = serving(open_pyramid(str(pyramid_path), icechunk=icechunk, branch=branch))
        server = ctx.__enter__()
        request.addfinalizer(lambda: ctx.__exit__(None, None, None))
        v = Viewer(browser, server, query)
        opened.append(v)
        return v

    yield open_view
    for v in opened:
        v.page.close()


# ---------------------------------------------------------------- checks -------------------------

class Grid:
    """Where a dataset's blocks and edges are, in its CRS and in longitude/latitude."""

    def __init__(self, ds: xr.Dataset, x_dim: str, y_dim: str, crs: str):
        self.ds, self.x_dim, self.y_dim = ds, x_dim, y_dim
        self.to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        x, y = ds[x_dim].values, ds[y_dim].values
        self.step = float(x[1] - x[0])
        self.xmin, self.xmax = x[0] - self.step / 2, x[-1] + self.step / 2
        self.ymax, self.ymin = y[0] + self.step / 2, y[-1] - self.step / 2

    def lonlat(self, x, y) -> np.ndarray:
        lon, lat = self.to_lonlat.transform(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        return np.stack([np.atleast_1d(lon), np.atleast_1d(lat)], axis=-1)

    def block_centres(self) -> tuple[np.ndarray, np.ndarray]:
        ny, nx = self.ds.sizes[self.y_dim], self.ds.sizes[self.x_dim]
        cy, cx = np.meshgrid(np.arange(BLOCK // 2, ny, BLOCK), np.arange(BLOCK // 2, nx, BLOCK), indexing="ij")
        return self.ds[self.x_dim].values[cx.ravel()], self.ds[self.y_dim].values[cy.ravel()]

    def expected_level(self, zoom: float, factors: list[int], lat: float) -> int:
        """The coarsest level with at least ``256 * 2**zoom`` cells across the world (longitude
        spacing at the data's middle row): zarr-layer's rule, which on maplibre's 512-pixel world
        means cells of at most two screen pixels."""
        lon_a = self.lonlat(self.xmin, (self.ymin + self.ymax) / 2)[0, 0]
        lon_b = self.lonlat(self.xmax, (self.ymin + self.ymax) / 2)[0, 0]
        deg_per_cell = abs(lon_b - lon_a) / self.ds.sizes[self.x_dim]
        deg_per_pixel = 360 / (256 * 2 ** zoom)
        fine_enough = [i for i, f in enumerate(factors) if deg_per_cell * f <= deg_per_pixel * (1 + 1e-9)]
        return max(fine_enough) if fine_enough else 0


def level_values(ds: xr.Dataset, factor: int, x_dim: str, y_dim: str, time_index: int | None) -> xr.DataArray:
    da = ds["v"] if time_index is None else ds["v"].isel(time=time_index)
    if factor == 1:
        return da
    return da.coarsen({x_dim: factor, y_dim: factor}, boundary="trim").mean()


def check_pixels(v: Viewer, grid: Grid, factor: int, time_index: int | None = None, min_samples: int = 4) -> int:
    """Every block centre on screen shows the grey of the stored value there (quantisation: 3 levels)."""
    img = v.pixels()
    ref = level_values(grid.ds, factor, grid.x_dim, grid.y_dim, time_index)
    xs, ys = grid.block_centres()
    screen = v.project(grid.lonlat(xs, ys))
    checked = 0
    for (px, py), x, y in zip(screen, xs, ys):
        col, row = int(round(px)), int(round(py))
        if not (2 <= col < VIEW[0] - 2 and 2 <= row < VIEW[1] - 2):
            continue
        r, g, b, _ = img[row, col].astype(int)
        want = float(ref.sel({grid.x_dim: x, grid.y_dim: y}, method="nearest"))
        assert (r, g, b) != MAGENTA, f"no data drawn at block centre {x:.6g},{y:.6g} (pixel {col},{row})"
        assert max(abs(r - g), abs(g - b)) <= 2, f"not a grey at {col},{row}: {(r, g, b)}"
        assert abs(g - want) <= 3, f"pixel {col},{row} grey {g} but stored value {want} at {x:.6g},{y:.6g}"
        checked += 1
    assert checked >= min_samples, f"only {checked} block centres on screen"
    return checked


def check_edges(v: Viewer, grid: Grid) -> None:
    """The data's west/east edges (at its middle row) and north/south edges (at its middle column) sit
    within one pixel of where the map projects the grid's edges."""
    img = v.pixels()
    is_data = ~np.all(img[..., :3] == MAGENTA, axis=-1)
    xm, ym = (grid.xmin + grid.xmax) / 2, (grid.ymin + grid.ymax) / 2
    (w, _), (e, _), (_, n), (_, s), (cx, cy) = v.project(grid.lonlat(
        [grid.xmin, grid.xmax, xm, xm, xm], [ym, ym, grid.ymax, grid.ymin, ym]))
    row, col = is_data[int(round(cy))], is_data[:, int(round(cx))]
    assert row.any() and col.any(), "no data on the middle row/column"
    cols, rows = np.flatnonzero(row), np.flatnonzero(col)
    # the first data pixel's centre is at index + 0.5; the edge lies within a pixel of it
    for got, want, what in ((cols[0], w, "west"), (cols[-1] + 1, e, "east"), (rows[0], n, "north"),
                            (rows[-1] + 1, s, "south")):
        assert abs(got - want) <= 1.0, f"{what} edge drawn at pixel {got}, the grid's is at {want:.2f}"


def boundary_offset(v: Viewer, grid: Grid, x: float, y: float) -> tuple[float, float]:
    """Screen offset (columns, rows; + is east/south) of the block corner drawn nearest to where the
    map projects the corner ``(x, y)`` (the view is centred on it)."""
    img = v.pixels()
    (px, py), = v.project(grid.lonlat(x, y))
    col, row = int(round(px)), int(round(py))
    across = np.flatnonzero(np.diff(img[row + 3, :, 1].astype(int)) != 0) + 1  # a row inside the block below
    down = np.flatnonzero(np.diff(img[:, col + 3, 1].astype(int)) != 0) + 1
    return (float(across[np.argmin(abs(across - px))] - px), float(down[np.argmin(abs(down - py))] - py))


# ---------------------------------------------------------------- tests --------------------------

def test_epsg4326_2d_levels_follow_the_zoom_and_pixels_match(tmp_path, view):
    ds = block_raster(512, 1024, x0=0.0, y0=45.0, step=90 / 1024, crs="EPSG:4326", x_dim="lon", y_dim="lat")
    path = write_pyramid(ds, tmp_path / "p4326.zarr", "lon", "lat", levels=4)
    grid = Grid(ds, "lon", "lat", "EPSG:4326")
    factors = [1, 2, 4, 8]
    v = view(path, "?center=45,22.5&zoom=0.5")
    seen = set()
    for zoom in (0.5, 1.5, 2.5, 3.5, 5.0):  # the last: level 0 again, magnified, nothing new to fetch
        if zoom != 0.5:
            v.jump(45, 22.5, zoom)
        want = grid.expected_level(zoom, factors, 22.5)
        fetched = v.levels_fetched()
        assert fetched == {want} or (zoom == 5.0 and fetched <= {want}), \
            f"zoom {zoom}: fetched levels {fetched}, expected {want}"
        check_pixels(v, grid, factors[want])
        if zoom <= 2.5:  # the whole grid is on screen
            check_edges(v, grid)
        seen.add(want)
    assert seen == {0, 1, 2, 3}
    corner = (16.875, 33.75)  # a block corner (the grid's cells are 90/1024 degrees)
    v.jump(*corner, 10.0)
    dx, dy = boundary_offset(v, grid, *corner)
    assert abs(dx) <= 1 and abs(dy) <= 1, (dx, dy)  # ~180 m per pixel: exact at high zoom too
    for lon, lat in ((10.0, 40.0), (80.0, 5.0), (45.3, 22.1)):
        x = ds["v"].sel(lon=lon, lat=lat, method="nearest")
        assert v.query(lon, lat) == pytest.approx(float(x))
    # the value under the cursor, as the panel shows it
    v.jump(45.0, 22.5, 3.5)
    (px, py), = v.project([[40.0, 30.0]])
    v.page.mouse.move(px, py)
    v.page.wait_for_function("document.getElementById('value').textContent !== '–'", timeout=30_000)
    shown = float(v.page.inner_text("#value"))
    lon, lat = v.page.evaluate("([x, y]) => window.__topozarr.unproject(x, y)", [px, py])
    assert shown == pytest.approx(float(ds["v"].sel(lon=lon, lat=lat, method="nearest")))
    assert v.errors() == [], v.errors() + [("requested", k) for k in sorted(set(v.server.requested))][:60]


def test_epsg4326_3d_index_and_value_selectors(tmp_path, view):
    """A time slider's index and value selectors draw the selected step; the value selector needs
    ``/time`` at the root, which the pyramid holds (its copy of level 0's)."""
    ds = block_raster(256, 512, x0=-20.0, y0=50.0, step=40 / 512, crs="EPSG:4326", x_dim="lon", y_dim="lat", nt=3)
    ds = ds.assign_coords(time=np.array(["2021-03-01", "2021-03-04", "2021-03-15"], dtype="datetime64[ns]"))
    path = write_pyramid(ds, tmp_path / "p3d.zarr", "lon", "lat", levels=3)
    grid = Grid(ds, "lon", "lat", "EPSG:4326")
    info = open_pyramid(str(path)).info()
    stored_times = info["coordinates"]["time"]
    assert stored_times[2] != 2  # a value selector that fell back to "value as index" would show nothing
    for query in ("?selector=index&time=2", "?time=2"):
        v = view(path, query + "&center=0,40&zoom=2")
        want = grid.expected_level(2, [1, 2, 4], 40)
        check_pixels(v, grid, [1, 2, 4][want], time_index=2)
        check_edges(v, grid)
        v.page.locator("#time").fill("1")  # the slider (debounced) sets the selector
        v.page.wait_for_timeout(400)
        v.settle()
        assert v.page.inner_text("#time-label") == f"time = {stored_times[1]} ({info['units']['time']})"
        check_pixels(v, grid, [1, 2, 4][want], time_index=1)
        assert v.errors() == []
    assert "time/zarr.json" in v.server.requested  # zarr-layer looked for the root copy


class StaticFiles(SimpleHTTPRequestHandler):
    """A plain static file server, as a bucket or nginx is: files as they are, one byte range per
    request, CORS. Knows nothing of Zarr: no alias, no ``info.json`` of its own."""

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802
        key = unquote(urlsplit(self.path).path).lstrip("/")
        if key.startswith("data/"):
            self.server.requested.append(key[len("data/"):])
        path = Path(self.translate_path(self.path))
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
        if not match or not path.is_file():
            self.server.served.append((key, 200 if path.exists() else 404))
            return super().do_GET()
        raw = path.read_bytes()
        first, last = match.groups()
        start, end = (len(raw) - int(last), len(raw)) if not first else (int(first), len(raw) if not last
                                                                          else int(last) + 1)
        start, end = max(0, start), min(end, len(raw))
        self.server.served.append((key, 206))
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(raw)}")
        self.end_headers()
        self.wfile.write(raw[start:end])


@pytest.fixture
def static_site(tmp_path):
    """Serve a folder with a plain static server: the bundled page (its files copied), the page's
    ``info.json`` written once as a deploy step would, and the pyramid folder itself as ``data``."""
    servers = []

    def serve(pyramid: Path):
        site = tmp_path / f"site-{len(servers)}"
        shutil.copytree(STATIC_DIR, site)
        (site / "info.json").write_text(json.dumps(open_pyramid(str(pyramid)).info(), default=str))
        (site / "data").symlink_to(pyramid.resolve(), target_is_directory=True)
        handler = lambda *a, **kw: StaticFiles(*a, directory=str(site), **kw)  # noqa: E731
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.requested, httpd.served = deque(maxlen=10_000), []
        httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return httpd

    yield serve
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_value_selectors_work_from_a_plain_static_server(tmp_path, browser, static_site):
    """The pyramid's own ``/time`` (the root copy of level 0's) is what zarr-layer's value selector
    reads: served by a plain static file server, the selected steps are drawn. The same pyramid
    without its root copy (as written before root copies existed) draws nothing there."""
    ds = block_raster(256, 512, x0=-20.0, y0=50.0, step=40 / 512, crs="EPSG:4326", x_dim="lon", y_dim="lat", nt=3)
    ds = ds.assign_coords(time=np.array(["2021-03-01", "2021-03-04", "2021-03-15"], dtype="datetime64[ns]"))
    path = write_pyramid(ds, tmp_path / "p3d.zarr", "lon", "lat", levels=3)
    assert (path / "time" / "zarr.json").read_bytes() == (path / "0" / "time" / "zarr.json").read_bytes()
    grid = Grid(ds, "lon", "lat", "EPSG:4326")
    want = [1, 2, 4][grid.expected_level(2, [1, 2, 4], 40)]
    stored_times = open_pyramid(str(path)).info()["coordinates"]["time"]
    assert stored_times[2] != 2  # a value selector that fell back to "value as index" would show nothing
    server = static_site(path)
    v = Viewer(browser, server, "?time=2&center=0,40&zoom=2")  # the page's default: a value selector
    try:
        assert v.page.evaluate("window.__topozarr.options.selector") == {"time": stored_times[2]}
        check_pixels(v, grid, want, time_index=2)
        check_edges(v, grid)
        v.page.evaluate("window.__topozarr.setTime(1)")
        v.settle()
        check_pixels(v, grid, want, time_index=1)
        assert v.errors() == []
        assert ("data/time/zarr.json", 200) in server.served and any(
            k.startswith("data/time/c/") and code in (200, 206) for k, code in server.served)
    finally:
        v.page.close()
    # negative control: the same pyramid without the root copy, from the same kind of server
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    shutil.rmtree(old / "time")
    bare = static_site(old)
    v = Viewer(browser, bare, "?time=2&center=0,40&zoom=2", settle=False)  # it never settles: it fails
    try:
        for _ in range(600):  # zarr-layer takes the value for an index when it finds no /time
            if any("index out of bounds for dimension with length 3" in m for t, m in v.console if t == "error"):
                break
            v.page.wait_for_timeout(100)
        assert any("index out of bounds" in m for t, m in v.console if t == "error"), v.console[-5:]
        assert ("data/time/zarr.json", 404) in bare.served
        with pytest.raises(AssertionError, match="no data drawn"):
            check_pixels(v, grid, want, time_index=2)
    finally:
        v.page.close()


def test_epsg3857_all_blocks_drawn_with_the_proj4_hint(tmp_path, view):
    ds = block_raster(512, 1024, x0=-2.0e6, y0=6.0e6, step=4.0e6 / 1024, crs="EPSG:3857", x_dim="x", y_dim="y")
    path = write_pyramid(ds, tmp_path / "p3857.zarr", "x", "y", levels=4)
    grid = Grid(ds, "x", "y", "EPSG:3857")
    factors = [1, 2, 4, 8]
    centre = grid.lonlat(0.0, 5.0e6)[0]
    v = view(path, f"?center={centre[0]},{centre[1]}&zoom=3")
    for zoom in (3.0, 4.0):
        if zoom != 3.0:
            v.jump(*centre, zoom)
        want = grid.expected_level(zoom, factors, centre[1])
        assert v.levels_fetched() == {want}
        assert check_pixels(v, grid, factors[want]) == 16 * 8  # every block, not one region per level
        if zoom == 3.0:  # the whole grid is on screen
            check_edges(v, grid)
    assert v.errors() == []
    # without the hint zarr-layer 0.5.0 draws only part of it (it compares degrees with metres)
    bare = view(path, f"?center={centre[0]},{centre[1]}&zoom=4&hints=0")
    with pytest.raises(AssertionError, match="no data drawn"):
        check_pixels(bare, grid, factors[grid.expected_level(4.0, factors, centre[1])])


def test_projected_utm_dem_sits_where_its_coordinates_say(tmp_path, view):
    ds = block_raster(512, 512, x0=492_000.0, y0=3_770_000.0, step=30.0, crs="EPSG:32616", x_dim="x", y_dim="y")
    path = write_pyramid(ds, tmp_path / "dem.zarr", "x", "y", levels=3)
    grid = Grid(ds, "x", "y", "EPSG:32616")
    factors = [1, 2, 4]
    centre = grid.lonlat(499_680.0, 3_762_320.0)[0]
    v = view(path, f"?center={centre[0]},{centre[1]}&zoom=10")
    for zoom in (10.0, 11.0, 12.0):
        if zoom != 10.0:
            v.jump(*centre, zoom)
        want = grid.expected_level(zoom, factors, centre[1])
        assert v.levels_fetched() == {want}, (zoom, v.levels_fetched(), want)
        check_pixels(v, grid, factors[want])
        if zoom == 10.0:
            check_edges(v, grid)
    # zarr-layer's proj4 path draws a little south of true (measured ~100-200 m in Web-Mercator metres
    # at these latitudes, in software WebGL): under a pixel up to zoom 10 (checked above), bounded here
    corner = (492_000.0 + 128 * 30.0, 3_770_000.0 - 128 * 30.0)
    v.jump(*grid.lonlat(*corner)[0], 14.0)
    dx, dy = boundary_offset(v, grid, *corner)
    metres_per_pixel = 2 * 20037508.34 / (512 * 2**14)
    assert abs(dx) <= 1 and 0 <= dy * metres_per_pixel <= 250, (dx, dy)
    x, y = 493_000.0, 3_769_000.0
    lon, lat = grid.lonlat(x, y)[0]
    assert v.query(lon, lat) == pytest.approx(float(ds["v"].sel(x=x, y=y, method="nearest")))
    assert v.errors() == []


def test_icechunk_branch_is_drawn(tmp_path, view):
    import icechunk

    ds = block_raster(256, 512, x0=-20.0, y0=50.0, step=40 / 512, crs="EPSG:4326", x_dim="lon", y_dim="lat")
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    repo.create_branch("preview", repo.lookup_branch("main"))
    session = repo.writable_session("preview")
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat",
                   layer_hints={"v": ZarrLayerVarConfig(colormap="greys", clim=[0, 255])}).write(session.store)
    session.commit("pyramid")
    grid = Grid(ds, "lon", "lat", "EPSG:4326")
    v = view(tmp_path / "repo", "?center=0,40&zoom=2", icechunk=True, branch="preview")
    check_pixels(v, grid, [1, 2, 4][grid.expected_level(2, [1, 2, 4], 40)])
    assert v.errors() == []


SECRET = "topozarrPreviewSecretValue0123456789"


def test_s3_pyramid_is_drawn_and_credentials_stay_in_the_server(tmp_path, view, s3_env, s3_prefix, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto takes any key; this one must never be served
    ds = block_raster(256, 512, x0=-20.0, y0=50.0, step=40 / 512, crs="EPSG:4326", x_dim="lon", y_dim="lat")
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat",
                   layer_hints={"v": ZarrLayerVarConfig(colormap="greys", clim=[0, 255])}).write(url)
    grid = Grid(ds, "lon", "lat", "EPSG:4326")
    v = view(url, "?center=0,40&zoom=2")
    check_pixels(v, grid, [1, 2, 4][grid.expected_level(2, [1, 2, 4], 40)])
    assert v.errors() == []
    seen = v.page.evaluate("""async () => {
        const urls = [...window.__topozarr.fetched, location.href + 'info.json', location.href + 'data/zarr.json',
                      location.href + 'data/0/v/zarr.json', location.href + 'data/nope/zarr.json']
        const bodies = await Promise.all(urls.slice(-40).map(async u => (await fetch(u)).text()))
        return JSON.stringify({urls, bodies, html: document.documentElement.outerHTML})
    }""")
    assert SECRET not in seen and s3_env.access_key_id not in {u.split("/")[2] for u in v.page.evaluate(
        "window.__topozarr.fetched")}
    assert all(u.startswith(v.server.url) for u in v.page.evaluate("window.__topozarr.fetched"))


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


def test_preview_refuses_what_is_not_a_published_pyramid(tmp_path):
    from flows.preview.pyramid_store import PreviewError

    with pytest.raises(PreviewError, match="has no root zarr.json"):
        open_pyramid(str(tmp_path))
    (tmp_path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                    "attributes": {"topozarr:status": "incomplete"}}))
    with pytest.raises(PreviewError, match="not a published pyramid: it is incomplete"):
        open_pyramid(str(tmp_path))
    with pytest.raises(PreviewError, match="cannot open PYRAMID"):
        open_pyramid(str(tmp_path / "no-repo"), icechunk=True)


def test_root_viewer_hints_validate_against_the_schemas(tmp_path):
    from tests.conftest import validate_conventions

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


def test_cli_preview_prints_the_url_and_serves(plain_server, tmp_path):
    import subprocess
    import sys

    _, path = plain_server
    cli = [sys.executable, "-m", "flows.cli", "preview"]
    bad = subprocess.run(cli + [str(tmp_path / "nothing-here"), "--port", "0"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "nothing-here" in bad.stderr
    if not (STATIC_DIR / "index.html").exists():
        pytest.skip("the preview page is not built (make)")
    proc = subprocess.Popen(cli + [str(path), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        status, _, body = fetch(url + "data/zarr.json")
        assert status == 200 and json.loads(body)["attributes"]["multiscales"]["layout"]
        assert b"app.js" in fetch(url)[2]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
