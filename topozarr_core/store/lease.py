"""One writer at a time on a plain Zarr target: a lease document in the target.

Why: two builds or updates writing one local or object-store pyramid at once interleave their
chunks and metadata (Icechunk needs none of this: its commits are compare-and-swap). A writer
creates ``topozarr.lease.json`` at the target's root with create-if-absent semantics (an
exclusive create on local disk, ``If-None-Match: *`` on object storage), renews it while it
writes, and deletes it when done. Another writer finding a live lease is refused with
:class:`TargetBusy`.

Stale-lease rule (documented in docs/guarantees.md): a lease is stale, and taken over, when

* its ``expires`` time has passed (writers renew every ``ttl / 4`` seconds; default ttl 120 s), or
* it was taken on this host by a process that no longer exists (a killed run: taken over at once; the
  lease records the process's start time, so a pid the system has since given to another process, or
  to this one, does not keep a dead writer's lease alive), or
* it names the same ``owner`` (a retry of the same flow run reclaims its own lease).

Every change of an existing lease (a renewal, a takeover) replaces it only if it is still the one
read, so a writer never overwrites a lease it did not write: on object storage a conditional PUT
(``If-Match`` the ETag read); on local disk compare-then-write while holding an exclusive ``flock`` on
the target directory, which every writer on the host takes for its lease changes. Where neither exists
(an object store without conditional updates; a platform without ``flock``) it is compare-then-write.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, ObjectStore

from topozarr_core.store.errors import TargetError
from topozarr_core.store.targets import check_writable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: lease changes there are compare-then-write
    fcntl = None  # type: ignore[assignment]

LEASE_KEY = "topozarr.lease.json"
DEFAULT_TTL = float(os.environ.get("TOPOZARR_LEASE_TTL", "120"))


class TargetBusy(TargetError):
    """Another writer holds the target's lease."""


class LeaseLost(TargetError):
    """Our lease was taken over (we were too slow to renew it): stop writing."""


#: Seconds two readings of one process's start time may differ by (psutil derives it from boot time and
#: clock ticks; a reused pid starts later by far more).
START_TIME_TOLERANCE = 1.0


def _process() -> dict:
    """Who holds a lease: host, pid and the pid's process start time (guards against pid reuse)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def _doc(owner: str, token: str, ttl: float) -> dict:
    now = time.time()
    return {"owner": owner, "token": token, **_process(), "acquired": now, "expires": now + ttl, "ttl": ttl,
            "writer": "topozarr-flows"}


def _gone(pid: int, started: Any) -> str | None:
    """Why the process ``pid`` (started at ``started``, if recorded) is not the lease's writer any more."""
    try:
        now_started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return f"its process {pid} on this host is gone"
    except psutil.Error:  # e.g. access denied: the process exists, its start time is unknown
        return None
    if isinstance(started, (int, float)) and abs(now_started - started) > START_TIME_TOLERANCE:
        return f"its process {pid} on this host is gone (the pid was reused by a process started later)"
    return None


def _encode(doc: dict):
    return default_buffer_prototype().buffer.from_bytes(json.dumps(doc, sort_keys=True).encode())


def _parse(data: bytes) -> dict:
    try:
        doc = json.loads(data)
    except ValueError:
        doc = {}
    return doc if isinstance(doc, dict) else {}


def _read(store: Any) -> tuple[dict | None, bytes | None]:
    raw = sync(store.get(LEASE_KEY, prototype=default_buffer_prototype()))
    if raw is None:
        return None, None
    data = raw.to_bytes()
    return _parse(data), data


@dataclass(frozen=True)
class _Seen:
    """The lease as read: its document, its bytes and (object storage) the version to update it from."""

    doc: dict | None
    raw: bytes | None
    version: dict[str, str] | None = None


def _read_seen(store: Any) -> _Seen:
    """The lease with what a conditional replacement needs (the ETag, and the version on a versioned bucket)."""
    if isinstance(store, ObjectStore):
        import obstore

        try:
            got = obstore.get(store.store, LEASE_KEY)
        except obstore.exceptions.NotFoundError:
            return _Seen(None, None)
        data = bytes(got.bytes())
        version = {k: got.meta[k] for k in ("e_tag", "version") if got.meta.get(k)}
        return _Seen(_parse(data), data, version or None)
    doc, raw = _read(store)
    return _Seen(doc, raw)


@contextmanager
def _turn(store: Any) -> Iterator[None]:
    """On a local target, one lease change at a time on this host: an exclusive ``flock`` on the target
    directory (released when its descriptor closes, also when the process is killed)."""
    root = Path(store.root) if isinstance(store, LocalStore) else None
    if fcntl is None or root is None or not root.is_dir():  # no directory: no lease in it to change
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace(store: Any, seen: _Seen, doc: dict) -> bool:
    """Write ``doc`` as the lease only if the lease is still ``seen``; True when written."""
    data = _encode(doc)
    if isinstance(store, ObjectStore) and seen.version is not None:
        import obstore

        try:
            obstore.put(store.store, LEASE_KEY, data.to_bytes(), mode=seen.version)
            return True
        except obstore.exceptions.PreconditionError:
            return False
        except (NotImplementedError, obstore.exceptions.NotSupportedError):
            pass  # a store without conditional updates (obstore's local filesystem): compare, then write
    with _turn(store):
        if _read(store)[1] != seen.raw:
            return False
        sync(store.set(LEASE_KEY, data))
        return True


def stale_reason(doc: dict, owner: str, now: float | None = None) -> str | None:
    """Why ``doc`` may be taken over by ``owner`` (None: it is live).

    :param doc: the lease document found.
    :param owner: who wants the lease.
    :param now: the time to compare expiry with (default: now).
    """
    now = time.time() if now is None else now
    if doc.get("owner") == owner:
        return "it is our own (a retry of the same run)"
    expires = doc.get("expires")
    if not isinstance(expires, (int, float)) or expires < now:
        return "it expired"
    pid, started = doc.get("pid"), doc.get("started")
    if doc.get("host") == socket.gethostname() and isinstance(pid, int) and not isinstance(pid, bool):
        if pid != os.getpid() or isinstance(started, (int, float)):  # (our own pid: only a start time tells)
            return _gone(pid, started)
    return None


@dataclass
class Lease:
    """A held lease; :meth:`keep` renews it in a background thread until :meth:`release`."""

    store: Any
    owner: str
    token: str
    ttl: float = DEFAULT_TTL
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    lost: str | None = None

    def renew(self) -> None:
        """Extend the lease by ``ttl`` seconds; :class:`LeaseLost` (recorded in ``lost``) when it is no longer
        ours. The renewal replaces the lease only if it is still the one read: a writer that took it over in
        between keeps it."""
        seen = _read_seen(self.store)
        ours = seen.doc is not None and seen.doc.get("token") == self.token
        if ours and _replace(self.store, seen, {**seen.doc, "expires": time.time() + self.ttl, **_process()}):
            return
        taker = _read(self.store)[0] if ours else seen.doc  # (ours when read: taken over since)
        self.lost = f"the lease on the target was taken over by {_holder(taker)}"
        raise LeaseLost(self.lost)

    def keep(self) -> Lease:
        """Renew every ``ttl / 4`` seconds in a daemon thread (a killed process simply stops renewing)."""
        def loop() -> None:
            while not self._stop.wait(self.ttl / 4):
                try:
                    self.renew()
                except LeaseLost:
                    return
                except Exception:  # noqa: BLE001 - a failed renewal is retried at the next tick
                    continue

        if self._thread is None:
            self._thread = threading.Thread(target=loop, name="topozarr-lease", daemon=True)
            self._thread.start()
        return self

    def check(self) -> None:
        """Raise :class:`LeaseLost` when a renewal found the lease taken over."""
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with _turn(self.store):
            doc, _ = _read(self.store)
            if doc is not None and doc.get("token") == self.token:
                sync(self.store.delete(LEASE_KEY))

    def __enter__(self) -> Lease:
        return self.keep()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - never hide the error that ended the write (e.g. an outage)
            if exc_type is None:
                raise


def _holder(doc: dict | None) -> str:
    if not doc:
        return "another writer"
    left = doc.get("expires", 0) - time.time() if isinstance(doc.get("expires"), (int, float)) else 0
    return (f"{str(doc.get('owner', '?'))[:80]} (host {str(doc.get('host', '?'))[:60]}, pid {doc.get('pid', '?')}, "
            f"lease expires in {max(0, round(left))} s)")


def acquire(store: Any, owner: str | None = None, ttl: float = DEFAULT_TTL) -> Lease:
    """Take the target's lease for ``owner`` (default: a new id for this write), or raise TargetBusy.

    :param store: the target's zarr store.
    :param owner: who takes it (the same owner retaking it is a retry of the same run).
    :param ttl: seconds the lease lives without renewal.
    """
    owner = owner or f"write-{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex
    for _ in range(3):
        try:
            sync(store.set_if_not_exists(LEASE_KEY, _encode(_doc(owner, token, ttl))))
        except FileExistsError:  # some stores signal a present key this way
            pass
        seen = _read_seen(store)
        doc = seen.doc
        if doc is not None and doc.get("token") == token:
            return Lease(store, owner, token, ttl)
        if doc is None:
            continue  # released between our create and our read: try again
        reason = stale_reason(doc, owner)
        if reason is None:
            raise TargetBusy(f"the target is being written by {_holder(doc)}; wait for that run to finish "
                             f"(a lease of a dead run is taken over when it expires, or at once on the same host)")
        _replace(store, seen, _doc(owner, token, ttl))  # the takeover: only if still the stale lease read
    raise TargetBusy("could not take the target's lease: other writers keep taking it")


@contextmanager
def lease_for(store: Any, owner: str | None = None) -> Iterator[Lease | None]:
    """Hold the lease of a plain Zarr target (local or object store) while the block runs; other
    stores need none (Icechunk commits are compare-and-swap; memory stores are private).

    :param store: the target's zarr store.
    :param owner: who takes it (default: a new id for this write).
    """
    check_writable(store)  # the lease is a write's first write: refuse a read-only store in one line
    if not isinstance(store, (LocalStore, ObjectStore)):
        yield None
        return
    with acquire(store, owner) as lease:
        yield lease


def holder(store: Any) -> dict | None:
    """The current lease document, if any (for status displays and tests).

    :param store: the target's zarr store.
    """
    return _read(store)[0]


__all__ = ["acquire", "lease_for", "Lease", "TargetBusy", "LeaseLost", "LEASE_KEY", "stale_reason", "holder"]
