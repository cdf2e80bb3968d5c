"""Incremental update benchmark: append 1 new time step vs rebuilding the whole pyramid.

A synthetic float32 raster (default 64x2048x2048, 5 levels; ``--small``: 64x1024x1024, 4 levels)
is written once to a local zarr source (chunks 1 along time, ``--source-chunk`` along y/x) and
opened lazily (``xr.open_zarr(chunks=None)``), as a nightly job would. Then:

* ``full rebuild``  ``create_pyramid(src, levels=N, ...).write(out)``: all 64 steps;
* ``update +1``     a pyramid built (untimed) from the first 63 steps, then
                    ``update_pyramid(src, out)`` appends step 64 (planning and checks included);
* ``no-op update``  the same update again: nothing to do, nothing written.

Each phase runs ``--repeat`` times, interleaved (rebuild, update, no-op, rebuild, ...) so a change
of machine load hits all phases alike; the update starts from a fresh copy of the 63-step pyramid
each time (copy untimed, ``os.sync()`` before each phase so dirty pages are not flushed on the
next phase's clock). A tiny untimed warm-up loads numba caches first. The ratio uses the median times
(target: update <= 5% of the rebuild). With ``--check`` (default) the updated pyramid is compared
with the full build node by node (metadata and values, ``tests.compare.assert_same_pyramid``).

Usage::

    python benchmarks/bench_update.py              # 64x2048x2048
    python benchmarks/bench_update.py --small      # 64x1024x1024
    python benchmarks/bench_update.py --repeat 5 --workers 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import _common as C  # noqa: E402

CRS = "EPSG:3857"
TARGET_RATIO = 0.05


def _create(ds, levels: int):
    from topozarr_core import create_pyramid

    return create_pyramid(ds, levels=levels, x_dim="x", y_dim="y", crs=CRS)


def _update(ds, out: str, workers: int | None, io: str):
    from topozarr_core import update_pyramid

    return update_pyramid(ds, out, "time", crs=CRS, max_workers=workers, io=io)


def _warmup(tmp: Path) -> None:
    tiny = C.synthetic_dataset((4, 256, 256), seed=1)
    _create(tiny.isel(time=slice(0, 3)), 3).write(tmp / "warm.zarr")
    _update(tiny, str(tmp / "warm.zarr"), None, "python")
    shutil.rmtree(tmp / "warm.zarr", ignore_errors=True)


def _timed(fn):
    os.sync()
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="64x1024x1024 with 4 levels")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--size", type=int, default=None, help="y and x size (default 2048, --small 1024)")
    ap.add_argument("--levels", type=int, default=None)
    ap.add_argument("--source-chunk", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--io", choices=["python", "rust"], default="python")
    ap.add_argument("--no-check", dest="check", action="store_false")
    ap.add_argument("--scratch", default=None, help="directory for the temporary stores")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    size = args.size or (1024 if args.small else 2048)
    levels = args.levels or (4 if args.small else 5)
    shape = (args.steps, size, size)

    with C.scratch_dir("bench-update-", base=args.scratch) as tmp:
        t0 = time.perf_counter()
        src = C.write_source_zarr(C.synthetic_dataset(shape, seed=0), tmp / "src.zarr",
                                  chunks={"time": 1, "y": args.source_chunk, "x": args.source_chunk})
        prep = time.perf_counter() - t0
        ds = C.open_source_zarr(src)
        _warmup(tmp)
        base = tmp / "base.zarr"
        _create(ds.isel(time=slice(0, args.steps - 1)), levels).write(base, max_workers=args.workers, io=args.io)

        full_times, upd_times, noop_times, report = [], [], [], None
        full = tmp / "full.zarr"
        out = tmp / "upd.zarr"
        for _ in range(args.repeat):
            shutil.rmtree(full, ignore_errors=True)
            s, _r = _timed(lambda: _create(ds, levels).write(full, max_workers=args.workers, io=args.io))
            full_times.append(s)
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(base, out)
            s, report = _timed(lambda: _update(ds, str(out), args.workers, args.io))
            upd_times.append(s)
            s, noop = _timed(lambda: _update(ds, str(out), args.workers, args.io))
            assert noop.regions == 0 and not noop.changed, noop
            noop_times.append(s)
        same = None
        if args.check:
            from tests.helpers.compare import assert_same_pyramid

            assert_same_pyramid(str(out), str(full))
            same = True

    full_s, upd_s, noop_s = (statistics.median(v) for v in (full_times, upd_times, noop_times))
    ratio = upd_s / full_s
    rows = [
        ["full rebuild", f"{args.steps} steps", C.fmt_num(full_s, 3), C.fmt_num(min(full_times), 3), "100.0%"],
        ["update +1 step", f"{report.regions} regions", C.fmt_num(upd_s, 3), C.fmt_num(min(upd_times), 3),
         f"{100 * ratio:.1f}%"],
        ["no-op update", "0 regions", C.fmt_num(noop_s, 3), C.fmt_num(min(noop_times), 3),
         f"{100 * noop_s / full_s:.1f}%"],
    ]
    print(f"bench_update: {'x'.join(map(str, shape))} float32, {levels} levels, source zarr chunks "
          f"1x{args.source_chunk}x{args.source_chunk} (prepared in {prep:.1f} s), io={args.io}, "
          f"{args.repeat} runs each")
    print(C.machine_summary())
    print(C.format_table(["phase", "work", "median s", "min s", "of rebuild"], rows))
    print(f"update written: levels {report.levels}, {report.regions} regions, "
          f"{report.bytes_written / 1e6:.1f} MB, relaid out {report.relayout or 'nothing'}")
    if same:
        print("updated pyramid == full rebuild (metadata and values of every node)")
    verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"ratio update/rebuild = {ratio:.4f} ({100 * ratio:.2f}%; target <= {100 * TARGET_RATIO:.0f}%): {verdict}")
    if args.json:
        print(json.dumps({"shape": shape, "levels": levels, "full": full_times, "update": upd_times,
                          "noop": noop_times, "ratio": ratio, "identical": same}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
