"""The target lease never overwrites a lease it did not write: a renewal or a takeover replaces the lease
only if it is still the one read (a conditional PUT on S3, a compare under the target directory's
``flock`` on local disk). The race is made to happen: another writer replaces the lease between our
read and our write, on a real local directory and on S3 (moto on loopback)."""

from __future__ import annotations

import json
import time

import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from topozarr_core.store import lease as lease_mod
from topozarr_core.store.lease import LEASE_KEY, LeaseLost, TargetBusy, acquire, holder


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return zarr.storage.LocalStore(str(tmp_path / "target.zarr"))
    s3 = request.getfixturevalue("s3_server")
    return s3.zarr_store(request.getfixturevalue("s3_prefix"))


def _put(store, doc: dict) -> None:
    """Another writer's plain write of the lease."""
    sync(store.set(LEASE_KEY, default_buffer_prototype().buffer.from_bytes(json.dumps(doc).encode())))


def _another_writer_between_read_and_write(monkeypatch, store, doc: dict) -> None:
    """The next read of the lease is followed at once by another writer replacing it with ``doc``: what
    we read is stale when we write."""
    real = lease_mod._read_seen
    done = []

    def read_then_race(s):
        seen = real(s)
        if not done:
            done.append(True)
            _put(store, doc)
        return seen

    monkeypatch.setattr(lease_mod, "_read_seen", read_then_race)


def test_a_renewal_keeps_a_lease_taken_over_in_between(store, monkeypatch):
    lease = acquire(store, owner="slow-run")
    taker = {"owner": "taker", "token": "theirs", "host": "elsewhere", "pid": 1, "expires": time.time() + 600}
    _another_writer_between_read_and_write(monkeypatch, store, taker)
    with pytest.raises(LeaseLost, match="taken over by taker"):
        lease.renew()
    assert holder(store)["token"] == "theirs"  # the taker's lease stands (a plain write replaced it)
    lease.release()  # not ours any more: left alone
    assert holder(store)["token"] == "theirs"


def test_a_takeover_replaces_only_the_stale_lease_it_read(store, monkeypatch):
    _put(store, {"owner": "dead-run", "token": "old", "host": "elsewhere", "pid": 1, "expires": 1.0})
    renewed = {"owner": "live-run", "token": "live", "host": "elsewhere", "pid": 1, "expires": time.time() + 600}
    _another_writer_between_read_and_write(monkeypatch, store, renewed)
    with pytest.raises(TargetBusy, match="being written by live-run"):
        acquire(store, owner="me")
    assert holder(store)["token"] == "live"


def test_renewals_and_takeovers_without_a_race(store):
    lease = acquire(store, owner="run-a")
    if isinstance(store, zarr.storage.ObjectStore):  # S3 answers with an ETag: changes are conditional PUTs
        assert lease_mod._read_seen(store).version["e_tag"]
    before = holder(store)["expires"]
    time.sleep(0.01)
    lease.renew()
    assert holder(store)["expires"] > before and holder(store)["token"] == lease.token
    _put(store, {**holder(store), "expires": 1.0})  # it expired: another run takes it over
    other = acquire(store, owner="run-b")
    assert holder(store)["token"] == other.token
    with pytest.raises(LeaseLost, match="run-b"):
        lease.renew()
    other.release()
    assert holder(store) is None


def test_lease_changes_on_local_disk_wait_for_another_writers_turn(tmp_path):
    """Another process holding the target directory's ``flock`` (as a writer does while it changes the
    lease) holds back our renewal until it lets go: a read, a compare and a write are one step."""
    import subprocess
    import sys
    import threading

    store = zarr.storage.LocalStore(str(tmp_path / "target.zarr"))
    lease = acquire(store, owner="run-a")
    before = holder(store)["expires"]
    holder_proc = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", str(tmp_path / "target.zarr")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder_proc.stdout.readline().strip() == "held"
        renewal = threading.Thread(target=lease.renew)
        renewal.start()
        renewal.join(0.5)
        assert renewal.is_alive() and holder(store)["expires"] == before  # waiting for its turn
    finally:
        holder_proc.stdin.close()
        holder_proc.wait(10)
    renewal.join(10)
    assert not renewal.is_alive() and holder(store)["expires"] > before
    lease.release()
    assert holder(store) is None
