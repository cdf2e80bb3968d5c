"""Quicklook PNGs: pixels against xarray.coarsen of the source, the colormap's published anchor
colours, transparency of NaN, north up; the build/update flows' image artifact; and the artifact
shown in the real Prefect UI (a `prefect server` started with infra/, headless Chromium)."""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import icechunk
import numpy as np
import pytest

from tests.conftest import coarsen_reference, make_raster
from topozarr_core import ZarrLayerVarConfig, create_pyramid
from topozarr_core.viewer import colormaps
from topozarr_core.viewer.quicklook import render_quicklook

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# -- an independent PNG decoder (all five filter types) -------------------------------------------

def decode_png(data: bytes) -> np.ndarray:
    """(h, w, 4) uint8 RGBA of an 8-bit RGBA or RGB PNG; checks signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    w, h, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 4 if colour == 6 else 3
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + w * bpp)
    out = np.zeros((h, w * bpp), dtype=np.int32)
    prev = np.zeros(w * bpp, dtype=np.int32)
    for r in range(h):
        ftype, line = raw[r, 0], raw[r, 1:].astype(np.int32)
        cur = np.zeros_like(line)
        for i in range(len(line)):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + pred) & 0xFF
        out[r], prev = cur, cur
    img = out.astype(np.uint8).reshape(h, w, bpp)
    if bpp == 3:
        img = np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], axis=2)
    return img


def expected_rgba(values: np.ndarray, table: np.ndarray, clim: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest acceptable RGB (one LUT step either way for float32 vs float64 rounding)
    and the alpha of a north-up reference field."""
    t = np.clip((np.nan_to_num(values, nan=clim[0]) - clim[0]) / (clim[1] - clim[0]), 0, 1) * 255
    idx = np.rint(t).astype(int)
    near = np.stack([table[np.clip(idx + d, 0, 255)] for d in (-1, 0, 1)]).astype(int)
    alpha = np.where(np.isfinite(values), 255, 0).astype(np.uint8)
    return near, alpha


def assert_pixels(img: np.ndarray, north_up_ref: np.ndarray, table: np.ndarray, clim) -> None:
    near, alpha = expected_rgba(north_up_ref, table, clim)
    assert img.shape == north_up_ref.shape + (4,)
    np.testing.assert_array_equal(img[..., 3], alpha)
    shown = alpha == 255
    rgb = img[..., :3].astype(int)
    ok = np.any(np.all(near == rgb[None], axis=-1), axis=0)
    assert ok[shown].all(), f"{(~ok[shown]).sum()} pixels differ from the colormap of the reference"
    assert (img[~shown] == 0).all(), "transparent pixels are transparent black"


# -- the colormap table ---------------------------------------------------------------------------

def test_colormap_anchor_colours():
    """Ends and middles against matplotlib's published values (viridis(0.5) = #21918c)."""
    v = colormaps.lut("viridis")
    assert v.shape == (256, 3) and v.dtype == np.uint8
    assert tuple(v[0]) == (68, 1, 84) and tuple(v[255]) == (253, 231, 37)
    assert np.abs(v[128].astype(int) - (33, 145, 140)).max() <= 3
    assert tuple(colormaps.lut("magma")[0]) == (0, 0, 4) and tuple(colormaps.lut("magma")[255]) == (252, 253, 191)
    assert tuple(colormaps.lut("Blues")[255]) == (8, 48, 107)  # ColorBrewer Blues-9 darkest
    np.testing.assert_array_equal(colormaps.lut("blues_r"), colormaps.lut("blues")[::-1])
    assert (np.diff(colormaps.lut("Greys").astype(int), axis=0) <= 0).all()  # monotone white -> black
    assert [tuple(colormaps.lut("gray")[i]) for i in (0, 1, 128, 255)] == [(0, 0, 0), (1, 1, 1), (128,) * 3, (255,) * 3]
    # CarbonPlan's maps (dark mode) as @carbonplan/colormaps 4.0.0 makes them: from its background colour
    for name, last in (("warm", (0xdc, 0xc9, 0x63)), ("greys", (0x9c, 0x9c, 0x9c))):
        assert tuple(colormaps.lut(name)[0]) == (0x1b, 0x1e, 0x23) and tuple(colormaps.lut(name)[255]) == last
    # as written first, then case-insensitively (CarbonPlan's lowercase names first); aliases; _r
    assert [colormaps.canonical(n) for n in ("blues", "Blues", "BLUES", "rdbu_r", "grey", "Turbo")] == [
        ("blues", False), ("Blues", False), ("blues", False), ("RdBu", True), ("gray", False), ("turbo", False)]
    assert {"warm", "earth", "fire", "viridis", "RdBu", "coolwarm", "terrain", "jet", "tab10"} <= set(colormaps.available())
    with pytest.raises(ValueError, match=r"colormap 'nope' is not known; choose one of \["):
        colormaps.lut("nope")


# -- the PNG --------------------------------------------------------------------------------------

@pytest.mark.parametrize("descending_y", [True, False])
def test_png_matches_coarsened_source_north_up(tmp_path, descending_y):
    ds = make_raster(ny=120, nx=160, nt=3, nan_fraction=0.05, descending_y=descending_y)
    hints = {"air": ZarrLayerVarConfig(colormap="blues", clim=[235, 265])}
    create_pyramid(ds, levels=3, x_dim="lon", y_dim="lat", layer_hints=hints).write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"))
    assert (look.variable, look.level, look.colormap, look.clim) == ("air", 2, "blues", (235.0, 265.0))
    assert look.selection == {"time": 0}
    img = decode_png(look.png)
    assert img.shape == (30, 40, 4) and (look.width, look.height) == (40, 30)
    ref = coarsen_reference(ds.isel(time=0), "air", 4, "mean")
    north_up = ref if descending_y else ref[::-1]
    assert_pixels(img, north_up, colormaps.lut("blues"), (235, 265))
    # the source's NaN block is its first rows and columns: north-west when y descends, else south-west
    corner_row = 0 if descending_y else img.shape[0] - 1
    assert img[corner_row, 0, 3] == 0 and img[img.shape[0] - 1 - corner_row, 0, 3] == 255
    # clipping: the field spans more than the hinted clim, so both ends of the map are used
    assert np.nanmin(north_up) < 235 and np.nanmax(north_up) > 265
    opaque = img[img[..., 3] == 255][:, :3]
    blues = colormaps.lut("blues")
    assert (opaque == blues[0]).all(axis=1).any() and (opaque == blues[255]).all(axis=1).any()


def test_defaults_robust_clim_viridis_and_first_time_step(tmp_path):
    ds = make_raster(ny=64, nx=96, nt=2, nan_fraction=0.1)
    ds["air"][1] = 0.0  # a different second step: the quicklook must show the first one
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"))
    ref = coarsen_reference(ds.isel(time=0), "air", 2, "mean")
    lo, hi = np.percentile(ref[np.isfinite(ref)], [2, 98])
    assert look.colormap == "viridis"
    np.testing.assert_allclose(look.clim, (lo, hi), rtol=1e-5)
    assert_pixels(decode_png(look.png), ref, colormaps.lut("viridis"), look.clim)


def test_explicit_level_variable_and_integer_fill_values_are_transparent(tmp_path):
    ds = make_raster(ny=64, nx=64, dtype="uint16")
    ds["air"] = ds["air"].where(ds["lon"] > -50, 0).astype("uint16")
    ds["air"].attrs["_FillValue"] = 0  # declared nodata (an attribute, as the pyramid's readers see it)
    ds["other"] = ds["air"] * 0 + 7
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat", method="nearest").write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"), variable="air", level=0, colormap="greys", clim=(200, 300))
    img = decode_png(look.png)
    assert img.shape == (64, 64, 4)
    ref = np.where(ds["air"].values == 0, np.nan, ds["air"].values.astype("f8"))
    assert_pixels(img, ref, colormaps.lut("greys"), (200, 300))
    assert (img[:, 0, 3] == 0).all() and (img[:, -1, 3] == 255).all()


def test_constant_and_empty_fields(tmp_path):
    ds = make_raster(ny=32, nx=32)
    ds["air"][:] = 5.0
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat").write(tmp_path / "c.zarr")
    img = decode_png(render_quicklook(str(tmp_path / "c.zarr")).png)
    assert (img[..., :3] == colormaps.lut("viridis")[128]).all() and (img[..., 3] == 255).all()
    ds["air"][:] = np.nan
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat").write(tmp_path / "e.zarr")
    look = render_quicklook(str(tmp_path / "e.zarr"))
    assert look.clim is None and (decode_png(look.png) == 0).all()


def test_large_levels_are_subsampled(tmp_path):
    ds = make_raster(ny=100, nx=150)
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"), max_side=50)
    assert look.step == 3 and (look.width, look.height) == (50, 34)
    ref = ds["air"].values[::3, ::3]
    assert_pixels(decode_png(look.png), ref, colormaps.lut("viridis"), look.clim)


@pytest.mark.parametrize("hint, described, table", [
    ("nope", "viridis (hint 'nope' is not a known colormap)", "viridis"),  # unknown: viridis, and it says so
    ("warm", "warm", "warm"),  # CarbonPlan's, as zarr-layer pages name them
])
def test_hint_colormaps_known_or_unknown(tmp_path, hint, described, table):
    ds = make_raster(ny=32, nx=32)
    hints = {"air": ZarrLayerVarConfig(colormap=hint, clim=[240, 260])}
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat", layer_hints=hints).write(tmp_path / "p.zarr")
    look = render_quicklook(str(tmp_path / "p.zarr"))
    assert look.colormap == described
    assert_pixels(decode_png(look.png), ds["air"].values, colormaps.lut(table), (240, 260))


def test_integer_zeros_without_nodata_are_drawn(tmp_path):
    """An integer variable without ``_FillValue`` has no nodata: its zeros are values (sea level),
    also in a pyramid written when such arrays still had zarr's default fill value 0."""
    ds = make_raster(ny=64, nx=64, dtype="int16")
    ds["air"] = ds["air"].where(ds["lon"] > -50, 0).astype("int16")  # the west: real zeros
    assert "_FillValue" not in ds["air"].encoding and (ds["air"].values == 0).sum() > 500
    path = tmp_path / "p.zarr"
    create_pyramid(ds, levels=1, x_dim="lon", y_dim="lat").write(path)
    ref = ds["air"].values.astype("f8")
    for fill in (-32767, 0):  # as written now; as written before (every chunk is written, so only the doc differs)
        doc = json.loads((path / "0" / "air" / "zarr.json").read_text())
        (path / "0" / "air" / "zarr.json").write_text(json.dumps({**doc, "fill_value": fill}))
        img = decode_png(render_quicklook(str(path), clim=(0, 300)).png)
        assert (img[..., 3] == 255).all(), f"fill_value {fill}: zeros drawn transparent"
        assert_pixels(img, ref, colormaps.lut("viridis"), (0, 300))


def test_bad_requests_name_the_parameter(tmp_path):
    ds = make_raster(ny=32, nx=32)
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(tmp_path / "p.zarr")
    with pytest.raises(ValueError, match=r"variable='temp' is not a gridded variable of the level \(\['air'\]\)"):
        render_quicklook(str(tmp_path / "p.zarr"), variable="temp")
    with pytest.raises(ValueError, match=r"level=5 is not a level of this pyramid \(0\.\.1\)"):
        render_quicklook(str(tmp_path / "p.zarr"), level=5)
    for bad in ((300, 200), (1, 1), (0, float("nan")), "low-high", (1, 2, 3)):
        with pytest.raises(ValueError, match=r"quicklook: clim=.* must be \[min, max\] with finite min < max"):
            render_quicklook(str(tmp_path / "p.zarr"), clim=bad)
    with pytest.raises(ValueError, match="colormap 'jett' is not known"):
        render_quicklook(str(tmp_path / "p.zarr"), colormap="jett")
    ds.to_zarr(tmp_path / "flat.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(ValueError, match="no published pyramid"):
        render_quicklook(str(tmp_path / "flat.zarr"))


def test_icechunk_session_store(tmp_path):
    ds = make_raster(ny=64, nx=64)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(session)
    session.commit("pyramid")
    look = render_quicklook(repo.readonly_session(branch="main").store)
    ref = coarsen_reference(ds, "air", 2, "mean")
    assert_pixels(decode_png(look.png), ref, colormaps.lut("viridis"), look.clim)


def test_s3_target_by_url(tmp_path, s3_env, s3_prefix):
    ds = make_raster(ny=64, nx=64)
    url = f"s3://{s3_env.bucket}/{s3_prefix}/p.zarr"
    create_pyramid(ds, levels=2, x_dim="lon", y_dim="lat").write(url)
    look = render_quicklook(url)
    assert_pixels(decode_png(look.png), coarsen_reference(ds, "air", 2, "mean"), colormaps.lut("viridis"), look.clim)


# -- the flows' artifact --------------------------------------------------------------------------

def _flow_source(tmp_path, nt=2):
    """The first ``nt`` steps of one 3-step raster (a grown source is an update of a shorter one)."""
    ds = make_raster(ny=96, nx=128, nt=3, nan_fraction=0.05).isel(time=slice(0, nt))
    path = tmp_path / f"src{nt}.nc"
    ds.drop_vars("spatial_ref").to_netcdf(path, engine="h5netcdf")
    return ds, str(path)


def _quicklook_artifacts(client, flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    return client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=["pyramid-quicklook"])))


def _png_of(artifact) -> bytes:
    prefix = "data:image/png;base64,"
    assert artifact.type == "image" and artifact.data.startswith(prefix)
    return base64.b64decode(artifact.data[len(prefix):])



def _zoomed(values: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(values, k, axis=0), k, axis=1)


@pytest.mark.parametrize("target_format", ["zarr", "icechunk"])
def test_build_and_update_flows_record_the_quicklook(prefect_harness, tmp_path, target_format):
    from topozarr_flows import BuildParams, UpdateParams, build_pyramid, update_pyramid

    ds2, src2 = _flow_source(tmp_path, nt=2)
    _, src3 = _flow_source(tmp_path, nt=3)
    target = str(tmp_path / ("p.zarr" if target_format == "zarr" else "repo"))
    common = dict(target=target, target_format=target_format)
    state = build_pyramid(BuildParams(source=src2, levels=3, x_dim="lon", y_dim="lat", crs="EPSG:4326", **common),
                          return_state=True)
    assert state.is_completed()
    with prefect_harness.client() as c:
        (art,) = _quicklook_artifacts(c, state.state_details.flow_run_id)
    # the 32x24 coarsest level, enlarged 8x so that the UI (natural size) shows 256x192 px
    assert "air level 2 time[0]: 256x192 px, each cell 8x8 px, colormap viridis" in art.description
    assert art.task_run_id is None, "a flow-run artifact: listed with the run's own artifacts"
    ref = coarsen_reference(ds2.isel(time=0), "air", 4, "mean")
    lo, hi = np.percentile(ref[np.isfinite(ref)], [2, 98])
    assert_pixels(decode_png(_png_of(art)), _zoomed(ref, 8), colormaps.lut("viridis"), (lo, hi))

    state = update_pyramid(UpdateParams(source=src3, **common), return_state=True)
    assert state.is_completed()
    with prefect_harness.client() as c:
        (art,) = _quicklook_artifacts(c, state.state_details.flow_run_id)
    assert decode_png(_png_of(art)).shape == (192, 256, 4)


def test_a_failed_quicklook_warns_and_the_run_completes(prefect_harness, tmp_path, monkeypatch, caplog):
    import topozarr_flows.runs.artifacts
    from topozarr_flows import BuildParams, build_pyramid

    def broken(*a, **k):
        raise ValueError("quicklook: the level has no variable along both 'lat' and 'lon'")

    monkeypatch.setattr(topozarr_flows.runs.artifacts, "render_quicklook", broken)
    _, src = _flow_source(tmp_path)
    state = build_pyramid(BuildParams(source=src, target=str(tmp_path / "p.zarr"), levels=2, x_dim="lon",
                                      y_dim="lat", crs="EPSG:4326"), return_state=True)
    assert state.is_completed()
    assert any("no quicklook: ValueError: quicklook: the level has no variable" in r.getMessage()
               for r in caplog.records)
    with prefect_harness.client() as c:
        assert _quicklook_artifacts(c, state.state_details.flow_run_id) == []


# -- the real UI ----------------------------------------------------------------------------------

def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def browser():
    """Headless system Chromium through playwright (never a downloaded browser). Skipped when
    either is missing, except under CI (CI=true), where that is a failure."""
    missing = [what for what, ok in (("chromium", os.path.exists(CHROMIUM)), ("playwright", _has_playwright()))
               if not ok]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{' and '.join(missing)} missing under CI (apt-get install -y chromium; "
                        "pip install -c constraints.txt -e '.[test]')")
        pytest.skip(f"{' and '.join(missing)} not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def prefect_server(tmp_path):
    """A `prefect server` with its UI, started and stopped with infra/prefect-server.sh on a free
    port; yields its address, the environment that reaches it and a runner of commands in it."""
    from tests.fixtures_services import _free_port

    port = _free_port()
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TOPOZARR_"))}
    env.update(VENV=sys.prefix, TOPOZARR_STATE=str(state), PREFECT_PORT=str(port),
               PREFECT_HOME=str(state / "prefect-home"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOCAL_STORAGE_PATH=str(tmp_path / "results"))

    def sh(args: list[str], timeout: float = 150) -> str:
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout

    sh(["infra/prefect-server.sh", "start"])
    try:
        yield f"http://127.0.0.1:{port}", env, sh
    finally:
        sh(["infra/prefect-server.sh", "stop"])


#: The pixels of an <img> as the browser decoded them (RGBA, row-major), through a canvas.
_IMG_PIXELS = """img => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const r = img.getBoundingClientRect();
  return {width: img.naturalWidth, height: img.naturalHeight, shown: [r.width, r.height],
          pixels: Array.from(ctx.getImageData(0, 0, c.width, c.height).data)};
}"""


def _open_quicklook_from_artifacts_tab(page, base: str, run_id, artifact_id, ui: str, shots: Path) -> dict:
    """Open the run's Artifacts tab in the classic (v1) or the new (v2) UI, find the quicklook's
    card and follow it to the artifact's page (in both UIs of Prefect 3.9 the card opens it; the v2 page
    is titled with the key and the artifact's id); return what its <img> shows. The tab lists cards
    only: no UI shows an image in the tab itself."""
    prefix = "/v2" if ui == "v2" else ""
    page.goto(f"{base}{prefix}/runs/flow-run/{run_id}")
    if ui == "v2":
        page.get_by_role("tab", name="Artifacts").click(timeout=60_000)
    else:
        page.get_by_text("Artifacts", exact=True).first.click(timeout=60_000)
    card = page.get_by_text("pyramid-quicklook", exact=True).first
    card.wait_for(timeout=60_000)
    page.get_by_text("colormap viridis").first.wait_for(timeout=30_000)  # the card shows the description
    page.screenshot(path=str(shots / f"{ui}-artifacts-tab.png"), full_page=True)
    card.click()
    if ui == "v2":
        page.get_by_text(str(artifact_id), exact=True).first.wait_for(timeout=60_000)  # this run's artifact
    img = page.locator("img[src^='data:image/png;base64,']").first
    img.wait_for(timeout=60_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=30_000)
    page.screenshot(path=str(shots / f"{ui}-artifact.png"), full_page=True)
    return {**img.evaluate(_IMG_PIXELS), "src": img.get_attribute("src")}


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("ui", ["v1", "v2"])
def test_quicklook_is_shown_in_the_prefect_ui(browser, prefect_server, tmp_path, ui):
    """A build run by the CLI against a real server; its quicklook found through the run's
    Artifacts tab and shown with exactly the PNG's size and pixels."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base, env, sh = prefect_server
    _, src = _flow_source(tmp_path)
    sh([f"{sys.prefix}/bin/topozarr-flows", "build", src, str(tmp_path / "p.zarr"), "--levels", "3",
        "--x-dim", "lon", "--y-dim", "lat", "--crs", "EPSG:4326"], timeout=240)
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as c:
            (run,) = c.read_flow_runs()
            assert run.state.is_completed()
            (art,) = _quicklook_artifacts(c, run.id)
    expected = decode_png(_png_of(art))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    shown = _open_quicklook_from_artifacts_tab(page, base, run.id, art.id, ui, tmp_path)
    for shot in ("artifacts-tab", "artifact"):  # the screenshots: PNGs of the whole page
        data = (tmp_path / f"{ui}-{shot}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width == 1400 and height >= 1000
    assert shown["src"] == art.data
    assert (shown["width"], shown["height"]) == (expected.shape[1], expected.shape[0]) == (256, 192)
    assert min(shown["shown"]) > 0, "the image takes no room on the page"
    pixels = np.array(shown["pixels"], dtype=np.uint8).reshape(expected.shape)
    np.testing.assert_array_equal(pixels, expected)
