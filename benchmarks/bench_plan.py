"""Planning at internet scale, simulated: virtual sources of 10 TB and 100 TB, nothing read.

Each case is a lazy dask array of zeros (no byte of it is ever computed) with regular coordinates,
planned as the flow plans it: ``create_pyramid`` + ``Pyramid.tile_plan(max_tile_bytes, max_tiles)``,
then what the flow's plan task hands the flow (:func:`topozarr_flows.runs.tile_runs.planned_tiles`: every tile's key,
stage, levels and what it waits for) serialised as JSON. Each case runs in a fresh child process so
its peak RSS is its own. Printed per case: the source's size, levels, tiles per stage, plan seconds
(median of ``--repeat`` runs in the child, and the first run, which imports and compiles nothing of
the kernels: planning does not run them), peak RSS of the planning process, and the size of the
plan task's result (what a flow run persists and passes around).

Cases (float32; ``--quick`` keeps only the first two):

* ``era-1var``  40 years of hourly 0.1-degree fields: 350,400 x 1800 x 3600 (9.1 TB), one variable;
* ``era-10var`` the same with ten variables (91 TB);
* ``dem-13TB``  a 2.6M x 1.3M raster (13.5 TB), e.g. a continental 10 m DEM;
* ``dem-100TB`` a 7.2M x 3.6M raster (104 TB).

Usage::

    python benchmarks/bench_plan.py                    # max_tiles 2000 (the flow's default), 3 repeats
    python benchmarks/bench_plan.py --max-tiles 20000 --tile-mb 4096
"""

from __future__ import annotations

import argparse
import json
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

CASES = {
    "era-1var": dict(shape=(350_400, 1800, 3600), dims=("time", "lat", "lon"), chunks=(24, 1800, 3600), nvars=1),
    "era-10var": dict(shape=(350_400, 1800, 3600), dims=("time", "lat", "lon"), chunks=(24, 1800, 3600), nvars=10),
    "dem-13TB": dict(shape=(1_300_000, 2_600_000), dims=("y", "x"), chunks=(8192, 8192), nvars=1),
    "dem-100TB": dict(shape=(3_600_000, 7_200_000), dims=("y", "x"), chunks=(8192, 8192), nvars=1),
}


def virtual_dataset(shape, dims, chunks, nvars):
    """A dataset of ``nvars`` float32 variables of ``shape`` that is never read (lazy dask zeros)."""
    import dask.array as dsa
    import numpy as np
    import xarray as xr

    coords = {}
    for d, n in zip(dims, shape):
        if d in ("lat", "y"):
            coords[d] = np.linspace(90, -90, n) if d == "lat" else np.arange(n, dtype="f8") * -10.0
        elif d in ("lon", "x"):
            coords[d] = np.linspace(-180, 180, n, endpoint=False) if d == "lon" else np.arange(n, dtype="f8") * 10.0
    data = {f"v{i}": (dims, dsa.zeros(shape, dtype="float32", chunks=chunks)) for i in range(nvars)}
    return xr.Dataset(data, coords=coords)


def child(args: argparse.Namespace) -> None:
    """Plan one case ``--repeat`` times in this process and print the result line."""
    from topozarr_core import create_pyramid
    from topozarr_flows.runs.tile_runs import planned_tiles

    case = CASES[args.case]
    spatial = [d for d in case["dims"] if d != "time"]
    crs = "EPSG:4326" if "lat" in spatial else "EPSG:3857"
    ds = virtual_dataset(**case)
    nbytes = sum(v.nbytes for v in ds.data_vars.values())
    C.reset_peak_rss()
    seconds, sizes = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        pyramid = create_pyramid(ds, levels="auto", x_dim=spatial[1], y_dim=spatial[0], crs=crs)
        plan = pyramid.tile_plan(max_tile_bytes=args.tile_mb * 2**20, max_tiles=args.max_tiles)
        planned = planned_tiles(plan)
        blob = json.dumps(planned)
        seconds.append(time.perf_counter() - t0)
        sizes.append(len(blob))
    stages = [f"{r['tiles']}x L{r['levels'][0]}-{r['levels'][-1]}" for r in plan.summary()]
    first = plan.tiles[0]
    t0 = time.perf_counter()
    regions = plan.region_plan([first])
    expand_s = time.perf_counter() - t0
    C.emit_result({
        "case": args.case, "tb": nbytes / 1e12, "levels": len(pyramid.factors), "tiles": len(plan.tiles),
        "stages": stages, "first_s": seconds[0], "median_s": statistics.median(seconds),
        "max_tile_gb": max(plan.source_bytes(t) for t in plan.tiles[:2000]) / 1e9,
        "regions_first_tile": sum(lp.n_regions for lp in regions.levels), "expand_s": expand_s,
        "result_mb": sizes[-1] / 1e6, "peak_rss_mb": C.peak_rss_bytes() / 1e6,
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tiles", type=int, default=2000, help="the flow's max_task_runs")
    from topozarr_core.plan.tiles import DEFAULT_TILE_BYTES

    ap.add_argument("--tile-mb", type=int, default=DEFAULT_TILE_BYTES // 2**20,
                    help="max_tile_bytes in MiB (default: the flow's)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the two ERA-like cases only")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args(argv)
    if args.case:
        child(args)
        return 0
    print(C.machine_summary(), f"load {C.load_average():.2f}", flush=True)
    rows = []
    for name in list(CASES)[: 2 if args.quick else None]:
        res = C.run_child([sys.executable, __file__, "--case", name, "--max-tiles", str(args.max_tiles),
                           "--tile-mb", str(args.tile_mb), "--repeat", str(args.repeat)])
        rows.append([name, f"{res['tb']:.1f}", res["levels"], res["tiles"], "; ".join(res["stages"]),
                     f"{res['max_tile_gb']:.2f}", f"{res['first_s']:.2f}", f"{res['median_s']:.2f}",
                     f"{res['peak_rss_mb']:.0f}", f"{res['result_mb']:.2f}", res["regions_first_tile"],
                     f"{res['expand_s']:.3f}"])
        print(f"  {name}: {res['tiles']} tiles in {res['median_s']:.2f} s", flush=True)
    headers = ["case", "TB", "levels", "tiles", "stages (tiles x levels)", "largest tile GB", "plan s (first)",
               "plan s (median)", "peak RSS MB", "plan result MB", "regions of tile 0", "expand tile 0 s"]
    print(f"\nmax_tiles={args.max_tiles}, max_tile_bytes={args.tile_mb} MiB\n" + C.format_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
