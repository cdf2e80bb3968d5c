"""A reader never sees a published pyramid over missing, partial or mixed data, at any instant,
even after kill -9 (the protocol of topozarr_core/write/protocol.py, topozarr_core/publish/ and store/lease.py).

* Reader threads: while ``Pyramid.write`` rebuilds a pyramid (``mode="w"``: another source AND
  another layout) or rewrites some of its levels (``mode="a"``: another method), a reader loops:
  root ``zarr.json`` (r1); if it is published, random regions of random levels it lists (zarr and
  xarray); root again (r2). When r1 == r2 every read must have succeeded and equal, exactly, the
  clean build of the pyramid that root describes (a missing chunk reads as NaN: a mismatch).
* kill -9: a writer process (forked by the tests/kill_writer.py zygote) rebuilding over an existing
  pyramid of ours is SIGKILLed at random moments (seeded), delete phase included. The root is then
  the old complete pyramid, the new complete one, or unpublished -- exactly which one is also
  checked against the phase the writer had reached. A rerun in this process proceeds at once
  (the dead writer's lease is stale) and ends equal to a clean build. Also a ``mode="a"`` rewrite
  of levels 1-2 killed the same way (local).

Local targets and S3 targets (a moto server on loopback). Also: the reader does catch a writer that
breaks the protocol (deletes before unpublishing, publishes before its levels exist); a
``mode="a"`` method change leaves no stale hidden missing-count arrays; and a first build killed
mid-write (leaving only a temporary ``*.partial`` file) does not block its rerun.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from tests.helpers.compare import assert_same_pyramid, snapshot
from tests.helpers.scripts.kill_writer import make_source
from topozarr_core import create_pyramid
from topozarr_core.layout.conventions import comparable
from topozarr_core.publish.root_doc import STATUS_KEY
from topozarr_core.store.lease import LEASE_KEY, TargetBusy, holder, stale_reason

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[3]
#: Layout options shared by every pyramid here: 128 x 128 chunks, one chunk per shard (many objects).
LAYOUT = {"chunks_per_shard": 1, "target_chunk_bytes": 65_536}


# -- expected pyramids ----------------------------------------------------------------------------

@dataclass
class Expected:
    """A clean build: its root document and every node's metadata and decoded values."""

    label: str
    path: str
    root: dict
    nodes: dict[str, tuple[dict, np.ndarray | None]]
    arrays: dict[str, list[str]] = field(default_factory=dict)  # level -> array paths below it

    @classmethod
    def build(cls, label: str, path: Path, source: dict, pyramid: dict) -> Expected:
        create_pyramid(make_source(**source), x_dim="lon", y_dim="lat", **pyramid).write(path, mode="w-")
        root = json.loads((path / "zarr.json").read_bytes())
        nodes = snapshot(str(path))
        arrays: dict[str, list[str]] = {}
        for key, (_, values) in nodes.items():
            if values is not None and "/" in key and not key.startswith("_"):
                arrays.setdefault(key.split("/")[0], []).append(key)
        return cls(label, str(path), root, nodes, arrays)


def _root_bytes(store: Any) -> bytes | None:
    try:
        buf = sync(store.get("zarr.json", prototype=default_buffer_prototype()))
    except FileNotFoundError:
        return None
    return None if buf is None else buf.to_bytes()


def _classify(raw: bytes | None, known: list[Expected]) -> str:
    """"old"/"new" (a published root equal to that clean build's), "unpublished", or what else it is."""
    if raw is None:
        return "missing"
    try:
        doc = json.loads(raw)
    except ValueError:
        return "not-json"
    attrs = doc.get("attributes") or {}
    if "multiscales" not in attrs:
        return "unpublished" if attrs.get(STATUS_KEY) else "unpublished-without-status"
    for exp in known:
        if doc == exp.root:
            return exp.label
    return "published-unknown"


# -- 1. reader threads ------------------------------------------------------------------------------

@dataclass
class Sample:
    state: str  # _classify of r1
    stable: bool  # r1 == r2
    t0: float
    t1: float
    reads: int = 0
    errors: list[str] = field(default_factory=list)


class Reader(threading.Thread):
    """Loops over samples of ``store`` until stopped; see the module docstring."""

    def __init__(self, store: Any, known: list[Expected], seed: int, k: int = 4) -> None:
        super().__init__(name="never-broken-reader", daemon=True)
        self.store, self.known, self.k = store, known, k
        self.by_label = {e.label: e for e in known}
        self.rng = random.Random(seed)
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.samples.append(self.sample())
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.crash = err

    def sample(self) -> Sample:
        t0 = time.monotonic()
        r1 = _root_bytes(self.store)
        state = _classify(r1, self.known)
        s = Sample(state, False, t0, t0)
        if state in self.by_label:
            exp = self.by_label[state]
            levels = [entry["asset"] for entry in json.loads(r1)["attributes"]["multiscales"]["layout"]]
            for i in range(self.k):
                level = self.rng.choice(levels)
                try:
                    self._check_read(exp, level, use_xarray=(i == 0 and len(self.samples) % 3 == 0))
                except Exception as err:  # noqa: BLE001 - a failed read under a published root
                    s.errors.append(f"level {level}: {type(err).__name__}: {str(err)[:300]}")
                s.reads += 1
        r2 = _root_bytes(self.store)
        s.stable, s.t1 = r1 == r2, time.monotonic()
        return s

    def _check_read(self, exp: Expected, level: str, use_xarray: bool) -> None:
        if use_xarray:  # a whole level opened the way users do, one window of the data variable
            path = f"{level}/air"
            want = exp.nodes[path][1]
            window = self._window(want.shape)
            ds = xr.open_zarr(self.store, group=level, zarr_format=3, consolidated=False, chunks=None)
            got = ds["air"][window].values
        else:
            path = self.rng.choice(exp.arrays[level] + [f"{level}/air"] * 3)
            meta, want = exp.nodes[path]
            arr = zarr.open_array(self.store, path=path, mode="r", zarr_format=3)
            if comparable(arr.metadata.to_dict()) != comparable(meta):
                raise AssertionError(f"{path}: array metadata differs from the {exp.label} pyramid's")
            window = self._window(want.shape)
            got = arr[window]
        bad = _differing(np.asarray(got), want[window])
        if bad:
            raise AssertionError(f"{path}{list(window)}: {bad} values differ from the {exp.label} pyramid's")

    def _window(self, shape: tuple[int, ...]) -> tuple[slice, ...]:
        out = []
        for n in shape:
            a = self.rng.randrange(n)
            out.append(slice(a, min(n, a + self.rng.randint(1, 300))))
        return tuple(out)


def _differing(got: np.ndarray, want: np.ndarray) -> int:
    """How many values differ (NaN equals NaN; a NaN read where a value is expected differs)."""
    if got.shape != want.shape:
        return max(got.size, want.size, 1)
    same = got == want
    if got.dtype.kind == "f" and want.dtype.kind == "f":
        same |= np.isnan(got) & np.isnan(want)
    return int(np.size(same) - np.count_nonzero(same))


def _violations(samples: list[Sample]) -> list[str]:
    out = []
    for s in samples:
        if s.state in ("missing", "not-json", "unpublished-without-status", "published-unknown"):
            out.append(f"root was {s.state} at t={s.t0:.3f}")
        elif s.stable and s.errors:
            out.append(f"stable {s.state} root, t={s.t0:.3f}..{s.t1:.3f}: " + "; ".join(s.errors[:3]))
    return out


def _target(kind: str, tmp_path: Path, request) -> tuple[str, Any]:
    """(the writers' target, a read-only store of it for readers)."""
    if kind == "local":
        return str(tmp_path / "p.zarr"), LocalStore(str(tmp_path / "p.zarr"), read_only=True)
    s3 = request.getfixturevalue("s3_env")  # AWS_* in os.environ for the s3:// URL
    prefix = request.getfixturevalue("s3_prefix")
    return f"s3://{s3.bucket}/{prefix}/p.zarr", s3.zarr_store(f"{prefix}/p.zarr", read_only=True)


#: Raster edge per target kind: 1024 x 1024 float32 (85 chunks per pyramid) locally; 512 x 512 on the
#: loopback S3 endpoint, whose requests are ~10x slower.
READER_EDGE = {"local": 1024, "s3": 512}


def reader_pyramids(mode: str, edge: int) -> dict[str, tuple[dict, dict]]:
    """label -> (source, create_pyramid options). mode="w": the rebuild changes the source (values
    + 1000) and the layout (levels, method); mode="a": levels 1 and 2 are rewritten with another
    method (level 0 is kept)."""
    src = {"ny": edge, "nx": edge}
    if mode == "w":
        return {"old": (src, {"levels": 3, "method": "mean", **LAYOUT}),
                "new": ({**src, "offset": 1000.0}, {"levels": 4, "method": "max", **LAYOUT})}
    return {"old": (src, {"levels": 3, "method": "mean", **LAYOUT}),
            "new": (src, {"levels": 3, "method": "max", **LAYOUT})}


@pytest.fixture(scope="module")
def reader_expected(tmp_path_factory):
    """(mode, edge) -> {label: clean build} (built once per module)."""
    base = tmp_path_factory.mktemp("never-broken-clean")
    cache: dict[tuple[str, int], dict[str, Expected]] = {}

    def get(mode: str, edge: int) -> dict[str, Expected]:
        if (mode, edge) not in cache:
            cache[mode, edge] = {label: Expected.build(label, base / f"{mode}-{edge}-{label}.zarr", *spec)
                                 for label, spec in reader_pyramids(mode, edge).items()}
        return cache[mode, edge]

    return get


@pytest.mark.parametrize("mode", ["w", "a"])
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_reader_never_sees_broken_pyramid_during_rewrite(kind, mode, reader_expected, tmp_path, request,
                                                         monkeypatch):
    expected = reader_expected(mode, READER_EDGE[kind])
    _hold_writer_at_the_edges(monkeypatch, HOLD[kind])
    pyramids = {label: create_pyramid(make_source(**src), x_dim="lon", y_dim="lat", **opts)
                for label, (src, opts) in reader_pyramids(mode, READER_EDGE[kind]).items()}
    target, rstore = _target(kind, tmp_path, request)
    pyramids["old"].write(target, mode="w", max_workers=1)
    assert_same_pyramid(rstore, expected["old"].path)

    reader = Reader(rstore, list(expected.values()), seed=7)
    reader.start()
    write_kw = {"mode": "w"} if mode == "w" else {"mode": "a", "levels": [1, 2]}
    writes: list[tuple[float, float]] = []
    rewrites = 4 if kind == "local" else 2  # old -> new -> old -> new ...
    try:
        _wait_for_samples(reader, after=time.monotonic(), n=3)
        for i in range(rewrites):
            label = "new" if i % 2 == 0 else "old"
            t0 = time.monotonic()
            pyramids[label].write(target, max_workers=1, max_region_bytes=200_000, **write_kw)
            writes.append((t0, time.monotonic()))
            _wait_for_samples(reader, after=writes[-1][1], n=3)  # the reader sees the published result
    finally:
        reader.stop.set()
        reader.join(timeout=60)
    assert reader.crash is None, f"the reader crashed: {reader.crash!r}"
    final = "new" if rewrites % 2 else "old"
    assert_same_pyramid(rstore, expected[final].path)

    samples = reader.samples
    during = [s for s in samples if any(a <= s.t0 and s.t1 <= b for a, b in writes)]
    counts = {state: sum(1 for s in samples if s.state == state) for state in {s.state for s in samples}}
    verified = {label: sum(1 for s in samples if s.state == label and s.stable and not s.errors)
                for label in expected}
    verified_during = {label: sum(1 for s in during if s.state == label and s.stable and not s.errors)
                       for label in expected}
    raced = sum(1 for s in samples if not s.stable)
    reads = sum(s.reads for s in samples if s.stable)
    summary = (f"{kind} mode={mode}: {len(samples)} samples ({len(during)} while a write ran), states {counts}, "
               f"verified {verified} ({verified_during} while a write ran; {reads} reads), "
               f"root changed mid-sample {raced}, "
               f"writes {[round(b - a, 2) for a, b in writes]} s")
    print(summary)
    assert _violations(samples) == [], summary
    assert len(during) >= 20, summary
    assert counts.get("unpublished", 0) >= 1, summary  # the reader did see the rewrites in progress
    assert min(verified.values()) >= 3, summary
    # ... and verified old and new pyramids while a write was in progress (before its unpublish, after its publish)
    for label in expected:
        assert sum(1 for s in during if s.state == label and s.stable and not s.errors) >= rewrites // 2, summary


#: Seconds the writer pauses (in this process) once its checks are done and its lease taken, just
#: before it unpublishes the root, and again right after it published the new root: windows in
#: which the reader verifies the old pyramid, then the new one, while the write is in progress.
#: (A sample on the loopback S3 endpoint takes ~0.1 s while the writer keeps it busy.)
HOLD = {"local": 0.1, "s3": 0.4}


def _hold_writer_at_the_edges(monkeypatch, seconds: float) -> None:
    import topozarr_core.write.protocol as protocol

    prepare_target, publish_root = protocol.prepare_target, protocol.publish_root

    def held_prepare_target(*args: Any, **kw: Any) -> Any:
        time.sleep(seconds)
        return prepare_target(*args, **kw)

    def held_publish(*args: Any, **kw: Any) -> Any:
        out = publish_root(*args, **kw)
        time.sleep(seconds)
        return out

    monkeypatch.setattr(protocol, "prepare_target", held_prepare_target)
    monkeypatch.setattr(protocol, "publish_root", held_publish)


def _wait_for_samples(reader: Reader, after: float, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for s in reader.samples if s.t0 > after and s.stable) < n:
        assert reader.is_alive(), f"the reader stopped: {reader.crash!r}"
        assert time.monotonic() < deadline, "the reader made no progress"
        time.sleep(0.005)


# -- 2. kill -9 -------------------------------------------------------------------------------------

class Zygote:
    """The tests/kill_writer.py process: forks one writer per command and reports on stdout."""

    def __init__(self, log: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"  # fork() of a process with threads
        self.log_path = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.scripts.kill_writer"], cwd=ROOT, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True, bufsize=1)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.expect("ready", timeout=120)

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "eof"})

    def expect(self, event: str, timeout: float = 120, into: list | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                doc = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"kill_writer: no {event!r} within {timeout} s; log: {self.log()}") from None
            if doc["event"] == "eof":
                raise AssertionError(f"kill_writer ended; log: {self.log()}")
            if into is not None:
                into.append(doc)
            if doc["event"] == event or (doc["event"] == "mark" and event == f"mark:{doc['mark']}"):
                return doc
            if event.startswith("mark:") and doc["event"] == "exit":
                raise AssertionError(f"the writer ended before {event!r}: {into}")

    def log(self) -> str:
        return self.log_path.read_text()[-3000:]

    def run(self, cmd: dict, delay: float | None, after: str = "start") -> tuple[list[dict], dict]:
        """Fork a writer for ``cmd``; SIGKILL it ``delay`` s after its marker ``after`` (None: let it
        finish). Returns its markers and its exit event."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        events: list[dict] = []  # the writer's first markers may come before the zygote's "pid" line
        pid = self.expect("pid", into=events)["pid"]
        pidfd = os.pidfd_open(pid)  # signals go to this process even if its pid were reused

        def mark(name: str) -> dict:
            seen = [e for e in events if e["event"] == "mark" and e["mark"] == name]
            return seen[0] if seen else self.expect(f"mark:{name}", into=events)

        try:
            mark("start")
            if delay is not None:
                time.sleep(max(0.0, mark(after)["t"] + delay - time.monotonic()))
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:  # it finished first
                    pass
            end = self.expect("exit", into=events)
        finally:
            os.close(pidfd)
        marks = [e for e in events if e["event"] == "mark" and e["pid"] == pid]
        return marks, end

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("kill-writer") / "kill_writer.log")
    yield z
    z.close()


def _phase(marks: list[dict]) -> str:
    """How far the writer got before it died (its markers are written synchronously)."""
    names = [(m["mark"], m.get("published")) for m in marks]
    if ("done", None) in names:
        return "done"
    if ("root-written", True) in names:
        return "releasing"  # published; the lease is being released
    if ("root-write-begin", True) in names:
        return "publishing"
    if any(n in ("deleted", "level") for n, _ in names):
        return "levels"
    if ("deleting", None) in names:
        return "deleting"
    if ("root-written", False) in names:
        return "unpublished"
    if ("root-write-begin", False) in names:
        return "unpublishing"
    return "checks"


#: What the root may be after a kill in each phase: "prev" the pyramid rebuilt over, "next" the new one.
ALLOWED = {"checks": {"prev"}, "unpublishing": {"prev", "unpublished"}, "unpublished": {"unpublished"},
           "deleting": {"unpublished"}, "levels": {"unpublished"}, "publishing": {"unpublished", "next"},
           "releasing": {"next"}, "done": {"next"}}

KILL_SOURCE = {"ny": 512, "nx": 512}
#: Per write mode, the two pyramids the target alternates between. mode="w": another source (values
#: + 1000) and another layout (4 levels, "max"). mode="a": levels 1 and 2 rewritten with another
#: method (min <-> max: see test_mode_a_method_change_leaves_no_stale_nodes for mean -> max).
KILL_PYRAMIDS = {
    "w": [({**KILL_SOURCE}, {"levels": 3, "method": "mean", **LAYOUT}),
          ({**KILL_SOURCE, "offset": 1000.0}, {"levels": 4, "method": "max", **LAYOUT})],
    "a": [({**KILL_SOURCE}, {"levels": 3, "method": "min", **LAYOUT}),
          ({**KILL_SOURCE}, {"levels": 3, "method": "max", **LAYOUT})],
}
KILL_WRITE = {"w": {"mode": "w", "max_workers": 2}, "a": {"mode": "a", "levels": [1, 2], "max_workers": 2}}
KILLS = 12  # kills that land while the writer is active, per target kind
SLOW_DELETE = 0.002  # s per file a local delete_dir removes in the writer: a ~60 ms delete phase


@pytest.fixture(scope="module")
def kill_expected(tmp_path_factory) -> dict[str, list[Expected]]:
    base = tmp_path_factory.mktemp("never-broken-kill-clean")
    return {mode: [Expected.build(f"p{i}", base / f"{mode}-p{i}.zarr", src, opts)
                   for i, (src, opts) in enumerate(specs)] for mode, specs in KILL_PYRAMIDS.items()}


@pytest.mark.filterwarnings("ignore:Object at topozarr.lease.json is not recognized")
@pytest.mark.parametrize("kind, mode", [("local", "w"), ("s3", "w"), ("local", "a")])
def test_kill_9_at_random_moments_leaves_old_new_or_unpublished(kind, mode, zygote, kill_expected, tmp_path,
                                                                request):
    target, rstore = _target(kind, tmp_path, request)
    env = request.getfixturevalue("s3_server").env() if kind == "s3" else {}
    specs, expected, write_kw = KILL_PYRAMIDS[mode], kill_expected[mode], KILL_WRITE[mode]
    pyramids = [create_pyramid(make_source(**src), x_dim="lon", y_dim="lat", **opts) for src, opts in specs]
    pyramids[0].write(target, mode="w", max_workers=2)
    current = 0  # index of the pyramid the target holds
    rng = random.Random(f"never-broken-{kind}-{mode}")
    # the moments a kill aims at (a delay after a marker, drawn from the calibrated phase's length)
    aims = (["deleting", "levels", "checks", "anywhere"] if mode == "w" else ["levels", "checks", "anywhere"])

    def command(i: int) -> dict:
        src, opts = specs[i]
        return {"op": "write", "target": target, "env": env, "source": src, "pyramid": opts, "write": write_kw,
                "slow_delete": SLOW_DELETE if kind == "local" else 0}

    def check_after(marks: list[dict], nxt: int) -> tuple[str, str]:
        """The root after the writer ended; asserts it is allowed for the phase it reached."""
        phase = _phase(marks)
        raw = _root_bytes(rstore)
        state = _classify(raw, [expected[current], expected[nxt]])
        state = {expected[current].label: "prev", expected[nxt].label: "next"}.get(state, state)
        assert state in ALLOWED[phase], (f"killed in phase {phase!r} (markers {[m['mark'] for m in marks]}): "
                                         f"the root is {state!r}, expected one of {sorted(ALLOWED[phase])}")
        if state in ("prev", "next"):  # published: every node and value equal to that clean build
            assert_same_pyramid(rstore, expected[current if state == "prev" else nxt].path)
        return phase, state

    # calibration: one complete run each way gives the phases' timings (and is checked too)
    timings: dict[int, dict[str, float]] = {}
    for _ in range(2):
        nxt = 1 - current
        marks, end = zygote.run(command(nxt), delay=None)
        assert end["status"] == 0, [m for m in marks if m["mark"] == "error"] or zygote.log()
        assert check_after(marks, nxt) == ("done", "next")
        t0 = marks[0]["t"]
        t = {m["mark"]: m["t"] - t0 for m in reversed(marks)}  # the first time of each marker
        t["publish"] = next(m["t"] for m in marks if m["mark"] == "root-write-begin" and m["published"]) - t0
        assert ({"deleting", "deleted"} if mode == "w" else set()) | {"root-written", "done"} <= set(t), marks
        timings[nxt] = t
        current = nxt

    # kills mid-delete must leave the old pyramid partly deleted (under an unpublished root, checked below)
    full = [len(_keys(LocalStore(e.path, read_only=True))) for e in expected]

    def partly_deleted(results: list[dict]) -> list[dict]:
        return [r for r in results if r["phase"] == "deleting" and 0 < r["keys_left"] < full[r["prev"]]]

    def missing(results: list[dict]) -> list[str]:
        """The phases the kills still have to reach (a short phase, e.g. S3's delete, can be missed)."""
        phases = [r["phase"] for r in results]
        need = {"levels": 2, "checks": 1, **({"deleting": 2} if mode == "w" else {})}
        short = [p for p, n in need.items() if phases.count(p) < n]
        if mode == "w" and not partly_deleted(results) and "deleting" not in short:
            short.append("deleting")
        return short

    results: list[dict] = []
    for cycle in range(4 * KILLS):
        landed = sum(1 for r in results if r["phase"] != "done")
        if landed >= KILLS and not missing(results):
            break
        nxt = 1 - current
        t = timings[nxt]
        # the rotation first; once KILLS kills landed, aim at the phases still missing
        aim = aims[cycle % len(aims)] if landed < KILLS else missing(results)[0]
        if aim == "deleting":  # a delay after the writer began deleting the old nodes
            after, delay = "deleting", rng.uniform(0.0, t["deleted"] - t["deleting"])
        elif aim == "levels":  # ... after it unpublished the root (mode "a") / deleted the old nodes (mode "w")
            after = "deleted" if mode == "w" else "root-written"
            delay = rng.uniform(0.0, t["publish"] - t[after])
        elif aim == "checks":  # ... before it unpublished the root (checks, staging, lease)
            after, delay = "start", rng.uniform(0.0, t["root-write-begin"])
        else:  # anywhere from the start of the write to its end
            after, delay = "start", rng.uniform(0.0, t["done"])
        marks, end = zygote.run(command(nxt), delay=delay, after=after)
        assert not [m for m in marks if m["mark"] == "error"], marks
        phase, state = check_after(marks, nxt)
        killed = end["signal"] == signal.SIGKILL
        assert killed or phase == "done", end

        left = len(_keys(rstore))  # nodes' keys the kill left (the root and the lease aside)
        lease = holder(rstore)
        if lease is not None:  # left by the dead writer: stale at once (its pid is gone on this host)
            assert killed and lease["pid"] == end["pid"], lease
            assert "is gone" in (stale_reason(lease, owner="rerun") or ""), lease
        # the rerun, in this process: the same write; every 4th cycle the previous pyramid instead (a
        # roll-back: whatever the dead writer created, an extra level included, must go)
        again = current if cycle % 4 == 3 else nxt
        t_rerun = time.monotonic()
        try:
            pyramids[again].write(target, **write_kw)
        except TargetBusy as err:
            pytest.fail(f"the rerun after a kill in phase {phase!r} was blocked by the dead writer's lease: {err}")
        rerun = time.monotonic() - t_rerun
        assert rerun < 30, f"the rerun took {rerun:.1f} s"  # not waiting for the lease (ttl 120 s) to expire
        assert holder(rstore) is None
        assert_same_pyramid(rstore, expected[again].path)
        results.append({"kill": f"{after}+{delay:.3f}", "phase": phase, "state": state,
                        "lease_left": lease is not None, "keys_left": left, "prev": current,
                        "rerun_s": round(rerun, 2), "rolled_back": again == current})
        current = again

    phases = [r["phase"] for r in results]
    partial = partly_deleted(results)
    summary = (f"{kind} mode={mode}: {len(results)} cycles, phases {dict((p, phases.count(p)) for p in set(phases))}, "
               f"leases left {sum(r['lease_left'] for r in results)}, partly deleted {len(partial)} (keys left "
               f"{[r['keys_left'] for r in partial]} of {full}), calibrated write "
               f"{[round(timings[i]['done'], 3) for i in (0, 1)]} s")
    print(summary)
    print(json.dumps(results))
    assert sum(1 for p in phases if p != "done") >= KILLS, summary
    assert phases.count("levels") >= 2 and phases.count("checks") >= 1, summary
    assert sum(r["lease_left"] for r in results) >= KILLS // 2, summary
    if mode == "w":
        assert phases.count("deleting") >= 2, summary
        assert partial, summary


def _keys(store: Any) -> list[str]:
    async def listed() -> list[str]:
        return [k async for k in store.list() if k not in ("zarr.json", LEASE_KEY) and "/" in k]

    return sync(listed())


# -- 3. found while writing the above ---------------------------------------------------------------

def test_mode_a_method_change_leaves_no_stale_nodes(tmp_path):
    """A mode="a" rewrite of levels 1-2 from "mean" to "max" ends equal to a clean "max" build."""
    def pyramid(method: str):
        return create_pyramid(make_source(256, 256), levels=3, x_dim="lon", y_dim="lat", method=method, **LAYOUT)

    pyramid("max").write(tmp_path / "clean.zarr")
    pyramid("mean").write(tmp_path / "p.zarr")
    pyramid("max").write(tmp_path / "p.zarr", mode="a", levels=[1, 2])
    assert_same_pyramid(str(tmp_path / "p.zarr"), str(tmp_path / "clean.zarr"))


@pytest.mark.parametrize("leftover", ["zarr.0123456789abcdef0123456789abcdef.partial",
                                      "topozarr.lease.0123456789abcdef0123456789abcdef.partial"])
def test_first_build_killed_mid_atomic_write_does_not_block_its_rerun(tmp_path, leftover):
    """A kill while the first root or lease document is being written leaves zarr's temporary file;
    the rerun treats it as ours (not foreign data), removes it and builds."""
    target = tmp_path / "t.zarr"
    target.mkdir()
    (target / leftover).write_text("{")
    p = create_pyramid(make_source(64, 64), levels=2, x_dim="lon", y_dim="lat", **LAYOUT)
    p.write(target)
    assert not (target / leftover).exists()
    p.write(tmp_path / "clean.zarr")
    assert_same_pyramid(str(target), str(tmp_path / "clean.zarr"))


@pytest.mark.parametrize("bug", ["delete-before-unpublish", "publish-before-levels"])
def test_reader_catches_a_writer_that_breaks_the_protocol(bug, reader_expected, tmp_path, monkeypatch):
    """The reader above has teeth: with the protocol broken in this process (old levels deleted while
    the old root is still published, or the new root published before its levels are written) it
    reports violations."""
    import topozarr_core.publish.steps as steps
    import topozarr_core.write.protocol as protocol

    expected = reader_expected("w", READER_EDGE["local"])
    pyramids = {label: create_pyramid(make_source(**src), x_dim="lon", y_dim="lat", **opts)
                for label, (src, opts) in reader_pyramids("w", READER_EDGE["local"]).items()}
    target, rstore = _target("local", tmp_path, None)
    pyramids["old"].write(target, mode="w", max_workers=1)
    prepare_target = protocol.prepare_target

    def broken_prepare_target(store: Any, spec: Any, mode: str, levels: list[int], state: Any) -> None:
        if bug == "delete-before-unpublish":
            for node in ("0", "1", "2"):
                sync(store.delete_dir(node))
            time.sleep(HOLD["local"])
            prepare_target(store, spec, mode, levels, state)
        else:
            prepare_target(store, spec, mode, levels, state)
            steps.publish(store, spec)

    monkeypatch.setattr(protocol, "prepare_target", broken_prepare_target)
    reader = Reader(rstore, list(expected.values()), seed=11)
    reader.start()
    try:
        _wait_for_samples(reader, after=time.monotonic(), n=3)
        pyramids["new"].write(target, mode="w", max_workers=1, max_region_bytes=200_000)
        _wait_for_samples(reader, after=time.monotonic(), n=3)
    finally:
        reader.stop.set()
        reader.join(timeout=60)
    assert reader.crash is None
    assert_same_pyramid(rstore, expected["new"].path)  # the end result alone does not show the bug
    found = _violations(reader.samples)
    print(f"{bug}: {len(found)} violations in {len(reader.samples)} samples, e.g. {found[:1]}")
    assert found


# -- 4. a reader during updates ---------------------------------------------------------------------

class EitherReader(Reader):
    """For updates the old and the grown pyramid have the same root document; a stable published sample
    must then read one of them consistently (every read equal to the same clean build)."""

    def sample(self) -> Sample:
        t0 = time.monotonic()
        r1 = _root_bytes(self.store)
        state = _classify(r1, self.known[:1])
        s = Sample("published" if state in self.by_label else state, False, t0, t0)
        if s.state == "published":
            levels = [entry["asset"] for entry in json.loads(r1)["attributes"]["multiscales"]["layout"]]
            candidates = list(self.known)
            for _ in range(self.k):
                level = self.rng.choice(levels)
                seed = self.rng.random()
                still = []
                for exp in candidates:
                    self.rng.seed(seed)  # the same window for every candidate
                    try:
                        self._check_read(exp, level, use_xarray=False)
                        still.append(exp)
                    except Exception as err:  # noqa: BLE001 - not this candidate
                        last = f"level {level}: {type(err).__name__}: {str(err)[:200]}"
                candidates = still
                s.reads += 1
                if not candidates:
                    s.errors.append(f"matches neither the old nor the grown pyramid ({last})")
                    break
        r2 = _root_bytes(self.store)
        s.stable, s.t1 = r1 == r2, time.monotonic()
        return s


def test_reader_never_sees_a_half_updated_pyramid(tmp_path):
    """A reader thread samples the root and random windows while three updates append time steps
    (one relaying out its shards): every stable published sample reads the pyramid before or after
    one update, never a mix; the reader does see the updates in progress (unpublished roots)."""
    from tests.helpers.rasters import make_raster
    from topozarr_core import update_pyramid

    full = make_raster(ny=512, nx=512, nt=6)
    lengths = [2, 3, 5, 6]
    kw = dict(levels=3, x_dim="lon", y_dim="lat", **LAYOUT)
    known = []
    for n in lengths:
        path = tmp_path / f"clean-{n}.zarr"
        create_pyramid(full.isel(time=slice(0, n)), **kw).write(path)
        exp = Expected(f"t{n}", str(path), json.loads((path / "zarr.json").read_bytes()), snapshot(str(path)))
        for key, (_, values) in exp.nodes.items():
            if values is not None and "/" in key and not key.startswith("_"):
                exp.arrays.setdefault(key.split("/")[0], []).append(key)
        known.append(exp)
    assert all(e.root == known[0].root for e in known)  # the root alone cannot tell them apart
    target = tmp_path / "p.zarr"
    create_pyramid(full.isel(time=slice(0, lengths[0])), **kw).write(target)
    rstore = LocalStore(str(target), read_only=True)
    reader = EitherReader(rstore, known, seed=11)
    reader.start()
    try:
        _wait_for_samples(reader, after=time.monotonic(), n=3)
        for n in lengths[1:]:
            update_pyramid(full.isel(time=slice(0, n)), str(target), append_dim="time", max_workers=1,
                           max_region_bytes=200_000)
            _wait_for_samples(reader, after=time.monotonic(), n=3)
    finally:
        reader.stop.set()
        reader.join(timeout=60)
    assert reader.crash is None, f"the reader crashed: {reader.crash!r}"
    assert_same_pyramid(rstore, known[-1].path)
    samples = reader.samples
    bad = [s for s in samples if s.state not in ("published", "unpublished") or (s.stable and s.errors)]
    summary = (f"{len(samples)} samples, {sum(s.state == 'unpublished' for s in samples)} unpublished, "
               f"{sum(s.stable and not s.errors and s.state == 'published' for s in samples)} verified")
    print(summary)
    assert bad == [], f"{summary}: {[(s.state, s.errors[:2]) for s in bad[:5]]}"
    assert sum(s.stable and s.state == "published" and not s.errors for s in samples) >= 10, summary
    assert sum(s.state == "unpublished" for s in samples) >= 1, summary  # it saw updates in progress
