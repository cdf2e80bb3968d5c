"""Display hints for zarr-layer, as the user gives them (``layer_hints=``): checked once, when made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ZarrLayerVarConfig:
    """Per-variable display hints for zarr-layer; they change no data. Positional order
    ``(clim, colormap)`` is topozarr's.

    Frozen and checked when made (topozarr's is a plain dataclass): a reversed or empty ``clim``
    fails here, in one line, instead of drawing nothing in the viewer.

    :param clim: the colour limits ``[min, max]`` with ``min < max``, in data units.
    :param colormap: a colormap name zarr-layer knows (for example ``"viridis"``)."""

    clim: list[float] | None = None
    colormap: str | None = None

    def __post_init__(self) -> None:
        if self.colormap is not None and not isinstance(self.colormap, str):
            raise TypeError(f"colormap must be a string, got {type(self.colormap).__name__}")
        if self.clim is not None:
            clim = list(self.clim)
            if len(clim) != 2 or not all(isinstance(v, (int, float)) for v in clim) or clim[0] >= clim[1]:
                raise ValueError(f"clim must be [min, max] with min < max, got {self.clim!r}")
            object.__setattr__(self, "clim", [float(v) for v in clim])

    def to_json(self) -> dict[str, Any]:
        """The hints as the multiscales metadata stores them: only the fields that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def validate_layer_hints(hints: dict[str, ZarrLayerVarConfig] | None, variables: list[str]) -> None:
    """Hints must name written variables and be ZarrLayerVarConfig objects.

    :param hints: ``{variable: ZarrLayerVarConfig}``, or None.
    :param variables: the gridded variables' names.
    """
    for name, hint in (hints or {}).items():
        if name not in variables:
            raise ValueError(f"layer_hints names {name!r}, which is not a gridded variable ({variables})")
        if not isinstance(hint, ZarrLayerVarConfig):
            raise TypeError(f"layer_hints[{name!r}] must be a ZarrLayerVarConfig, got {type(hint).__name__}")
