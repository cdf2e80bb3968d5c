"""Reusable test helpers (as ``zarr.testing`` is for zarr): for this project's tests, benchmarks and
anyone checking what a write reads.

:class:`CountingStore` wraps any zarr store and counts the bytes each key prefix returned, so a test
or a benchmark can prove that a write read its source once and read back from its target only what
it had to.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore


class CountingStore(WrapperStore):
    """A store that counts the bytes (and requests) of every ``get``, per first path component (``"0"``,
    ``"1"``, ..., ``"_topozarr_missing"``, or the variable name for a flat source) and in total."""

    def __init__(self, store: Any, counts: ReadCounts | None = None) -> None:
        super().__init__(store)
        self.counts = counts if counts is not None else ReadCounts()

    def with_read_only(self, read_only: bool = False) -> CountingStore:
        """A counting copy of the wrapped store with ``read_only`` set, sharing these counts.

        :param read_only: whether the copy refuses writes.
        """
        return CountingStore(self._store.with_read_only(read_only), self.counts)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        """The wrapped store's ``get``, counting the bytes it returns.

        :param key: the key.
        :param prototype: the buffer prototype.
        :param byte_range: the byte range, or None (all).
        """
        buf = await super().get(key, prototype, byte_range)
        if buf is not None:
            self.counts.add(key, len(buf))
        return buf


class ReadCounts:
    """Bytes and requests read, per first path component; metadata documents counted apart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.metadata_bytes = 0

    def add(self, key: str, nbytes: int) -> None:
        """Count one read of ``nbytes`` bytes of ``key`` (a ``zarr.json`` only in ``metadata_bytes``).

        :param key: the key read.
        :param nbytes: its size in bytes.
        """
        with self._lock:
            if key.endswith("zarr.json"):
                self.metadata_bytes += nbytes
                return
            head = key.split("/", 1)[0]
            self.bytes[head] += nbytes
            self.requests[head] += 1

    @property
    def total(self) -> int:
        """Bytes of chunks (and shards) read, metadata documents left out."""
        return sum(self.bytes.values())

    def reset(self) -> None:
        """Set every count back to zero."""
        with self._lock:
            self.bytes.clear()
            self.requests.clear()
            self.metadata_bytes = 0


def stored_bytes(store: Any, prefix: str = "") -> int:
    """Bytes of every chunk (and shard) stored under ``prefix``, metadata documents left out.

    :param store: the zarr store.
    :param prefix: the key prefix (``""``: everything).
    """
    from zarr.core.sync import sync

    async def total() -> int:
        n = 0
        async for key in store.list_prefix(prefix):
            if not key.endswith("zarr.json"):
                n += await store.getsize(key)
        return n

    return sync(total())


__all__ = ["CountingStore", "ReadCounts", "stored_bytes"]
