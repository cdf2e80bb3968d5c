"""topozarr_core: plan and write multiscale GeoZarr pyramids from xarray datasets.

Pure library: no Prefect imports here. Flows in ``flows/`` wrap it.
"""

from topozarr_core.layout.single_level import attach_geozarr_metadata, recommend_encoding
from topozarr_core.plan.regions import Region, RegionPlan
from topozarr_core.plan.tiles import Tile, TilePlan
from topozarr_core.pyramid import Pyramid, WriteReport, create_pyramid
from topozarr_core.spec.chunking import VarEncoding
from topozarr_core.spec.layer_hints import ZarrLayerVarConfig
from topozarr_core.spec.pyramid_spec import CoarseningMethod
from topozarr_core.update.pyramid_update import (
    PyramidUpdate,
    UpdateRefused,
    UpdateReport,
    plan_update,
    update_pyramid,
)
from topozarr_core.validate.pyramid import ValidationReport, validate_pyramid
from topozarr_core.write.executor import TileResult, write_tiles
from topozarr_core.write.region import WriteContext

__all__ = [
    "create_pyramid",
    "CoarseningMethod",
    "Pyramid",
    "WriteReport",
    "ZarrLayerVarConfig",
    "recommend_encoding",
    "attach_geozarr_metadata",
    "TilePlan",
    "Tile",
    "write_tiles",
    "TileResult",
    "RegionPlan",
    "Region",
    "VarEncoding",
    "WriteContext",
    "validate_pyramid",
    "ValidationReport",
    "update_pyramid",
    "plan_update",
    "PyramidUpdate",
    "UpdateReport",
    "UpdateRefused",
]
