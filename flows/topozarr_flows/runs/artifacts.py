"""The quicklook artifact of a build or update run: the published pyramid's coarsest level as a PNG.

Why an *image* artifact holding a ``data:image/png;base64,...`` URL: Prefect 3.8's UI renders an
image artifact as ``<img src=image_url>`` (both UIs; ``tests/browser/test_quicklook_in_the_prefect_ui.py`` checks it in
the real UI with headless Chromium), so the picture needs no web server of ours; a markdown
artifact with the same inline image is not shown, because the UI's markdown renderer drops
``data:`` URLs. Rendering lives in :mod:`topozarr_core.viewer.quicklook`; this module only reads the
published target and records the artifact. A quicklook that cannot be made (an odd variable, a
target gone) logs a warning and does not fail a run whose pyramid is already published.
"""

from __future__ import annotations

import base64
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_image_artifact

from topozarr_core.store.errors import error_summary, redact
from topozarr_core.store.icechunk_txn import IcechunkTarget
from topozarr_core.store.targets import resolve_store
from topozarr_core.viewer.quicklook import Quicklook, render_quicklook

QUICKLOOK_KEY = "pyramid-quicklook"
#: Longest side of the artifact's image: keeps the artifact (base64 in the API's database) small.
ARTIFACT_MAX_SIDE = 512
#: Least length of its longer side: the UI shows the image at its natural size, so a 32x24 coarsest
#: level is enlarged (whole factor, each cell a square of pixels) to be seen.
ARTIFACT_MIN_SIDE = 256


def published_store(params: Any) -> Any:
    """A read-only store of the published pyramid: the branch of an Icechunk repo, or the target.

    :param params: the flow's parameters (``target``, ``target_format``, ``branch``).
    """
    if params.target_format == "icechunk":
        repo = IcechunkTarget(params.target, params.branch).open_repo(create=False)
        return repo.readonly_session(branch=params.branch).store
    return resolve_store(params.target, read_only=True)


def data_url(png: bytes) -> str:
    """The PNG as a ``data:`` URL.

    :param png: the PNG's bytes.
    """
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def quicklook_artifact(params: Any) -> dict[str, Any] | None:
    """Render the published pyramid's coarsest level and record it as the ``pyramid-quicklook`` artifact.

    A plain function called by the flow, not a task: the artifact then belongs to the flow run and
    the run's Artifacts tab lists it with the run's own artifacts (a coarsest level is small).

    :param params: the flow's parameters.
    """
    logger = get_run_logger()
    try:
        look: Quicklook = render_quicklook(published_store(params), max_side=ARTIFACT_MAX_SIDE,
                                              min_side=ARTIFACT_MIN_SIDE)
    except Exception as err:  # noqa: BLE001 -- the pyramid is published: a missing picture must not fail the run
        logger.warning("no quicklook: %s", redact(error_summary(err)))
        return None
    description = redact(f"{look.describe()} ({params.source} -> {params.target})")
    artifact_id = create_image_artifact(image_url=data_url(look.png), key=QUICKLOOK_KEY, description=description)
    logger.info("quicklook: %s", description)
    return {"artifact_id": str(artifact_id), "width": look.width, "height": look.height,
            "variable": look.variable, "level": look.level}
