"""Shared helpers for the benchmark scripts: synthetic rasters, timing, peak RSS, child processes.

Kept generic and light on imports so any benchmark (and a child process running under *another*
interpreter, e.g. a separate venv with PyPI ``topozarr``) can import it: only the standard library
at import time; numpy/xarray/zarr are imported inside the functions that need them.

Measuring a phase
-----------------
Peak RSS is per phase: each measured phase runs in a fresh child process
(:func:`run_child`), which sets its data up, then enters :class:`PhaseMeter`. On Linux the meter
resets the process's RSS high-water mark (``/proc/self/clear_refs`` = 5) after set-up, so the
reported peak is the highest RSS *during the phase* (it still includes whatever was already
resident, e.g. an in-memory source). Elsewhere it falls back to sampling RSS in a thread.
The child prints one ``RESULT_MARKER`` line with a JSON payload; :func:`run_child` parses it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1_000_000
MiB = 1 << 20
RESULT_MARKER = "@@BENCH_RESULT@@"

#: Default variable name of the synthetic rasters.
VAR = "data"
#: Metres per pixel of the synthetic EPSG:3857 grids (any uniform spacing works).
PIXEL_SIZE = 100.0


# -- synthetic data ------------------------------------------------------------------------------


def _field_rows(rng, y0: int, y1: int, nx: int, ny: int, phase: float, noise: float,
                nan_fraction: float):
    """Rows ``y0:y1`` of a smooth-ish float32 field: sum of sines + noise, with NaN holes."""
    import numpy as np

    yy = (np.arange(y0, y1, dtype=np.float32) / max(ny, 1))[:, None]
    xx = (np.arange(nx, dtype=np.float32) / max(nx, 1))[None, :]
    two_pi = np.float32(2 * math.pi)
    out = np.empty((y1 - y0, nx), dtype=np.float32)
    out[...] = np.sin(two_pi * (3 * xx + phase)) * np.float32(10.0)
    out += np.sin(two_pi * (2 * yy - phase)) * np.float32(7.0)
    out += np.sin(two_pi * (11 * xx + 7 * yy)) * np.float32(2.0)
    out += np.sin(two_pi * (37 * xx)) * np.sin(two_pi * (29 * yy)) * np.float32(0.5)
    if noise:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise)
    # a large circular "no data" hole (like an ocean mask) plus scattered missing pixels
    hole = (xx - np.float32(0.7)) ** 2 + (yy - np.float32(0.3)) ** 2 < np.float32(0.01)
    out[hole] = np.nan
    if nan_fraction:
        out[rng.random(out.shape, dtype=np.float32) < nan_fraction] = np.nan
    return out.astype(np.float32, copy=False)


def synthetic_array(shape: Sequence[int], seed: int = 0, noise: float = 0.25,
                    nan_fraction: float = 0.01, block_rows: int = 1024):
    """A deterministic float32 array of ``shape`` (..., y, x): smooth field + noise + NaNs.

    Built in row blocks so temporaries stay small. The same ``seed``, shape and numpy version
    give the same bytes in any process (checked with :func:`checksum`).
    """
    import numpy as np

    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise ValueError(f"need at least (y, x), got shape {shape}")
    *lead, ny, nx = shape
    out = np.empty(shape, dtype=np.float32)
    flat = out.reshape((-1, ny, nx))
    rng = np.random.default_rng(seed)
    for i in range(flat.shape[0]):
        phase = 0.05 * i
        for y0 in range(0, ny, block_rows):
            y1 = min(ny, y0 + block_rows)
            flat[i, y0:y1] = _field_rows(rng, y0, y1, nx, ny, phase, noise, nan_fraction)
    return out


def synthetic_dataset(shape: Sequence[int], dims: Sequence[str] | None = None, seed: int = 0,
                      var: str = VAR, noise: float = 0.25, nan_fraction: float = 0.01,
                      pixel_size: float = PIXEL_SIZE, origin: tuple[float, float] = (0.0, 0.0)):
    """An ``xr.Dataset`` with one float32 variable over ``dims`` (default ``(..., "y", "x")``).

    x/y are uniform pixel-centre coordinates in metres (EPSG:3857-like; y decreasing as in
    north-up rasters); any leading dim gets an integer coordinate. No CRS is attached: pass
    ``crs="EPSG:3857"`` to the writer (or use xproj's ``assign_crs``).
    """
    import numpy as np
    import xarray as xr

    shape = tuple(int(n) for n in shape)
    if dims is None:
        lead = ("time", "band", "z")[: len(shape) - 2]
        dims = (*lead, "y", "x")
    dims = tuple(dims)
    if len(dims) != len(shape):
        raise ValueError(f"dims {dims} do not match shape {shape}")
    values = synthetic_array(shape, seed=seed, noise=noise, nan_fraction=nan_fraction)
    ny, nx = shape[-2], shape[-1]
    x0, y0 = origin
    coords: dict[str, Any] = {
        dims[-2]: y0 - pixel_size * (np.arange(ny) + 0.5),
        dims[-1]: x0 + pixel_size * (np.arange(nx) + 0.5),
    }
    for d, n in zip(dims[:-2], shape[:-2]):
        coords[d] = np.arange(n, dtype="int64")
    ds = xr.Dataset({var: (dims, values, {"long_name": "synthetic field", "units": "1"})}, coords=coords)
    ds.attrs["title"] = f"synthetic {'x'.join(map(str, shape))} float32 (seed {seed})"
    return ds


def checksum(arr) -> str:
    """Short content hash of an array (NaNs included bitwise)."""
    import hashlib

    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8)).hexdigest()[:16]


def write_source_zarr(ds, path: str | os.PathLike, chunks: dict[str, int] | None = None,
                      zarr_format: int = 3) -> str:
    """Write ``ds`` to a local zarr (default codec), chunked by ``chunks`` per dim (missing dims:
    whole dim; leading non-spatial dims default to 1). Returns the path as a string."""
    path = os.fspath(path)
    chunks = dict(chunks or {})
    encoding = {}
    for name, da in ds.data_vars.items():
        c = []
        for d, n in zip(da.dims, da.shape):
            default = n if d in (da.dims[-1], da.dims[-2]) else 1
            c.append(int(min(n, chunks.get(d, default))))
        encoding[name] = {"chunks": tuple(c)}
    ds.to_zarr(path, mode="w", zarr_format=zarr_format, consolidated=False, encoding=encoding)
    return path


def open_source_zarr(path: str | os.PathLike):
    """Open a zarr lazily without dask (``chunks=None``): values are read on indexing."""
    import xarray as xr

    return xr.open_zarr(os.fspath(path), chunks=None, consolidated=False)


# -- sizes ---------------------------------------------------------------------------------------


def dir_size(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def dir_files(path: str | os.PathLike) -> int:
    return sum(len(files) for _r, _d, files in os.walk(path))


# -- memory --------------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 -- pragma: no cover
        return 0


def lifetime_peak_rss_bytes() -> int:
    """Peak RSS of this process since start (or since the last high-water reset)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru) * (1 if sys.platform == "darwin" else 1024)


def peak_rss_bytes() -> int:
    """Peak RSS of this process since the last :func:`reset_peak_rss` (Linux ``VmHWM``), else since start."""
    kb = _proc_status_kb("VmHWM")
    return kb * 1024 if kb is not None else lifetime_peak_rss_bytes()


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ``clear_refs``). False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    hwm = _proc_status_kb("VmHWM")
    rss = _proc_status_kb("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 4096


class _Sampler(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = current_rss_bytes()
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.wait(self.interval):
            self.peak = max(self.peak, current_rss_bytes())

    def stop(self) -> int:
        self._stop_evt.set()
        self.join()
        return max(self.peak, current_rss_bytes())


@dataclass
class PhaseResult:
    """Timing and memory of one measured phase (one process)."""

    seconds: float = math.nan
    peak_rss: int = 0  # bytes: highest RSS during the phase
    start_rss: int = 0  # bytes: RSS when the phase started (after set-up)
    rss_method: str = ""
    cpu_seconds: float = math.nan  # user + system CPU of this process (all threads) during the phase
    load_start: float = math.nan  # 1-minute load average when the phase started
    load_end: float = math.nan
    #: CPU seconds used by everything else on the machine during the phase (NaN without /proc/stat)
    others_cpu_seconds: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "peak_rss": self.peak_rss,
            "start_rss": self.start_rss,
            "rss_method": self.rss_method,
            "cpu_seconds": self.cpu_seconds,
            "load_start": self.load_start,
            "load_end": self.load_end,
            "others_cpu_seconds": self.others_cpu_seconds,
            "extra": self.extra,
        }


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (``/proc/stat``; NaN elsewhere).

    Minus this process's own CPU over a phase, it says how much the rest of the machine competed:
    a better signal than the load average, which counts this benchmark's own threads too.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return math.nan


def load_average() -> float:
    """1-minute load average (NaN where unsupported). Above the CPU count, other processes compete
    for the CPUs and wall times are inflated: compare CPU seconds or minimum times then."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


@contextmanager
def PhaseMeter(sample_interval: float = 0.02) -> Iterator[PhaseResult]:  # noqa: N802
    """Time a block and measure its peak RSS. Use in a fresh process for per-phase peaks::

        with PhaseMeter() as m:
            work()
        print(m.seconds, m.peak_rss)
    """
    import gc

    gc.collect()
    res = PhaseResult(start_rss=current_rss_bytes(), load_start=load_average())
    hwm_ok = reset_peak_rss()
    sampler = None
    if not hwm_ok:
        sampler = _Sampler(sample_interval)
        sampler.start()
    cpu0 = _cpu_seconds()
    busy0 = machine_busy_seconds()
    t0 = time.perf_counter()
    try:
        yield res
    finally:
        res.seconds = time.perf_counter() - t0
        res.cpu_seconds = _cpu_seconds() - cpu0
        res.others_cpu_seconds = max(0.0, machine_busy_seconds() - busy0 - res.cpu_seconds)
        res.load_end = load_average()
        if hwm_ok:
            res.peak_rss = max(lifetime_peak_rss_bytes(), (_proc_status_kb("VmHWM") or 0) * 1024)
            res.rss_method = "VmHWM reset at phase start"
        else:
            res.peak_rss = sampler.stop()
            res.rss_method = f"sampled every {sample_interval * 1000:.0f} ms"


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t["seconds"]``."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0


# -- child processes -----------------------------------------------------------------------------


def emit_result(payload: dict[str, Any]) -> None:
    """Print the child's result line (the parent looks for ``RESULT_MARKER``)."""
    sys.stdout.write(RESULT_MARKER + json.dumps(payload, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


class ChildError(RuntimeError):
    pass


def run_child(argv: Sequence[str], timeout: float | None = None, env: dict[str, str] | None = None,
              cwd: str | None = None) -> dict[str, Any]:
    """Run ``argv`` (a python command line) and return the JSON after ``RESULT_MARKER``.

    Raises :class:`ChildError` with the child's stderr tail when it fails or prints no result.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
    if proc.returncode != 0 or result is None:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise ChildError(f"child {' '.join(map(str, argv[:3]))} ... exited {proc.returncode}:\n{tail}")
    return result


@contextmanager
def scratch_dir(prefix: str = "bench-", base: str | None = None, keep: bool = False) -> Iterator[Path]:
    """A temporary directory, removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def drop_path(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- reporting -----------------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, float]:
    vals = [v for v in values if v == v]
    if not vals:
        return {"min": math.nan, "median": math.nan, "max": math.nan, "n": 0}
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def fmt_num(value: float | None, digits: int = 2, width: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        s = "-"
    else:
        s = f"{value:.{digits}f}"
    return s.rjust(width) if width else s


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table; ``align`` is one char per column ('l' or 'r', default: first l, rest r)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ("l" + "r" * (len(headers) - 1))

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def machine_summary() -> str:
    """One line about the machine (CPUs, RAM, python)."""
    import platform

    ram = ""
    try:
        import psutil

        ram = f", {psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    except ImportError:
        pass
    return f"{platform.machine()} {os.cpu_count()} CPUs{ram}, Python {platform.python_version()}"


# -- an S3 endpoint on loopback ------------------------------------------------------------------


@dataclass(frozen=True)
class S3Endpoint:
    """A bucket on an S3 endpoint (moto's server on loopback): what the stores and the environment need."""

    endpoint_url: str
    bucket: str

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true"}

    def boto3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def zarr_store(self, prefix: str, read_only: bool = False):
        from obstore.store import S3Store
        from zarr.storage import ObjectStore

        store = S3Store(self.bucket, prefix=prefix, endpoint=self.endpoint_url, access_key_id="testing",
                        secret_access_key="testing", region="us-east-1", client_options={"allow_http": True})
        return ObjectStore(store, read_only=read_only)


def start_s3(log_path: str | os.PathLike, bucket: str = "bench") -> tuple[subprocess.Popen, S3Endpoint]:
    """moto's S3 server in a subprocess on a free loopback port, with ``bucket`` created."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    endpoint = S3Endpoint(f"http://127.0.0.1:{port}", bucket)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint.endpoint_url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_process(proc)
                raise RuntimeError(f"moto server did not start; see {log_path}") from None
            time.sleep(0.1)
    endpoint.boto3_client().create_bucket(Bucket=bucket)
    return proc, endpoint


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

