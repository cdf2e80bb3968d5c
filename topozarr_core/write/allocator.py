"""Let a write reuse freed memory in processes whose malloc returns every large block at once.

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
``distributed.nanny.pre-spawn-environ`` default, to fight unmanaged memory). Setting that variable also
turns off glibc's *dynamic* mmap threshold, so every allocation of 128 KiB or more becomes an
``mmap`` and every free an ``munmap``: each region's arrays (16 MiB reads, reductions, encoded shards)
then start on fresh pages, and the kernel zeroes them again and again. Measured on the 1 GB benchmark
source: the same tiles took 2.0x as long in such a process (8.5 s against 4.3 s for 9 tiles on 2 processes).

While at least one write runs, :func:`large_blocks_reused` raises glibc's mmap threshold to 32 MiB (its
maximum) and the trim threshold to 256 MiB, so freed blocks serve the next region; when the last write
ends (tile writes and ``as_datatree``'s reductions: :data:`TASK_LINGER_SECONDS` later, so that a
worker's next task reuses them too) it puts back the values the environment set (or glibc's fixed
defaults) and calls ``malloc_trim(0)``, so the process returns the memory afterwards, as its
environment asked. Nothing changes where the
variables are not set (glibc's dynamic thresholds already reuse large blocks) or where malloc is not
glibc's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's values when the environment fixed them: the mmap threshold's minimum, the trim threshold's default
GLIBC_MMAP_THRESHOLD = 128 * 1024
GLIBC_TRIM_THRESHOLD = 128 * 1024
#: what a write runs with: glibc's largest mmap threshold (HEAP_MAX / 2 on 64-bit) and room for a few regions
WRITE_MMAP_THRESHOLD = 32 * 2**20
WRITE_TRIM_THRESHOLD = 256 * 2**20
#: the environment variables that fix glibc's thresholds (and turn the dynamic mmap threshold off)
FIXING_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

#: Seconds the thresholds stay raised after a task's use ends (see :func:`large_blocks_reused`): longer
#: than the gap between two tasks of one computation on a Dask worker (a tile task and the next; the
#: reads and stores between the reductions of ``Pyramid.as_datatree``), short enough to give the
#: memory back soon after the computation.
TASK_LINGER_SECONDS = 2.0

_lock = threading.Lock()
_writers = 0
#: the thresholds are raised now (by a running use, or by one that ended less than its linger ago)
_raised = False
_release_timer: threading.Timer | None = None


@functools.cache
def glibc_malloc() -> ctypes.CDLL | None:
    """This process's C library when its malloc is glibc's (whose thresholds this module tunes), else None.

    Looked up once per process: ``find_library`` runs ``ldconfig``, and every write asks."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        return libc
    except (OSError, AttributeError):
        return None


def thresholds_fixed(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment fixed glibc's malloc thresholds (as Dask's workers do).

    :param environ: the environment to look at (default: this process's).
    """
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in FIXING_VARIABLES)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def active_writes() -> int:
    """How many writes are inside :func:`large_blocks_reused` now."""
    return _writers


def thresholds_raised() -> bool:
    """Whether the thresholds are raised now (during a use, or during the linger after one)."""
    return _raised


@contextlib.contextmanager
def large_blocks_reused(linger: float = 0.0) -> Iterator[bool]:
    """Reuse freed large blocks while the block runs (nested and concurrent uses count; see the module).

    :param linger: seconds the thresholds stay raised after the last use ends; a use that starts
        meanwhile keeps them raised. Why: the dask tasks of ``Pyramid.as_datatree`` are short, and the
        reads and stores between them are xarray's: with a linger, one computation's tasks reuse each
        other's blocks, and the process still gives the memory back soon after the computation ends.
        0 (a write of its own): given back as soon as the last use ends.
    :returns: (as the context value) whether the thresholds were raised for this block.
    """
    global _writers, _raised, _release_timer
    libc = glibc_malloc() if thresholds_fixed() else None
    if libc is None:
        yield False
        return
    with _lock:
        if _release_timer is not None:
            _release_timer.cancel()
            _release_timer = None
        if not _raised:
            libc.mallopt(M_MMAP_THRESHOLD, WRITE_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, WRITE_TRIM_THRESHOLD)
            _raised = True
        _writers += 1
    try:
        yield True
    finally:
        with _lock:
            _writers -= 1
            if _writers == 0:
                if linger > 0:
                    _release_timer = threading.Timer(linger, _release_when_idle, args=(libc,))
                    _release_timer.daemon = True
                    _release_timer.start()
                else:
                    _give_back(libc)


def _release_when_idle(libc: ctypes.CDLL) -> None:
    with _lock:
        if _writers == 0:
            _give_back(libc)


def _give_back(libc: ctypes.CDLL) -> None:
    """Put back the thresholds the environment set and return free memory (called holding ``_lock``)."""
    global _raised
    if not _raised:
        return
    libc.mallopt(M_MMAP_THRESHOLD, _env_int("MALLOC_MMAP_THRESHOLD_", GLIBC_MMAP_THRESHOLD))
    libc.mallopt(M_TRIM_THRESHOLD, _env_int("MALLOC_TRIM_THRESHOLD_", GLIBC_TRIM_THRESHOLD))
    libc.malloc_trim(0)
    _raised = False
