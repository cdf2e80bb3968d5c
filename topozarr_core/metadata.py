"""Where topozarr users find the viewer hint: ``from topozarr.metadata import ZarrLayerVarConfig`` becomes
``from topozarr_core.metadata import ZarrLayerVarConfig`` (also exported by :mod:`topozarr_core`)."""

from topozarr_core.spec.layer_hints import ZarrLayerVarConfig

__all__ = ["ZarrLayerVarConfig"]
