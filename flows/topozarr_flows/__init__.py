"""Prefect flows over :mod:`topozarr_core`: build and update pyramids as retryable tile tasks.

The public names: :func:`build_pyramid` and :func:`update_pyramid` (the flows, also served by the
deployments in ``deployments/prefect.yaml``) and their parameter models :class:`BuildParams` and
:class:`UpdateParams`. The command line is ``topozarr-flows`` (:mod:`topozarr_flows.ops.cli`).
"""

from topozarr_flows.build.flow import build_pyramid
from topozarr_flows.params import BuildParams, UpdateParams
from topozarr_flows.update.flow import update_pyramid

__all__ = ["build_pyramid", "update_pyramid", "BuildParams", "UpdateParams"]
