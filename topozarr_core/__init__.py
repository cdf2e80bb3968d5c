"""topozarr_core: plan and write multiscale GeoZarr pyramids from xarray datasets.

Pure library: no Prefect imports here. Flows in ``flows/`` wrap it.
"""

from .chunking import VarEncoding
from .flat import attach_geozarr_metadata, recommend_encoding
from .metadata import ZarrLayerVarConfig
from .executor import TileResult, write_tiles
from .plan import Region, RegionPlan
from .planning import CoarseningMethod
from .pyramid import Pyramid, WriteReport, create_pyramid
from .regions import WriteContext
from .tiles import Tile, TilePlan
from .update import PyramidUpdate, UpdateRefused, UpdateReport, plan_update, update_pyramid
from .validate import ValidationReport, validate_pyramid

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
