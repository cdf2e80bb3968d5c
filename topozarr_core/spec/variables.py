"""What is written of one variable: dims, dtypes, method, fill value and per-level shapes and encodings."""

from __future__ import annotations

from dataclasses import dataclass

from topozarr_core.spec.chunking import VarEncoding
from topozarr_core.spec.packing import Packing


@dataclass(frozen=True)
class VarSpec:
    """A gridded variable (data or coordinate) written region by region."""

    name: str
    dims: tuple[str, ...]
    dtype: str  # source dtype
    out_dtype: str  # written dtype (sum of ints widens)
    method: str
    fill_value: float | int | None  # missing marker besides NaN; None = NaN only (or none for ints)
    shapes: tuple[tuple[int, ...], ...]  # per level
    encodings: tuple[VarEncoding, ...]  # per level
    track_missing: bool  # mean over data that can be missing: keep per-pixel missing counts
    is_coord: bool = False
    #: CF packing kept from the source (``dtype`` is then the packed integer dtype; see packing)
    packing: Packing | None = None

    def level_dtype(self, level: int) -> str:
        """Level 0 keeps the source dtype; coarser levels use the method's output dtype.

        :param level: the level index.
        """
        return self.dtype if level == 0 else self.out_dtype

    def axes(self, y_dim: str, x_dim: str) -> tuple[int, int]:
        """The positions of the y and x dims in the variable's dims.

        :param y_dim: the y dimension's name.
        :param x_dim: the x dimension's name.
        """
        return self.dims.index(y_dim), self.dims.index(x_dim)


def find_var(variables: tuple[VarSpec, ...] | list[VarSpec], name: str) -> VarSpec:
    """The spec of variable ``name`` among ``variables``; KeyError when there is none.

    :param variables: the specs of a plan.
    :param name: the variable's name.
    """
    for v in variables:
        if v.name == name:
            return v
    raise KeyError(name)
