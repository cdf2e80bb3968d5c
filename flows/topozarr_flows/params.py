"""The parameter models of the build and update flows: validated before any task runs (also for deployments)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from topozarr_core.kernels.reduce import METHODS
from topozarr_core.plan.tiles import DEFAULT_TILE_BYTES
from topozarr_core.spec.chunking import VALID_CHUNKS_PER_SHARD
from topozarr_core.store import icechunk_txn
from topozarr_core.update.pyramid_update import DEFAULT_VERIFY_SAMPLES

WRITE_LIMIT = "topozarr-writes"


class RunParams(BaseModel):
    """Where from, where to, and how hard to push: what builds and updates share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="Path or URL of a NetCDF/Zarr dataset, or `icechunk://<repo>?branch=<b>`")
    target: str = Field(description="Local path or s3:// URL of the pyramid (Zarr) or of the Icechunk repository")
    target_format: Literal["zarr", "icechunk"] = Field("zarr", description="`zarr`: a plain Zarr v3 store; "
                                                       "`icechunk`: an Icechunk repository, published by one "
                                                       "commit on `branch` at the end")
    branch: str = Field("main", description="Icechunk branch published at the end")
    variables: list[str] | None = Field(None, description="The source's variables to write (default: every "
                                        "variable over both spatial dims)")
    crs: str | None = Field(None, description="The CRS (`EPSG:4326`, WKT, PROJ string) when the source "
                            "carries none")
    io: Literal["auto", "python", "rust"] = Field("auto", description="`auto`: zarrs on local Zarr targets, "
                                                  "zarr's codec pipeline elsewhere; `python`: zarr's codec "
                                                  "pipeline; `rust`: zarrs (plain Zarr targets only)")
    max_tile_bytes: int = Field(DEFAULT_TILE_BYTES, ge=100_000, description="Input bytes per tile (one write "
                                "task) while a stage of tiles takes in one more level: larger tiles cover more "
                                "levels and make fewer tasks, smaller ones spread over more workers")
    max_task_runs: int = Field(2000, ge=1, description="At most this many tile tasks per run: tiles are made "
                               "larger when the plan would have more")
    max_region_bytes: int = Field(256_000_000, ge=1_000_000, description="Largest level-0 region one thread of a "
                                  "tile reads and writes at once (the memory of a task is a few of them per thread)")
    concurrency_limit: str = Field(WRITE_LIMIT, description="Task concurrency limit (tag) each tile holds a slot of")
    default_concurrency: int = Field(4, ge=1, description="Slots of the limit when the flow has to create it")
    validate_samples: int = Field(4, ge=0, description="Chunks per level read back and compared with the "
                                  "source's coarsened values before publishing; 0 checks only the metadata")

    @field_validator("source", "target", "branch", "concurrency_limit")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("must not be empty")
        return v

    @property
    def icechunk(self) -> icechunk_txn.IcechunkTarget | None:
        """The Icechunk repository and branch of the target, or None for a plain Zarr target."""
        return icechunk_txn.IcechunkTarget(self.target, self.branch) if self.target_format == "icechunk" else None

    @model_validator(mode="after")
    def _rust_needs_zarr(self) -> RunParams:
        if self.target_format == "icechunk" and self.io == "rust":
            raise ValueError("io='rust' cannot write Icechunk targets (zarrs would silently fall back); use io='python'")
        return self


class BuildParams(RunParams):
    """A build: the run options plus the pyramid's layout."""

    levels: StrictInt | None = Field(None, ge=1, le=24, description="Levels after level 0, each coarsened 2x "
                                     "(give `levels` or `factors`)")
    factors: list[int] | None = Field(None, description="Cumulative factors of every level, starting with 1 "
                                      "(`[1, 2, 4, 8]`)")
    x_dim: str = Field("x", description="The x (longitude, easting) dimension")
    y_dim: str = Field("y", description="The y (latitude, northing) dimension")
    method: str = Field("mean", description="How pixels are combined: mean (NaN-aware), max, min, sum, nearest, "
                        "mode, majority")
    chunks_per_shard: int | None = Field(4, description="Chunks per shard along each spatial dim (1, 2, 4, 8, "
                                         "16, 32), or null for no sharding")
    mode: Literal["w", "w-", "a"] = Field("w", description="`w` builds (replacing a pyramid this project "
                                          "wrote), `w-` only into a missing or empty target, `a` rewrites "
                                          "levels of an existing pyramid")
    min_tiles: int = Field(4, ge=1, description="A stage of tiles takes in one more level, and its tiles grow "
                           "toward max_tile_bytes, only while it keeps at least this many tiles: the workers stay "
                           "busy to the end of a run (about the slots "
                           "of the limit, or the workers of a cluster). Builds only: an update's tiles are cut "
                           "along the append dim")
    overwrite_foreign: bool = Field(False, description="Let mode 'w' replace a target holding data this project "
                                    "did not write (everything there is deleted)")

    @field_validator("x_dim", "y_dim")
    @classmethod
    def _dims_not_blank(cls, v: str) -> str:
        return cls._not_blank(v)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose one of {list(METHODS)}")
        return v

    @field_validator("chunks_per_shard")
    @classmethod
    def _cps(cls, v: int | None) -> int | None:
        if v is not None and v not in VALID_CHUNKS_PER_SHARD:
            raise ValueError(f"chunks_per_shard must be one of {VALID_CHUNKS_PER_SHARD} or null")
        return v

    @model_validator(mode="after")
    def _levels_xor_factors(self) -> BuildParams:
        if (self.levels is None) == (self.factors is None):
            raise ValueError("give exactly one of levels or factors")
        return self


class UpdateParams(RunParams):
    """What to update and from where; layout options come from the pyramid itself."""

    append_dim: str = Field("time", description="Dimension the source grew along")
    verify_samples: int = Field(DEFAULT_VERIFY_SAMPLES, ge=0, description="Level-0 chunks per gridded variable "
                                "compared with the source over the existing entries (rewritten history is "
                                "refused); 0 skips the check")

    @field_validator("append_dim")
    @classmethod
    def _append_dim_not_blank(cls, v: str) -> str:
        return cls._not_blank(v)
