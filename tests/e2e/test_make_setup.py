"""``make demo`` / ``make test`` need only make and Python 3.12 (README): node and npm are optional.

With npm on ``PATH`` the set-up also builds the preview page (``npm ci`` + esbuild); without it the
set-up still runs and says how to build the page later, and ``topozarr-flows preview`` says what to run
when the page is missing. ``make -n`` (a dry run into a fresh venv and page path) shows what each
would execute, without executing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _dry_run(tmp_path: Path, target: str, with_npm: bool) -> str:
    bin_dir = tmp_path / ("bin-npm" if with_npm else "bin")
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "make").symlink_to(shutil.which("make"))
    if with_npm:
        (bin_dir / "npm").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "npm").chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/root")}
    done = subprocess.run(["make", "-n", f"VENV={tmp_path}/venv", f"PAGE={tmp_path}/static/app.js", target],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize("target,runs", [("demo", "topozarr-flows demo"), ("test", "-m pytest")])
def test_setup_without_node_skips_the_page_and_says_how_to_build_it(tmp_path, target, runs):
    out = _dry_run(tmp_path, target, with_npm=False)
    assert "pip install" in out and runs in out, out
    assert "npm ci" not in out and "npm run build" not in out, out
    assert "make preview-page" in out, out  # the note the set-up prints


def test_setup_with_npm_builds_the_page(tmp_path):
    out = _dry_run(tmp_path, "demo", with_npm=True)
    assert "npm ci" in out and "npm run build" in out and "pip install" in out, out
    assert "make preview-page" not in out, out


def test_preview_without_the_page_says_what_to_run(tmp_path):
    from topozarr_flows.preview.server import PreviewServer

    with pytest.raises(FileNotFoundError) as info:
        PreviewServer(object(), static_dir=tmp_path)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg and "make preview-page" in msg and "npm" in msg, msg
