"""The spatial grid of a source: validated 1-D coordinates, level shapes and affine transforms.

Pixel registration is assumed: 1-D coordinates are pixel centres, so a level coarsened by
``f`` keeps the same outer edge (origin) and multiplies the pixel size by ``f``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

#: Relative tolerance on coordinate spacing before a grid is called non-uniform.
UNIFORM_RTOL = 1e-5


@dataclass(frozen=True)
class Axis:
    """One spatial axis: name, size, first centre and signed step."""

    name: str
    size: int
    start: float
    step: float
    #: the source has no coordinate variable for this dim: centres are the indices 0..n-1
    implicit: bool = False

    @property
    def origin(self) -> float:
        """Outer edge of the first pixel (what an affine transform anchors to)."""
        return self.start - self.step / 2


def level_centres(ds: xr.Dataset, axis: Axis, factors: tuple[int, ...] | list[int]) -> np.ndarray:
    """The x or y coordinate of the level reached through cumulative ``factors`` (level 0 first).

    Level 0 is the source's own coordinate, bit for bit (its dtype too). Each coarser level holds the
    window means of the level before, ``values.reshape(n, step).mean(axis=1)`` per step as topozarr
    computes them (``xarray.coarsen(...).mean()`` step by step): float coordinates keep their dtype,
    others become float64. A dim without coordinate gets its indices as float64.

    :param ds: the source dataset.
    :param axis: the x or y axis of the grid.
    """
    values = np.arange(axis.size, dtype="f8") if axis.implicit else np.asarray(ds[axis.name].values)
    for prev, f in zip(factors, factors[1:]):
        step = f // prev
        n = values.size // step
        values = values[: n * step].reshape(n, step).mean(axis=1)
    return np.array(values)


@dataclass(frozen=True)
class SpatialGrid:
    """The (y, x) grid of level 0."""

    y: Axis
    x: Axis

    def shape(self, factor: int = 1) -> tuple[int, int]:
        """Level shape after trimming, like ``coarsen(boundary="trim")``.

        :param factor: the level's factor relative to level 0.
        """
        return (self.y.size // factor, self.x.size // factor)

    def transform(self, factor: int = 1) -> list[float]:
        """``spatial:transform`` [a, b, c, d, e, f] of a level coarsened by ``factor``."""
        return [self.x.step * factor, 0.0, self.x.origin, 0.0, self.y.step * factor, self.y.origin]

    def bbox(self, factor: int = 1) -> list[float]:
        """[xmin, ymin, xmax, ymax] covered by the (trimmed) level.

        :param factor: the level's factor relative to level 0.
        """
        ny, nx = self.shape(factor)
        xs = (self.x.origin, self.x.origin + self.x.step * factor * nx)
        ys = (self.y.origin, self.y.origin + self.y.step * factor * ny)
        return [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]


def _axis(ds: xr.Dataset, dim: str, role: str) -> Axis:
    if dim not in ds.dims:
        raise ValueError(
            f"{role}={dim!r} is not a dimension of the dataset; dimensions are {sorted(map(str, ds.dims))}"
        )
    if dim not in ds.coords:
        placed_by = [str(name) for name, c in ds.coords.items() if c.ndim > 1 and dim in c.dims]
        if placed_by:  # the indices below would be a silently wrong georeferencing
            raise ValueError(
                f"{role}={dim!r} has no 1-D coordinate; its pixels are placed only by the 2-D coordinate(s) "
                f"{placed_by} (a curvilinear grid), which a pyramid cannot represent; regrid to a regular grid "
                f"with 1-D coordinates first (e.g. xESMF, or rioxarray's reproject)"
            )
        # like xarray (``ds[dim]`` is 0..n-1): pixel centres at the array indices, 1 pixel apart
        size = int(ds.sizes[dim])
        if size < 2:
            raise ValueError(f"spatial dimension {dim!r} needs at least 2 pixels, got {size}")
        return Axis(name=dim, size=size, start=0.0, step=1.0, implicit=True)
    coord = ds.coords[dim]
    if coord.ndim != 1:
        raise ValueError(f"coordinate {dim!r} must be 1-D, got {coord.ndim}-D")
    if not np.issubdtype(coord.dtype, np.number):
        raise TypeError(f"coordinate {dim!r} must be numeric, got {coord.dtype}")
    values = np.asarray(coord.values, dtype="float64")
    if values.size < 2:
        raise ValueError(f"spatial dimension {dim!r} needs at least 2 pixels, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"coordinate {dim!r} has NaN or infinite values")
    steps = np.diff(values)
    if not (np.all(steps > 0) or np.all(steps < 0)):
        raise ValueError(f"coordinate {dim!r} is not strictly monotonic")
    step = (values[-1] - values[0]) / (values.size - 1)
    worst = float(np.max(np.abs(steps - step)))
    if worst > UNIFORM_RTOL * abs(step):
        raise ValueError(
            f"coordinate {dim!r} is not uniformly spaced (step {step:g}, deviation up to {worst:g}); "
            "regrid to a regular grid first"
        )
    return Axis(name=dim, size=int(values.size), start=float(values[0]), step=float(step))


def spatial_grid(ds: xr.Dataset, x_dim: str, y_dim: str) -> SpatialGrid:
    """Validate and describe the spatial grid; raises ValueError/TypeError on bad coordinates.

    :param ds: the source dataset.
    :param x_dim: the x dimension's name.
    :param y_dim: the y dimension's name.
    """
    if x_dim == y_dim:
        raise ValueError(f"x_dim and y_dim must differ, both are {x_dim!r}")
    return SpatialGrid(y=_axis(ds, y_dim, "y_dim"), x=_axis(ds, x_dim, "x_dim"))
