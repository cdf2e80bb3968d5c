"""Pyramid write benchmark: our ``Pyramid.write`` vs a level-0-only copy vs PyPI ``topozarr``.

Builds synthetic float32 rasters (8192x8192 with 6 levels, 32x2048x2048 with 4 levels; ``--small``:
2048x2048 / 8x512x512) and measures, each phase in a fresh child process (so peak RSS is per
phase):

* ``pyramid``       ``create_pyramid(ds, levels=N, ...).write(out)``: all levels;
* ``L0 levels=1``   ``create_pyramid(ds, levels=1, ...).write(out)``: level 0 alone, same encoding;
* ``L0 to_zarr``    plain ``ds.to_zarr(out, group="0", encoding=<the pyramid's level-0 encoding>)``;
* ``topozarr PyPI`` ``topozarr.create_pyramid(ds, levels=N, ...).write(out)`` run by the python
  of a separate venv (``--topozarr-python`` or env ``TOPOZARR_PYPI_PYTHON``), on the same source.

The pyramid/level-0 ratio uses the faster of the two level-0 baselines (the table says which).
Then, per raster, one more child runs ``--pairs`` pyramid / ``levels=1`` writes taking turns in the
same warm process (each first deleting its own previous output): the steady state of a worker that
writes one pyramid after another, and a second estimate of the ratio that does not depend on how
fresh each child's memory is (on VMs that hand freed guest memory back to the host, first touches
cost ~2 ms/MB).
Performance targets (benchmark, not a test): pyramid <= 1.6x the level-0 copy, and >= 1.3x faster
than topozarr 0.2.1 on both rasters.

``--source zarr`` (default, the realistic case) writes each synthetic raster once to a local zarr
(chunks ``--source-chunk`` along y/x, 1 along other dims) and every phase opens it lazily with
``xr.open_zarr(path, chunks=None)``; ``--source memory`` builds the raster in each child's memory
(deterministic seed; the PyPI child rebuilds it too and the checksums are compared).

Every child does a tiny untimed warm-up write with the same tool first (imports, numba cache
loading), and the parent calls ``os.sync()`` between phases (untimed) so one phase's dirty pages
are not flushed on the next one's clock. The phase order rotates from one repeat to the next, so
no phase always follows the same one (what a phase finds depends on what the previous one freed).
Output goes to the page cache (no fsync in the timing).

Usage::

    python benchmarks/bench_write.py                 # full run, source zarr
    python benchmarks/bench_write.py --small --repeat 3
    python benchmarks/bench_write.py --topozarr-python /tmp/tzvenv/bin/python
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402  (stdlib-only at import time: safe under another venv's python)

CRS = "EPSG:3857"
X, Y = "x", "y"
ENV_PYPI = "TOPOZARR_PYPI_PYTHON"

PH_PYRAMID = "pyramid"
PH_L0_PYRAMID = "l0_pyramid"
PH_L0_TO_ZARR = "l0_to_zarr"
PH_PYPI = "topozarr_pypi"
PH_PREPARE = "prepare_source"
PH_ALTERNATING = "alternating"

PHASE_LABELS = {
    PH_PYRAMID: "pyramid (ours)",
    PH_L0_PYRAMID: "L0 copy: levels=1 write",
    PH_L0_TO_ZARR: "L0 copy: ds.to_zarr",
    PH_PYPI: "topozarr PyPI",
}


@dataclass(frozen=True)
class Raster:
    name: str
    shape: tuple[int, ...]
    levels: int

    @property
    def dims(self) -> tuple[str, ...]:
        return (("time",) if len(self.shape) == 3 else ()) + (Y, X)

    @property
    def nbytes(self) -> int:
        n = 4
        for s in self.shape:
            n *= s
        return n

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "levels": self.levels}


FULL = [Raster("8192x8192", (8192, 8192), 6), Raster("32x2048x2048", (32, 2048, 2048), 4)]
SMALL = [Raster("2048x2048", (2048, 2048), 6), Raster("8x512x512", (8, 512, 512), 4)]


# =================================================================================================
# child side
# =================================================================================================


def _load_source(spec: dict[str, Any]):
    raster = spec["raster"]
    if spec["source"] == "zarr":
        return C.open_source_zarr(spec["source_path"])
    return C.synthetic_dataset(raster["shape"], dims=raster["dims"], seed=spec["seed"])


def _source_checksum(ds) -> str:
    return C.checksum(ds[C.VAR].values)


def _level0_info(out: str, group: str = "0") -> dict[str, Any]:
    """Chunks, shards and codecs of ``<out>/<group>/data`` read from its zarr.json."""
    meta_path = Path(out) / group / C.VAR / "zarr.json"
    try:
        meta = json.loads(meta_path.read_text())
    except OSError:
        return {}
    chunks = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
    info: dict[str, Any] = {"shards": None, "chunks": chunks, "codecs": []}
    for codec in meta.get("codecs", []):
        if codec.get("name") == "sharding_indexed":
            cfg = codec.get("configuration", {})
            info["shards"] = chunks
            info["chunks"] = cfg.get("chunk_shape")
            info["codecs"] = [_codec_str(c) for c in cfg.get("codecs", [])]
        else:
            info["codecs"].append(_codec_str(codec))
    return info


def _codec_str(codec: dict[str, Any]) -> str:
    cfg = codec.get("configuration") or {}
    keep = {k: v for k, v in cfg.items() if k in ("level", "cname", "clevel", "shuffle", "endian", "checksum")}
    return codec.get("name", "?") + (json.dumps(keep, sort_keys=True) if keep else "")


def _verify_level0(out: str, ds) -> bool:
    import numpy as np
    import zarr

    arr = zarr.open_array(str(Path(out) / "0" / C.VAR), mode="r")
    got = arr[...]
    want = np.asarray(ds[C.VAR].values)
    return bool(got.shape == want.shape and np.array_equal(got, want, equal_nan=True))


def _warm_tmp() -> str:
    return tempfile.mkdtemp(prefix="bench-warm-")


def _ours_create(ds, levels: int):
    from topozarr_core import create_pyramid

    return create_pyramid(ds, levels=levels, x_dim=X, y_dim=Y, crs=CRS)


def _warmup_ours(dims: list[str]) -> None:
    shape = [2] * (len(dims) - 2) + [256, 256]
    tiny = C.synthetic_dataset(shape, dims=dims, seed=1)
    tmp = _warm_tmp()
    try:
        _ours_create(tiny, 3).write(tmp, mode="w", progress=False)
        enc = _ours_create(tiny, 1).encoding["/0"][C.VAR]
        tiny.to_zarr(os.path.join(tmp, "plain"), mode="w", zarr_format=3, consolidated=False,
                     encoding={C.VAR: dict(enc)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_ours(ds, spec: dict[str, Any], phase: str, out: str):
    """Our write of one phase: the pyramid (all levels), or level 0 alone (``levels=1``)."""
    kw = dict(mode="w", max_workers=spec["max_workers"], progress=False, io=spec["io"], stats=True)  # the report
    if phase == PH_PYRAMID:
        return _ours_create(ds, spec["raster"]["levels"]).write(
            out, keep_levels_in_memory=spec["keep_levels_in_memory"], **kw)
    return _ours_create(ds, 1).write(out, **kw)


def _child_ours(spec: dict[str, Any]) -> dict[str, Any]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import numpy as np  # noqa: F401

    import topozarr_core

    raster, phase, out = spec["raster"], spec["phase"], spec["out_path"]
    ds = _load_source(spec)
    extra: dict[str, Any] = {"topozarr_core_file": topozarr_core.__file__}
    if spec["source"] == "memory":
        extra["source_checksum"] = _source_checksum(ds)
    if spec["warmup"]:
        _warmup_ours(raster["dims"])

    if phase == PH_PYRAMID:
        with C.PhaseMeter() as m:
            rep = _write_ours(ds, spec, phase, out)
        extra["report"] = {"workers": rep.workers, "kept_in_memory": rep.kept_in_memory,
                           "regions": rep.regions, "bytes_written": rep.bytes_written, "io": rep.io}
    elif phase == PH_L0_PYRAMID:
        with C.PhaseMeter() as m:
            rep = _write_ours(ds, spec, phase, out)
        extra["report"] = {"workers": rep.workers, "regions": rep.regions, "io": rep.io}
    elif phase == PH_L0_TO_ZARR:
        import numpy as np

        enc = dict(_ours_create(ds, raster["levels"]).encoding["/0"][C.VAR])
        enc["_FillValue"] = np.nan
        plain = ds.drop_encoding()
        extra["to_zarr_encoding"] = {k: v for k, v in enc.items() if k != "_FillValue"}
        with C.PhaseMeter() as m:
            plain.to_zarr(out, group="0", mode="w", zarr_format=3, consolidated=False,
                          encoding={C.VAR: enc})
    else:
        raise ValueError(f"unknown phase {phase!r}")

    extra["level0"] = _level0_info(out)
    extra["out_bytes"] = C.dir_size(out)
    extra["out_files"] = C.dir_files(out)
    if spec["verify"]:
        extra["verified_level0"] = _verify_level0(out, ds)
    return {"meter": m.as_dict(), "extra": extra}


def _pypi_write(tz, ds, levels: int, out: str) -> dict[str, Any]:
    """Run the installed topozarr's pyramid write, whichever API generation it has."""
    sig = inspect.signature(tz.create_pyramid)
    kw: dict[str, Any] = {}
    if "x_dim" in sig.parameters:
        kw.update(x_dim=X, y_dim=Y)
    p = tz.create_pyramid(ds, levels=levels, **kw)
    if hasattr(p, "write"):
        wsig = inspect.signature(p.write)
        wkw = {"mode": "w"} if "mode" in wsig.parameters else {}
        p.write(out, **wkw)
        return {"api": "Pyramid.write"}
    # topozarr 0.0.x: a lazy (dask) DataTree plus encoding, written by xarray
    p.datatree.to_zarr(out, encoding=p.encoding, mode="w", zarr_format=3, consolidated=False)
    return {"api": "Pyramid.datatree.to_zarr (0.0.x)"}


def _child_pypi(spec: dict[str, Any]) -> dict[str, Any]:
    import importlib.metadata as md
    import importlib.util

    import topozarr as tz
    import xproj  # noqa: F401  (registers .proj)
    import zarr

    raster, out = spec["raster"], spec["out_path"]
    ds = _load_source(spec)
    extra: dict[str, Any] = {
        "version": md.version("topozarr"),
        "topozarr_file": tz.__file__,
        "zarr": zarr.__version__,
        "zarrs_installed": importlib.util.find_spec("zarrs") is not None,
    }
    try:
        extra["topozarr_core_version"] = md.version("topozarr-core")
    except md.PackageNotFoundError:
        pass
    if spec["source"] == "memory":
        extra["source_checksum"] = _source_checksum(ds)
    ds = ds.proj.assign_crs(spatial_ref=CRS)
    if spec["warmup"]:
        shape = [2] * (len(raster["dims"]) - 2) + [256, 256]
        tiny = C.synthetic_dataset(shape, dims=raster["dims"], seed=1).proj.assign_crs(spatial_ref=CRS)
        tmp = _warm_tmp()
        try:
            _pypi_write(tz, tiny, 3, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with C.PhaseMeter() as m:
        extra.update(_pypi_write(tz, ds, raster["levels"], out))
    extra["level0"] = _level0_info(out)
    extra["out_bytes"] = C.dir_size(out)
    extra["out_files"] = C.dir_files(out)
    if spec["verify"]:
        extra["verified_level0"] = _verify_level0(out, ds.drop_vars("spatial_ref", errors="ignore"))
    return {"meter": m.as_dict(), "extra": extra}


def _child_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    raster = spec["raster"]
    t0 = time.perf_counter()
    ds = C.synthetic_dataset(raster["shape"], dims=raster["dims"], seed=spec["seed"])
    t1 = time.perf_counter()
    c = spec["source_chunk"]
    C.write_source_zarr(ds, spec["source_path"], chunks={X: c, Y: c})
    t2 = time.perf_counter()
    return {"build_seconds": t1 - t0, "write_seconds": t2 - t1,
            "checksum": _source_checksum(ds), "bytes": C.dir_size(spec["source_path"])}


def _child_alternating(spec: dict[str, Any]) -> dict[str, Any]:
    """Pyramid and levels=1 writes taking turns in one warm process (the steady state of a worker).

    Each write first deletes its own previous output, so its pages are reused at once, as by a
    long-running process writing one pyramid after another. (In a fresh process per phase every
    page is new to the process; on VMs that hand freed guest memory back to the host after ~2 s,
    e.g. virtio-balloon free page reporting, each first touch costs ~2 ms/MB, which weighs on the
    phase that touches more memory.)
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    raster, base = spec["raster"], spec["out_path"]
    ds = _load_source(spec)
    if spec["warmup"]:
        _warmup_ours(raster["dims"])
    runs: dict[str, list[dict[str, Any]]] = {PH_PYRAMID: [], PH_L0_PYRAMID: []}
    for k in range(spec["pairs"]):
        order = (PH_L0_PYRAMID, PH_PYRAMID) if k % 2 == 0 else (PH_PYRAMID, PH_L0_PYRAMID)
        for phase in order:
            out = f"{base}-{phase}.zarr"
            C.drop_path(out)
            _sync()
            with C.PhaseMeter() as m:
                _write_ours(ds, spec, phase, out)
            runs[phase].append(m.as_dict())
    for phase in runs:
        C.drop_path(f"{base}-{phase}.zarr")
    return {"runs": runs}


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    phase = spec["phase"]
    if phase == PH_PREPARE:
        C.emit_result(_child_prepare(spec))
    elif phase == PH_ALTERNATING:
        C.emit_result(_child_alternating(spec))
    elif phase == PH_PYPI:
        C.emit_result(_child_pypi(spec))
    else:
        C.emit_result(_child_ours(spec))


# =================================================================================================
# parent side
# =================================================================================================


def _pypi_python(arg: str | None) -> tuple[str | None, str]:
    """(python path or None, why) for the PyPI topozarr comparison."""
    cand = arg if arg is not None else os.environ.get(ENV_PYPI)
    src = "--topozarr-python" if arg is not None else f"${ENV_PYPI}"
    if not cand:
        return None, (f"skipped: no --topozarr-python and ${ENV_PYPI} is unset. To compare, e.g. "
                      f"`python3.12 -m venv /tmp/tzvenv && /tmp/tzvenv/bin/pip install topozarr` "
                      f"then pass --topozarr-python /tmp/tzvenv/bin/python")
    if not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
        return None, f"skipped: {src}={cand!r} is not an executable file"
    # -I: isolated mode, so neither the cwd (this repo has its own ``topozarr_core`` package, which
    # would shadow PyPI's ``topozarr-core``) nor PYTHONPATH leak into the other venv
    probe = subprocess.run([cand, "-I", "-c", "import importlib.metadata as m, topozarr, xproj; "
                            "print(m.version('topozarr'))"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"skipped: {cand} cannot import topozarr/xproj ({last})"
    return cand, f"topozarr {probe.stdout.strip()} via {cand}"


def _run_phase(python: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    script = str(Path(__file__).resolve())
    if python == sys.executable:
        argv = [python, script, "--_child", json.dumps(spec)]
    else:  # another venv: isolated mode, never our paths (the script adds its own dir for _common)
        argv = [python, "-I", script, "--_child", json.dumps(spec)]
    return C.run_child(argv, timeout=timeout, cwd=tempfile.gettempdir())


def _sync() -> None:
    try:
        os.sync()
    except AttributeError:  # pragma: no cover
        pass


def run_benchmark(args) -> dict[str, Any]:
    rasters = SMALL if args.small else FULL
    if args.only:
        rasters = [r for r in rasters if r.name in args.only or str(rasters.index(r)) in args.only]
    pypi_py, pypi_note = _pypi_python(args.topozarr_python)
    phases = [PH_PYRAMID, PH_L0_PYRAMID, PH_L0_TO_ZARR] + ([PH_PYPI] if pypi_py else [])
    results: dict[str, Any] = {"machine": C.machine_summary(), "args": vars(args), "pypi": pypi_note,
                               "rasters": []}
    print(f"# bench_write: {C.machine_summary()}; source={args.source}; io={args.io}; "
          f"repeat={args.repeat}; workers={args.max_workers or 'auto'}", flush=True)
    print(f"# topozarr PyPI: {pypi_note}", flush=True)

    for raster in rasters:
        rdict = raster.as_dict() | {"dims": list(raster.dims)}
        rres: dict[str, Any] = {"raster": rdict, "nbytes": raster.nbytes, "runs": {p: [] for p in phases}}
        with C.scratch_dir(prefix="bench-write-", base=args.tmpdir, keep=args.keep) as work:
            base = {"raster": rdict, "source": args.source, "seed": args.seed, "io": args.io,
                    "max_workers": args.max_workers, "keep_levels_in_memory": args.keep_levels_in_memory,
                    "warmup": not args.no_warmup, "verify": args.verify,
                    "source_path": str(work / "source.zarr"), "source_chunk": args.source_chunk}
            if args.source == "zarr":
                prep = _run_phase(sys.executable, base | {"phase": PH_PREPARE}, args.timeout)
                rres["source"] = prep
                print(f"# {raster.name}: source zarr written ({prep['bytes'] / C.MB:.0f} MB on disk, "
                      f"chunks {args.source_chunk} along y/x, build {prep['build_seconds']:.1f} s, "
                      f"write {prep['write_seconds']:.1f} s, checksum {prep['checksum']})", flush=True)
            _sync()
            for rep in range(args.repeat):
                # rotate the order each repeat: a phase's time depends on what the one before it
                # left behind (freed memory the VM may have reclaimed, page cache), so no phase
                # should always follow the same one
                k = rep % len(phases)
                for phase in phases[k:] + phases[:k]:
                    out = work / f"out-{phase}.zarr"
                    python = pypi_py if phase == PH_PYPI else sys.executable
                    try:
                        r = _run_phase(python, base | {"phase": phase, "out_path": str(out)}, args.timeout)
                    except C.ChildError as err:
                        print(f"# {raster.name} {phase} repeat {rep}: FAILED\n{err}", flush=True)
                        r = {"error": str(err)}
                    rres["runs"][phase].append(r)
                    if "meter" in r:
                        m = r["meter"]
                        print(f"#   {raster.name} rep {rep} {PHASE_LABELS[phase]:<26} {m['seconds']:7.2f} s  "
                              f"peak {m['peak_rss'] / C.MB:7.0f} MB", flush=True)
                    C.drop_path(out)
                    _sync()
            if args.pairs > 0:
                try:
                    alt = _run_phase(sys.executable, base | {"phase": PH_ALTERNATING, "pairs": args.pairs,
                                                             "out_path": str(work / "alt")}, args.timeout)
                    rres["alternating"] = alt["runs"]
                    for k, (a, b) in enumerate(zip(alt["runs"][PH_PYRAMID], alt["runs"][PH_L0_PYRAMID])):
                        print(f"#   {raster.name} same process, pair {k}: pyramid {a['seconds']:.2f} s, "
                              f"levels=1 {b['seconds']:.2f} s -> {a['seconds'] / b['seconds']:.2f}x", flush=True)
                except C.ChildError as err:
                    print(f"# {raster.name} same-process pairs: FAILED\n{err}", flush=True)
                    rres["alternating"] = {"error": str(err)}
        results["rasters"].append(rres)
    return results


def _phase_stats(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if "meter" in r]
    if not ok:
        return None
    secs = C.summarize([r["meter"]["seconds"] for r in ok])
    peak = max(r["meter"]["peak_rss"] for r in ok)
    start = min(r["meter"]["start_rss"] for r in ok)
    cpu = C.summarize([r["meter"].get("cpu_seconds", float("nan")) for r in ok])
    loads = [r["meter"].get(k, float("nan")) for r in ok for k in ("load_start", "load_end")]
    others = [r["meter"].get("others_cpu_seconds", float("nan")) / max(r["meter"]["seconds"], 1e-9) for r in ok]
    return {"seconds": secs, "cpu": cpu, "max_load": max(loads), "max_others": max(others), "peak_rss": peak, "start_rss": start, "extra": ok[-1]["extra"],
            "rss_method": ok[-1]["meter"]["rss_method"]}


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    headers = ["raster", "phase", "seconds", "min s", "CPU s", "MB/s", "peak RSS MB", "phase +RSS MB",
               "out MB", "ratio vs L0 copy", "CPU ratio", "speedup vs PyPI"]
    rows: list[list[Any]] = []
    verdicts: list[str] = []
    notes: list[str] = []
    rss_method = ""
    max_load = 0.0
    max_others = -1.0  # < 0: not measured (no /proc/stat)
    for rres in results["rasters"]:
        name = rres["raster"]["name"] + f" L{rres['raster']['levels']}"
        mb = rres["nbytes"] / C.MB
        st = {p: _phase_stats(runs) for p, runs in rres["runs"].items()}
        base_candidates = {p: st[p]["seconds"]["median"] for p in (PH_L0_PYRAMID, PH_L0_TO_ZARR) if st.get(p)}
        best_base = min(base_candidates, key=base_candidates.get) if base_candidates else None
        base_s = base_candidates.get(best_base) if best_base else None
        base_cpu = st[best_base]["cpu"]["median"] if best_base else None
        ours = st.get(PH_PYRAMID)
        ours_s = ours["seconds"]["median"] if ours else None
        pypi = st.get(PH_PYPI)
        for phase, s in st.items():
            label = PHASE_LABELS[phase]
            if phase == PH_PYPI and s:
                label = f"topozarr {s['extra'].get('version', '?')} (PyPI)"
            if s is None:
                rows.append([name, label, "FAILED"] + [""] * (len(headers) - 3))
                continue
            rss_method = s["rss_method"]
            if s["max_load"] == s["max_load"]:
                max_load = max(max_load, s["max_load"])
            if s["max_others"] == s["max_others"]:
                max_others = max(max_others, s["max_others"])
            med = s["seconds"]["median"]
            ratio = ""
            if base_s and phase in (PH_PYRAMID, PH_L0_PYRAMID, PH_L0_TO_ZARR, PH_PYPI):
                ratio = f"{med / base_s:.2f}x" + (" (base)" if phase == best_base else "")
            cpu_ratio = ""
            if base_cpu and s["cpu"]["median"] == s["cpu"]["median"]:
                cpu_ratio = f"{s['cpu']['median'] / base_cpu:.2f}x"
            speed = ""
            if phase == PH_PYPI and ours_s:
                speed = f"ours {med / ours_s:.2f}x faster"
            rows.append([
                name, label, C.fmt_num(med), C.fmt_num(s["seconds"]["min"]), C.fmt_num(s["cpu"]["median"]),
                C.fmt_num(mb / med, 0),
                C.fmt_num(s["peak_rss"] / C.MB, 0), C.fmt_num((s["peak_rss"] - s["start_rss"]) / C.MB, 0),
                C.fmt_num(s["extra"].get("out_bytes", 0) / C.MB, 0), ratio, cpu_ratio, speed,
            ])
            if "verified_level0" in s["extra"]:
                ok = s["extra"]["verified_level0"]
                notes.append(f"{name} {label}: level 0 " + ("equals the source (verified)" if ok
                                                            else "does NOT match the source"))
        if ours_s and base_s:
            r = ours_s / base_s
            r_min = ours["seconds"]["min"] / st[best_base]["seconds"]["min"]
            r_cpu = ours["cpu"]["median"] / base_cpu
            verdicts.append(
                f"{name}: pyramid / level-0 copy = {r:.2f}x (baseline: {PHASE_LABELS[best_base]}, the faster; "
                f"vs the other: " + ", ".join(f"{ours_s / v:.2f}x vs {PHASE_LABELS[p]}"
                                              for p, v in base_candidates.items() if p != best_base)
                + f"; on min times {r_min:.2f}x; on CPU seconds {r_cpu:.2f}x) -> target <= 1.6x: "
                + f"{'MET' if r <= 1.6 else 'NOT MET'}")
        if ours_s and pypi:
            sp = pypi["seconds"]["median"] / ours_s
            sp_min = pypi["seconds"]["min"] / ours["seconds"]["min"]
            sp_cpu = pypi["cpu"]["median"] / ours["cpu"]["median"]
            v = pypi["extra"].get("version", "?")
            verdicts.append(f"{name}: ours vs topozarr {v} = {sp:.2f}x faster (on min times {sp_min:.2f}x; "
                            f"CPU seconds {sp_cpu:.2f}x less) -> target >= 1.3x"
                            f"{' (target is stated for 0.2.1)' if v != '0.2.1' else ''}: "
                            f"{'MET' if sp >= 1.3 else 'NOT MET'}")
        # encodings / codecs, to show the comparisons are like for like
        encs = {}
        for phase, s in st.items():
            if s and s["extra"].get("level0"):
                l0 = s["extra"]["level0"]
                encs[phase] = f"chunks {l0.get('chunks')} shards {l0.get('shards')} codecs {l0.get('codecs')}"
        if encs:
            same = len(set(v for p, v in encs.items() if p != PH_PYPI)) <= 1
            notes.append(f"{name} level-0 layout: " + "; ".join(f"{PHASE_LABELS[p]}: {v}" for p, v in encs.items())
                         + ("" if same else "  <-- ours/baselines DIFFER"))
        if ours:
            rep = ours["extra"].get("report", {})
            notes.append(f"{name} our write: workers={rep.get('workers')} kept_in_memory={rep.get('kept_in_memory')} "
                         f"regions={rep.get('regions')} io={rep.get('io')}")
        if pypi:
            e = pypi["extra"]
            notes.append(f"{name} PyPI: topozarr {e.get('version')} (core {e.get('topozarr_core_version', '-')}), "
                         f"zarr {e.get('zarr')}, zarrs installed there: {e.get('zarrs_installed')}, api {e.get('api')}")
            cks = {st[p]["extra"].get("source_checksum") for p in st if st[p] and st[p]["extra"].get("source_checksum")}
            if len(cks) > 1:
                notes.append(f"{name}: in-memory source checksums DIFFER between processes: {cks}")
    lines.append(C.format_table(headers, rows, align="llrrrrrrrrrl"))
    lines.append("")
    lines.append("MB/s = uncompressed level-0 source MB / median seconds; seconds = median over repeats "
                 "(min s = fastest). peak RSS = highest RSS of the child during the phase "
                 f"({rss_method}; includes the interpreter, imports and any data already resident); "
                 "phase +RSS = peak minus RSS at phase start. out MB = bytes on disk of the written store. "
                 "CPU s = user+system CPU seconds of the child (all threads) during the phase; CPU ratio = "
                 "CPU s / the baseline's CPU s. Verdicts use median wall times.")
    ncpu = os.cpu_count() or 1
    if max_others >= 0:  # measured from /proc/stat: CPU used by other processes
        if max_others > 0.25:
            lines.append(f"WARNING: other processes used up to {max_others:.2f} CPUs during a phase (of {ncpu}): "
                         "wall times are inflated and noisy; prefer 'min s' and 'CPU s' for comparisons, or "
                         "rerun on an idle machine.")
        else:
            lines.append(f"Machine idle enough: other processes used at most {max_others:.2f} CPUs during any phase.")
    elif max_load > ncpu:
        lines.append(f"WARNING: the 1-min load average reached {max_load:.1f} on {ncpu} CPUs during the run (it counts "
                     "this benchmark's own threads too): wall times may be inflated; prefer 'min s' and 'CPU s'.")
    lines.append(f"topozarr PyPI: {results['pypi']}")
    alt_lines = _alternating_report(results)
    if alt_lines:
        lines.append("")
        lines.extend(alt_lines)
    lines.append("")
    lines.extend(verdicts)
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def _alternating_report(results: dict[str, Any]) -> list[str]:
    """The same-process table: pyramid and levels=1 writes taking turns in one warm process."""
    import statistics

    rows, verdicts = [], []
    for rres in results["rasters"]:
        alt = rres.get("alternating")
        if not alt or "error" in alt:
            continue
        name = rres["raster"]["name"] + f" L{rres['raster']['levels']}"
        pyr, l0 = alt[PH_PYRAMID], alt[PH_L0_PYRAMID]
        pyr_s = statistics.median(r["seconds"] for r in pyr)
        l0_s = statistics.median(r["seconds"] for r in l0)
        pair = [a["seconds"] / b["seconds"] for a, b in zip(pyr, l0)]
        cpu = statistics.median(r["cpu_seconds"] for r in pyr) / statistics.median(r["cpu_seconds"] for r in l0)
        rows.append([name, len(pair), C.fmt_num(pyr_s), C.fmt_num(l0_s), f"{pyr_s / l0_s:.2f}x",
                     f"{statistics.median(pair):.2f}x", f"{min(pair):.2f}-{max(pair):.2f}x", f"{cpu:.2f}x",
                     C.fmt_num(max(r["peak_rss"] - r["start_rss"] for r in pyr) / C.MB, 0),
                     C.fmt_num(max(r["peak_rss"] - r["start_rss"] for r in l0) / C.MB, 0)])
        verdicts.append(f"{name}, same process: pyramid / levels=1 write = {pyr_s / l0_s:.2f}x (median of pair "
                        f"ratios {statistics.median(pair):.2f}x) -> target <= 1.6x: "
                        f"{'MET' if pyr_s / l0_s <= 1.6 else 'NOT MET'}")
    if not rows:
        return []
    headers = ["raster", "pairs", "pyramid s", "levels=1 s", "ratio", "pair ratio (median)", "pair ratios",
               "CPU ratio", "pyramid +RSS MB", "levels=1 +RSS MB"]
    return (["Same process (one warm child, the two writes taking turns, each deleting its own previous "
             "output first: a long-running worker's steady state; medians):",
             C.format_table(headers, rows, align="lrrrrrrrrr")] + verdicts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="quick run: 2048x2048 (6 levels) and 8x512x512 (4 levels)")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per phase (median reported)")
    ap.add_argument("--source", choices=("memory", "zarr"), default="zarr",
                    help="zarr (default): read a local zarr lazily (xr.open_zarr(chunks=None)); "
                         "memory: an in-memory numpy raster")
    ap.add_argument("--source-chunk", type=int, default=512, help="y/x chunk edge of the source zarr")
    ap.add_argument("--topozarr-python", default=None,
                    help=f"python of a venv with PyPI topozarr (default: ${ENV_PYPI}; skipped when absent)")
    ap.add_argument("--io", choices=("auto", "python", "rust"), default="auto",
                    help="our write's codec pipeline (auto: zarrs on these local targets, as topozarr)")
    ap.add_argument("--max-workers", type=int, default=None, help="our write's max_workers (default auto)")
    ap.add_argument("--keep-levels-in-memory", type=lambda s: {"auto": None, "true": True, "false": False}[s.lower()],
                    default=None, help="auto|true|false (default auto)")
    ap.add_argument("--only", nargs="*", help="raster names or indexes (0, 1) to run")
    ap.add_argument("--pairs", type=int, default=5,
                    help="same-process pyramid / levels=1 pairs per raster, after the per-phase children (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", action="store_true", help="check level 0 of every output equals the source (untimed)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the tiny untimed warm-up write in each child")
    ap.add_argument("--tmpdir", default=None, help="where sources and outputs go (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directories")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per child process")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child is not None:
        child_main(args._child)
        return 0
    t0 = time.perf_counter()
    results = run_benchmark(args)
    print()
    print(report(results))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
