"""Benchmark ``Pyramid.write(io="python")`` against ``io="rust"`` (zarrs) on local temp dirs.

    python benchmarks/bench_io.py            # 8192x8192 (6 levels) and 32x2048x2048 (4 levels), float32
    python benchmarks/bench_io.py --small    # quick: 2048x2048 and 8x512x512
    python benchmarks/bench_io.py --profile  # also split worker time into read, reduce and encode+write (the write report)

Both variants run in the same process, alternating (python, rust, then rust, python, ...), each into a
fresh directory that is deleted afterwards; the best of ``--repeat`` runs is reported with the ratio
``python / rust`` (> 1 means rust is faster). Writes land in the page cache (no fsync), so this measures
encode + write-syscall cost, not disk speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import xarray as xr
import xproj  # noqa: F401
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topozarr_core import create_pyramid  # noqa: E402
from topozarr_core.write import codec_pipeline as io_select  # noqa: E402


def synthetic(ny: int, nx: int, nt: int | None = None, seed: int = 0) -> xr.Dataset:
    """A smooth float32 field with noise and a NaN hole, on a lat/lon grid (EPSG:4326)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 6, ny, dtype="float32")[:, None]
    x = np.linspace(0, 9, nx, dtype="float32")[None, :]
    base = 250 + 20 * np.sin(y) * np.cos(x)
    shape = (ny, nx) if nt is None else (nt, ny, nx)
    values = rng.standard_normal(size=shape, dtype="float32")
    values *= 3
    values += base
    values[..., : ny // 8, : nx // 8] = np.nan
    dims = ("lat", "lon") if nt is None else ("time", "lat", "lon")
    coords = {"lat": np.linspace(80, -80, ny), "lon": np.linspace(-170, 170, nx)}
    if nt is not None:
        coords["time"] = np.arange(nt).astype("datetime64[D]").astype("datetime64[ns]")
    ds = xr.Dataset({"air": (dims, values)}, coords=coords)
    return ds.proj.assign_crs(spatial_ref="EPSG:4326")


def profile_of(report) -> dict[str, float]:
    """Where a write's time went, from its public report (``write(..., stats=True)``): worker-thread
    seconds summed over the levels, reading the input, reducing it, and encoding + writing."""
    totals: dict[str, float] = defaultdict(float)
    for level in report.values():
        for key in ("read_s", "reduce_s", "write_s"):
            totals[key.removesuffix("_s")] += float(level.get(key) or 0.0)
    return dict(totals)


def run_case(name: str, ds: xr.Dataset, levels: int, args, base: Path) -> dict[str, float]:
    p = create_pyramid(ds, levels=levels, x_dim="lon", y_dim="lat")
    nbytes = sum(int(np.prod(p.level_shape(i))) for i in range(levels)) * (ds.sizes.get("time", 1)) * 4
    enc0 = p.encoding.get("/0", {}).get("air", {})
    print(f"\n== {name}: {dict(ds.sizes)} float32, levels={levels}, ~{nbytes / 1e6:.0f} MB of level data, "
          f"level-0 chunks={enc0.get('chunks')} shards={enc0.get('shards')}")
    times: dict[str, list[float]] = {"python": [], "rust": []}
    profiles: dict[str, list[dict[str, float]]] = {"python": [], "rust": []}
    order = ["python", "rust"]
    for rep in range(args.repeat):
        for io in order if rep % 2 == 0 else order[::-1]:
            target = base / f"{name}-{io}-{rep}.zarr"
            t0 = time.perf_counter()
            rep_ = p.write(target, io=io, max_workers=args.workers, keep_levels_in_memory=args.keep, stats=True)
            dt = time.perf_counter() - t0
            times[io].append(dt)
            profiles[io].append(profile_of(rep_))
            extra = ""
            if args.profile:
                extra = "  [" + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(profiles[io][-1].items())) + "]"
            print(f"  rep {rep} {io:6s} {dt:7.2f} s  ({rep_.regions} regions, {rep_.workers} workers){extra}",
                  flush=True)
            shutil.rmtree(target, ignore_errors=True)
    best = {io: min(v) for io, v in times.items()}
    med = {io: statistics.median(v) for io, v in times.items()}
    ratio = best["python"] / best["rust"]
    print(f"  best: python {best['python']:.2f} s, rust {best['rust']:.2f} s  -> python/rust = {ratio:.2f}x"
          f"  (median {med['python']:.2f} / {med['rust']:.2f} = {med['python'] / med['rust']:.2f}x)")
    if args.profile:
        for io in ("python", "rust"):
            i = times[io].index(best[io])
            print(f"  {io} best-run profile: " + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(profiles[io][i].items())))
    return {"python": best["python"], "rust": best["rust"], "ratio": ratio}



def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="quick run: 2048x2048 and 8x512x512")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="Pyramid.write max_workers (default: auto)")
    ap.add_argument("--keep", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                    help="keep_levels_in_memory (default: auto)")
    ap.add_argument("--profile", action="store_true", help="split worker time: compute vs encode+write")
    ap.add_argument("--rust-threads", type=int, default=None, help="zarrs num_threads (default: zarrs's)")
    ap.add_argument("--rust-chunk-concurrency", type=int, default=None,
                    help="zarrs chunk_concurrent_maximum (default: zarrs's)")
    ap.add_argument("--only", choices=["2d", "3d"], default=None)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args(argv)

    if args.rust_threads is not None:
        io_select.RUST_NUM_THREADS = args.rust_threads
    if args.rust_chunk_concurrency is not None:
        io_select.RUST_CHUNK_CONCURRENT_MAXIMUM = args.rust_chunk_concurrency

    import zarrs

    print(f"zarr {zarr.__version__}, zarrs {zarrs.__version__}, numpy {np.__version__}, cpus {os.cpu_count()}, "
          f"zarrs num_threads={io_select.RUST_NUM_THREADS or 'default'}, "
          f"chunk_concurrent_maximum={io_select.RUST_CHUNK_CONCURRENT_MAXIMUM or 'default'}")
    cases = (
        [("2d", lambda: synthetic(2048, 2048), 6), ("3d", lambda: synthetic(512, 512, nt=8), 4)]
        if args.small
        else [("2d", lambda: synthetic(8192, 8192), 6), ("3d", lambda: synthetic(2048, 2048, nt=32), 4)]
    )
    base = Path(tempfile.mkdtemp(prefix="topozarr-bench-", dir=args.dir))
    results = {}
    try:
        for name, make, levels in cases:
            if args.only and name != args.only:
                continue
            results[name] = run_case(name, make(), levels, args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nsummary (best of {args.repeat}):")
    for name, r in results.items():
        print(f"  {name}: python {r['python']:.2f} s  rust {r['rust']:.2f} s  speed-up {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
