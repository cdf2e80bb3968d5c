"""Shared pytest fixtures for external services: an S3-compatible endpoint (moto)
and an isolated Prefect test harness.

tests/conftest.py imports it FIRST, before anything imports prefect, and registers its fixtures
(``pytest_plugins``). It imports prefect and topozarr_flows only inside the Prefect fixtures, so the
core tier runs where neither is installed.

Importing this module points PREFECT_HOME and PREFECT_LOCAL_STORAGE_PATH at a
private temp dir (removed at exit), because `import prefect` creates
$PREFECT_HOME (default ~/.prefect) and Prefect's settings are read at import time.

Fixtures:
    s3_server        (session) moto server subprocess on a free 127.0.0.1 port + bucket
    s3_prefix        (function) unique key prefix inside the bucket for one test
    s3_env           (function) AWS_* variables for s3_server set in os.environ
    prefect_harness  (session) prefect_test_harness() with home/results in temp dirs
Helpers (plain functions, importable by Dask worker processes too):
    record_interval(path, start, end), max_overlap(path)  -- prove a concurrency limit
    free_port()                                            -- a free loopback TCP port
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# --- Prefect isolation: must run before `import prefect` anywhere in the session ---
_PREFECT_TMP = Path(tempfile.mkdtemp(prefix="topozarr-test-prefect-"))
atexit.register(shutil.rmtree, _PREFECT_TMP, ignore_errors=True)
PREFECT_TEST_HOME = _PREFECT_TMP / "home"
PREFECT_TEST_RESULTS = _PREFECT_TMP / "results"
os.environ["PREFECT_HOME"] = str(PREFECT_TEST_HOME)
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(PREFECT_TEST_RESULTS)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # no outbound telemetry
# A developer shell may have PREFECT_API_URL set to a real server (infra/up.sh);
# tests must only ever talk to the harness.
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

__all__ = [
    "S3Service",
    "free_port",
    "PrefectHarness",
    "s3_server",
    "s3_prefix",
    "s3_env",
    "prefect_harness",
    "no_leaked_slots",
    "record_interval",
    "max_overlap",
]


# ----------------------------------------------------------------------------- S3
@dataclass(frozen=True)
class S3Service:
    endpoint_url: str
    bucket: str
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """AWS_* variables understood by boto3, obstore (S3Store.from_env / S3Store(bucket))
        and icechunk.s3_storage(from_env=True)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def boto3_client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )

    def obstore_store(self, prefix: str | None = None):
        from obstore.store import S3Store

        return S3Store(
            self.bucket,
            prefix=prefix,
            endpoint=self.endpoint_url,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
            client_options={"allow_http": True},
        )

    def zarr_store(self, prefix: str | None = None, read_only: bool = False):
        from zarr.storage import ObjectStore

        return ObjectStore(self.obstore_store(prefix), read_only=read_only)

    def icechunk_storage(self, prefix: str):
        import icechunk

        return icechunk.s3_storage(
            bucket=self.bucket,
            prefix=prefix,
            endpoint_url=self.endpoint_url,
            allow_http=True,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
            force_path_style=True,
        )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the caller binds it soon; a lost race is retried there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(log_path: Path, attempts: int = 3) -> tuple[subprocess.Popen, str]:
    last = None
    for _ in range(attempts):
        port = free_port()
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                return proc, endpoint
            except OSError:
                time.sleep(0.1)
        last = proc.poll()
        _stop(proc)  # lost a port race or too slow: try another port
    raise RuntimeError(f"moto server did not start (exit code {last}); see {log_path}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Service:
    """moto S3 server in a subprocess on a free loopback port, with one bucket.

    A subprocess (not moto's ThreadedMotoServer) so the endpoint does not share the
    GIL with test code and stays reachable from Dask worker processes."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    proc, endpoint = _start_moto(log_path)
    try:
        svc = S3Service(endpoint_url=endpoint, bucket="topozarr-test")
        svc.boto3_client().create_bucket(Bucket=svc.bucket)
        yield svc
    finally:
        _stop(proc)


@pytest.fixture
def s3_prefix(request) -> str:
    """A key prefix unique to this test (the bucket is shared by the session)."""
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)[:60]
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Service:
    """s3_server's AWS_* variables in os.environ for the duration of one test."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


# ------------------------------------------------------------------------- Prefect
@dataclass(frozen=True)
class PrefectHarness:
    api_url: str
    home: Path
    results: Path
    extra: dict = field(default_factory=dict)

    def client(self):
        """Sync Prefect client bound to the harness: `with harness.client() as c: ...`"""
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)

    def settle(self, *flow_run_ids, timeout: float = 30.0) -> None:
        """Wait until the API holds what this process's runs sent it: their logs (Prefect's log worker
        sends them in the background) and the final states of their task runs (recorded from events,
        after the flow run's own state). A flow call returns when its run ends, before those background
        workers have sent everything: reading right away can see neither yet."""
        import time as _time
        import uuid as _uuid

        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        ids = [_uuid.UUID(str(i)) for i in flow_run_ids]
        deadline = _time.monotonic() + timeout
        with self.client() as c:
            while True:
                runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200)
                if all(r.state is not None and r.state.is_final() for r in runs) or _time.monotonic() > deadline:
                    return
                _time.sleep(0.1)

    def ensure_concurrency_limit(self, name: str, limit: int) -> None:
        """Create (or update) the task concurrency limit ``name`` (what the flows' tiles hold) on the
        harness server."""
        with self.client() as c:
            c.create_concurrency_limit(tag=name, concurrency_limit=limit)

    def free_leaked_slots(self) -> list[str]:
        """Give back every concurrency slot still held, and say which were: between tests nothing runs,
        so a held slot is a leak. The harness's server does not expire leases in a test's time, so a
        leak left alone would make the next flow of the session wait for a slot."""
        from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

        leaked = []
        with self.client() as c:
            for limit in c.read_global_concurrency_limits(limit=200):
                if limit.active_slots <= 0:
                    continue
                leaked.append(f"{limit.name}: {limit.active_slots} of {limit.limit}")
                if limit.name.startswith("tag:"):
                    c.reset_concurrency_limit_by_tag(limit.name.removeprefix("tag:"))
                c.update_global_concurrency_limit(limit.name, GlobalConcurrencyLimitUpdate(active_slots=0))
        return leaked


@pytest.fixture(scope="session")
def prefect_harness() -> PrefectHarness:
    """One ephemeral Prefect API server (SQLite in a temp dir) for the whole session (of each xdist
    worker: every worker process has its own home, results and server).

    Home and local result storage are in this module's temp dir, never ~/.prefect.
    Session-scoped because starting the harness server takes several seconds."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    from topozarr_flows.prefect_api.slots import LEASES_ON_DISK

    PREFECT_TEST_HOME.mkdir(parents=True, exist_ok=True)
    PREFECT_TEST_RESULTS.mkdir(parents=True, exist_ok=True)
    # temporary_settings as well as the env vars above, in case prefect was
    # imported before this module set them.
    with temporary_settings(
        updates={
            PREFECT_HOME: str(PREFECT_TEST_HOME),
            PREFECT_LOCAL_STORAGE_PATH: str(PREFECT_TEST_RESULTS),
        }
    ):
        # leases on disk, as infra/prefect-server.sh and the CLI keep them (flows/topozarr_flows/prefect_api/slots.py)
        os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASES_ON_DISK)
        with prefect_test_harness(server_startup_timeout=60):
            api_url = PREFECT_API_URL.value()
            # Subprocesses started during the session (Dask workers, CLI calls)
            # then reach the harness, not whatever the caller's shell had.
            os.environ["PREFECT_API_URL"] = api_url
            try:
                yield PrefectHarness(
                    api_url=api_url, home=PREFECT_TEST_HOME, results=PREFECT_TEST_RESULTS
                )
            finally:
                os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(autouse=True)
def no_leaked_slots(request):
    """After each test that used the Prefect harness: fail it if it left concurrency slots held (and
    free them, so the next test does not wait for them)."""
    yield
    if "prefect_harness" not in request.fixturenames:
        return
    leaked = request.getfixturevalue("prefect_harness").free_leaked_slots()
    if leaked:
        pytest.fail(f"the test left concurrency slots held (freed now): {'; '.join(leaked)}")


# ------------------------------------------------- concurrency-limit proof helpers
def record_interval(path: str | os.PathLike, start: float, end: float) -> None:
    """Append one [start, end] (time.time() values) to a JSON-lines file.

    flock makes it safe across threads and processes (ThreadPool / Dask workers)."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps([start, end, os.getpid()]) + "\n")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)


def max_overlap(path: str | os.PathLike) -> int:
    """Largest number of recorded intervals open at the same instant.

    An interval ending exactly when another starts does not count as overlap."""
    events = []
    with open(path) as fh:
        for line in fh:
            start, end = json.loads(line)[:2]
            events += [(start, 1), (end, -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # at equal times, ends before starts
    cur = best = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best
