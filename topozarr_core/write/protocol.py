"""The one write protocol: check -> prepare -> run the tiles -> finish -> publish.

Every way of writing a pyramid goes through these steps, in this order:

1. **check** (read-only): everything that can fail on the input -- the edited encoding and attributes,
   the tile plan, the target contract (:mod:`topozarr_core.publish.contract`), a partial write's levels --
   before a byte changes. :meth:`BuildWrite.check` for a build; :func:`topozarr_core.update.plan_update`
   for an update (its checks read the pyramid).
2. **prepare**: unpublish the root (one write, first), delete what the write replaces, create the
   layout (or return a :class:`~topozarr_core.publish.level_init.LevelInitialiser` that creates each
   level just before its first tile needs it).
3. **run**: the tiles of the :class:`~topozarr_core.plan.tiles.TilePlan`, stage by stage
   (:func:`topozarr_core.write.executor.write_tiles`), by any executor.
4. **finish**: what follows the tiles (an update's coordinates along the append dimension; the levels
   of a partial build that stay empty).
5. **publish**: the root's ``multiscales`` last, only over complete data.

:func:`write_locally` runs the steps in one process under the target's lease (``Pyramid.write`` and
``PyramidUpdate.write``); the flows run the same step methods as Prefect tasks, prepare and publish
once and each tile as its own task, on any task runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import xarray as xr

from topozarr_core.layout.level_documents import LevelDocuments
from topozarr_core.layout.paths import MISSING_GROUP
from topozarr_core.plan.regions import RegionPlan
from topozarr_core.plan.tiles import TilePlan
from topozarr_core.publish.contract import TargetState, check_target
from topozarr_core.publish.level_init import LevelInitialiser
from topozarr_core.publish.partial import check_kept_levels, finish_partial
from topozarr_core.publish.steps import prepare_target, publish_root
from topozarr_core.store.lease import lease_for
from topozarr_core.write.executor import write_tiles
from topozarr_core.write.stats import RegionTimer

if TYPE_CHECKING:
    from topozarr_core.pyramid import Pyramid


class WriteSteps(Protocol):
    """What a write is, step by step (a build: :class:`BuildWrite`; an update:
    :class:`~topozarr_core.update.pyramid_update.PyramidUpdate`)."""

    @property
    def source(self) -> xr.Dataset:
        """The dataset the tiles read."""

    def prepare(self, store: Any, lazy: bool = False) -> LevelInitialiser | None:
        """Make the target ready for the tiles; with ``lazy``, levels may be created on the way.

        :param store: the target zarr store.
        :param lazy: create levels only when first needed.
        """

    def finish(self, store: Any, levels: LevelInitialiser | None = None) -> Any:
        """What follows the tiles, before publishing.

        :param store: the target zarr store.
        :param levels: what :meth:`prepare` returned.
        """

    def publish(self, store: Any) -> Any:
        """Publish the root (the last write).

        :param store: the target zarr store.
        """


@dataclass
class BuildWrite:
    """A checked build of ``pyramid`` into one target: what :meth:`check` found, for the later steps.

    Attributes
    ----------
    pyramid:
        The planned pyramid (its edited encoding and attributes already applied and checked).
    plan:
        The tiles to run.
    mode:
        ``"w"``/``"w-"`` (a new pyramid) or ``"a"`` (rewrite some levels of one of ours).
    state:
        What the target held when checked.
    kept:
        Levels holding data before a ``mode="a"`` write onto a partial pyramid (else ``None``).
    root:
        The root attributes :meth:`publish` writes.
    """

    pyramid: Pyramid
    plan: TilePlan
    mode: str
    state: TargetState
    kept: set[int] | None
    root: dict[str, Any]
    docs: LevelDocuments | None = None

    @classmethod
    def check(cls, pyramid: Pyramid, store: Any, mode: str = "w", levels: list[int] | None = None, *,
              plan: TilePlan | None = None, overwrite_foreign: bool = False,
              sources: tuple[str, ...] = ()) -> BuildWrite:
        """Every check of a build, read-only.

        Parameters
        ----------
        pyramid:
            What to write.
        store:
            The resolved target store (read-only is enough).
        mode:
            ``"w"``, ``"w-"`` or ``"a"`` (as ``Pyramid.write``).
        levels:
            The levels to write (contiguous; default all). With ``mode="w"`` a subset starts a partial
            pyramid, which only a missing or empty target may take.
        plan:
            The tile plan (default: ``pyramid.tile_plan(levels)``).
        overwrite_foreign:
            Let ``mode="w"`` replace a target this project did not write.
        sources:
            The source locations (a target may not be one of them).
        """
        spec = pyramid.spec  # applies (and checks) the edited encoding first
        root = pyramid.root_attributes()
        plan = plan if plan is not None else pyramid.tile_plan(levels=levels)
        every = list(range(pyramid.levels))
        new_partial = mode in ("w", "w-") and plan.levels != every
        state = check_target(store, spec, mode, every if new_partial else plan.levels, ds=pyramid.ds,
                             sources=sources, overwrite_foreign=overwrite_foreign)
        if new_partial and state.kind != "empty":
            raise ValueError(f"levels={plan.levels} with mode='w' would replace what the target holds ({state.what}) "
                             "and leave the other levels missing; pass mode='a' to rewrite some levels of a "
                             "pyramid of ours, or write every level")
        kept = check_kept_levels(state.attrs, plan.levels, pyramid.levels) if mode == "a" else None
        docs = LevelDocuments(pyramid.ds, spec)
        docs.staged(plan.levels[0])  # the first level's documents build in memory
        return cls(pyramid, plan, mode, state, kept, root, docs)

    @property
    def source(self) -> xr.Dataset:
        """The source dataset."""
        return self.pyramid.ds

    @property
    def every(self) -> list[int]:
        """Every level index of the pyramid."""
        return list(range(self.pyramid.levels))

    @property
    def new_partial(self) -> bool:
        """A ``mode="w"`` write of some levels: the whole layout is created, the rest stays empty."""
        return self.mode in ("w", "w-") and self.plan.levels != self.every

    @property
    def has_data(self) -> set[int]:
        """The levels that hold data once the tiles have run."""
        if self.new_partial:
            return set(self.plan.levels)
        if self.kept is not None:  # mode="a" onto a partial write
            return set(self.plan.levels) | self.kept
        return set(self.every)

    @property
    def complete(self) -> bool:
        """Whether :meth:`publish` publishes (every level holds data)."""
        return self.has_data >= set(self.every)

    def prepare(self, store: Any, lazy: bool = False) -> LevelInitialiser:
        """Unpublish the root, delete what the build replaces, and create the levels (all now, or with
        ``lazy`` each when :meth:`LevelInitialiser.ready` first asks for it).

        :param store: the target zarr store.
        :param lazy: create each level when first needed instead of all now.
        """
        layout = self.every if self.new_partial else self.plan.levels
        prepare_target(store, self.pyramid.spec, self.mode, self.plan.levels, self.state)
        init = LevelInitialiser(store, self.pyramid.ds, self.pyramid.spec, layout, self.docs)
        init.ready(self.plan.levels[0])
        if not lazy:
            for level in layout:
                init.ready(level)
        return init

    def finish(self, store: Any, levels: LevelInitialiser | None = None) -> None:
        """Create whatever level is still missing (a partial build's empty levels).

        :param store: the target zarr store.
        :param levels: what :meth:`prepare` returned, or None.
        """
        if levels is not None:
            for level in sorted(levels.pending):
                levels.ready(level)

    def publish(self, store: Any) -> dict[str, Any]:
        """Publish the root when every level holds data; otherwise record which do (the root stays
        unpublished until a ``mode="a"`` write completes it). Returns the root attributes written.

        :param store: the target zarr store.
        """
        if self.complete:
            return publish_root(store, self.root)  # the scratch missing counts go first
        owned = {str(lvl) for lvl in self.every} | {MISSING_GROUP}
        return finish_partial(store, self.root, self.has_data, owned)


def write_locally(steps: WriteSteps, plan: TilePlan, store: Any, *, workers: int,
                  open_array: Callable[..., Any], keep_in_memory: bool, progress: bool = False,
                  timer: RegionTimer | None = None,
                  regions: dict[int, RegionPlan] | None = None) -> int:
    """Run every step of a write in this process, holding the target's lease (plain Zarr); returns the
    bytes the tiles wrote.

    Parameters
    ----------
    steps:
        The checked write.
    plan:
        Its tiles; stages run one after the other, the tiles of a stage on ``workers`` threads.
    store:
        The resolved, writable target.
    workers, open_array, keep_in_memory, progress, timer:
        As :func:`~topozarr_core.write.executor.write_tiles`.
    regions:
        The region plan of each stage, when the caller already built them.
    """
    written = 0
    with lease_for(store) as lease:
        levels = steps.prepare(store, lazy=True)
        for stage in plan.stages:
            tiles = [t for t in plan.tiles if t.stage == stage]
            written += write_tiles(plan, tiles, source=steps.source, store=store, workers=workers,
                                   open_array=open_array, keep_in_memory=keep_in_memory, progress=progress,
                                   timer=timer, level_ready=levels.ready if levels else None,
                                   idle_step=levels.step if levels else None,
                                   regions=(regions or {}).get(stage)).bytes_written
        steps.finish(store, levels)
        if lease is not None:
            lease.check()  # never publish over a writer that took a lease we failed to renew
        steps.publish(store)
    return written
