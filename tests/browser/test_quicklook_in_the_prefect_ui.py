"""The quicklook artifact shown in the real Prefect UI (v1 and v2): a `prefect server` started with
infra/, a build run by the CLI, headless Chromium; the image shows exactly the PNG's size and pixels."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.png import decode_png
from tests.helpers.quicklook_runs import flow_source, png_of, quicklook_artifacts

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# -- the real UI ----------------------------------------------------------------------------------

def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A `prefect server` with its UI, started and stopped with infra/prefect-server.sh on a free
    port; yields its address, the environment that reaches it and a runner of commands in it.
    One for the module: both UIs (v1, v2) are served by the same server."""
    from tests.helpers.services import free_port

    tmp_path = tmp_path_factory.mktemp("prefect-ui-server")
    port = free_port()
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


@pytest.fixture(scope="module")
def built_run(prefect_server, tmp_path_factory):
    """One build run by the CLI against the server (the server's only run), and its quicklook
    artifact: the same run is looked at in both UIs, so it is built once."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base, env, sh = prefect_server
    tmp_path = tmp_path_factory.mktemp("prefect-ui-build")
    _, src = flow_source(tmp_path)
    sh([f"{sys.prefix}/bin/topozarr-flows", "build", src, str(tmp_path / "p.zarr"), "--levels", "3",
        "--x-dim", "lon", "--y-dim", "lat", "--crs", "EPSG:4326"], timeout=240)
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as c:
            runs = c.read_flow_runs()
            arts = quicklook_artifacts(c, runs[0].id) if len(runs) == 1 else []
    return runs, arts


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("ui", ["v1", "v2"])
def test_quicklook_is_shown_in_the_prefect_ui(browser, prefect_server, built_run, tmp_path, ui):
    """A build run by the CLI against a real server; its quicklook found through the run's
    Artifacts tab and shown with exactly the PNG's size and pixels."""
    base, env, sh = prefect_server
    runs, arts = built_run
    (run,) = runs
    assert run.state.is_completed()
    (art,) = arts
    expected = decode_png(png_of(art))
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
