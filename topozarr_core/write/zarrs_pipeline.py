"""zarrs' codec pipeline, importable by name: what ``DataTree.to_zarr`` of :meth:`Pyramid.as_datatree`
encodes local targets with (:func:`topozarr_core.write.codec_pipeline.zarrs_while_opening`).

xarray opens the arrays of ``to_zarr`` itself, so the pipeline is chosen by zarr's config
(``codec_pipeline.path``) while it does, and the arrays carry it to the Dask workers in their
pickles: the class must be importable there by its module path. Its OS errors are Python's
``OSError`` (:func:`topozarr_core.write.codec_pipeline.os_error_of`), as on every write path.
"""

from __future__ import annotations

from typing import Any

import zarr.registry
from zarrs import ZarrsCodecPipeline

from topozarr_core.write.codec_pipeline import os_errors_raised


class OsErrorZarrsPipeline(ZarrsCodecPipeline):
    """zarrs' pipeline whose OS errors are raised as ``OSError``."""

    async def read(self, *args: Any, **kwargs: Any) -> None:
        """zarrs' read, its OS errors raised as ``OSError``."""
        return await os_errors_raised(super().read(*args, **kwargs))

    async def write(self, *args: Any, **kwargs: Any) -> None:
        """zarrs' write, its OS errors raised as ``OSError``."""
        return await os_errors_raised(super().write(*args, **kwargs))


zarr.registry.register_pipeline(OsErrorZarrsPipeline)
#: Its name in zarr's config.
PIPELINE_PATH = f"{OsErrorZarrsPipeline.__module__}.{OsErrorZarrsPipeline.__qualname__}"
