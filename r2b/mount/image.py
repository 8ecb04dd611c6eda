"""A stored disk as a read-only, random-access file: no copy, no kernel mount, no root.

``ImageFile`` serves reads of a disk from the blocks a ``Layout`` names: a replica snapshot
(``BlockMap``, at build time: indexing reads the journal's packs and does not wait for the
image's chunks) or a backup image (``r2b.image.restore.image_layout``). A read fetches the
blocks it touches with ``r2b.blockio.fetch_blocks`` — ranged GETs, each block decoded and its
digest checked — and keeps the decoded blocks in an LRU cache bounded in bytes, so memory does
not grow with the disk. All-zero blocks are never fetched.

A cache miss that continues the previous one reads ahead (a window doubling up to
``readahead`` blocks) in the same request: filesystem metadata (inode tables, the MFT, the
FAT) is often read in runs, and one 256 KiB GET costs little more than one 32 KiB GET; a
random miss reads just its block (measured on a 120k-file ext4: 6x fewer bytes than always
reading ahead, in the same number of requests). ``bytes_fetched`` and ``blocks_fetched`` count what
came from the store. A block that cannot be read raises ``BlocksUnreadable`` naming it.

Thread-safe (one lock around the cache): The Sleuth Kit calls ``pread`` from one thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from r2b.blockio import Block, Layout, fetch_blocks
from r2b.errors import BadInput, BlocksUnreadable
from r2b.extents import block_count
from r2b.store.base import ObjectStore

DEFAULT_CACHE_BYTES = 64 << 20
DEFAULT_READAHEAD = 8


class ImageFile:
    """Read-only file object over a stored disk ``layout``; ``source`` names it in errors."""

    def __init__(
        self,
        store: ObjectStore,
        layout: Layout,
        source: str = "image",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        readahead: int = DEFAULT_READAHEAD,
    ) -> None:
        if layout.block_size <= 0:
            raise BadInput(f"{source}: a disk layout needs a positive block size")
        self.store = store
        self.layout = layout
        self.source = source
        self.size = layout.size
        self.block_size = layout.block_size
        self.blocks = block_count(layout.size, layout.block_size)
        self.bytes_fetched = 0
        self.blocks_fetched = 0
        self._readahead = max(0, readahead)
        self._capacity = max(self._readahead + 1, cache_bytes // layout.block_size)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._pos = 0
        self._ahead = 0  # current read-ahead window (blocks)
        self._next = -1  # the block right after the last fetched window
        self.closed = False

    # --- file protocol ---------------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer only at the end of the disk)."""
        if offset < 0 or length < 0:
            raise ValueError(f"negative read ({offset}, {length})")
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        with self._lock:
            parts = [self._block(b) for b in range(first, last + 1)]
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        start = offset - first * self.block_size
        return data[start : start + end - offset]

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self._pos
        data = self.pread(self._pos, size)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    @property
    def cached_blocks(self) -> int:
        """Decoded blocks held now (at most ``cache_bytes`` worth)."""
        return len(self._cache)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
        self.closed = True

    # --- blocks ------------------------------------------------------------------------------

    def _block(self, number: int) -> bytes:
        """Block ``number`` decoded (lock held)."""
        if self.layout.codec[number] == 0:
            return bytes(self.layout.block_len(number))
        cached = self._cache.get(number)
        if cached is not None:
            self._cache.move_to_end(number)
            return cached
        self._fetch(number)
        return self._cache[number]

    def _fetch(self, number: int) -> None:
        # Read ahead only while reads are sequential, doubling the window up to ``readahead``
        # blocks; a random miss reads its block alone (same one request, fewer bytes).
        self._ahead = min(self._readahead, max(1, 2 * self._ahead)) if number == self._next else 0
        stop = min(self.blocks, number + 1 + self._ahead)
        self._next = stop
        window = np.arange(number, stop, dtype=np.int64)
        window = window[self.layout.codec[window] != 0]
        window = np.array([b for b in window.tolist() if b not in self._cache], dtype=np.int64)
        fetched: list[Block] = []
        damage = fetch_blocks(self.store, self.layout, window, fetched.append, workers=1)
        for block in fetched:
            self.bytes_fetched += len(block.payload)
            self.blocks_fetched += 1
            self._remember(block.number, block.plain)
        if number not in self._cache:
            reason = next(iter(damage.by_key.values()))[0] if damage else "could not be read"
            raise BlocksUnreadable(self.source, damage.blocks or [number], reason)

    def _remember(self, number: int, plain: bytes) -> None:
        self._cache[number] = plain
        self._cache.move_to_end(number)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
