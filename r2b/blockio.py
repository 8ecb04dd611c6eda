"""Verified reads of stored blocks: fetch, decode, check the digest, hand over.

Both the replica journal (``BlockMap``) and backup images store each block as one payload
(codec 0 zeros / 1 raw / 2 zstd frame) inside a larger pack object. ``fetch_blocks`` reads a set
of blocks with ranged GETs coalesced per pack on a small thread pool, decodes each block, checks
its BLAKE3 digest, and calls ``deliver`` with the verified block. Blocks it cannot deliver are
collected in ``Damage`` (by object key and reason) instead of being delivered: callers decide
what error that is (a damaged journal, a corrupt chunk).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import blake3
import numpy as np
import numpy.typing as npt
import zstandard

from r2b.errors import NotFound
from r2b.extents import block_length, coalesce_ranges
from r2b.journal.format import CODEC_RAW, CODEC_ZSTD
from r2b.store.base import ObjectStore

READ_GAP = 256 << 10  # fetch across gaps this small rather than paying another request

_local = threading.local()


@dataclass
class Layout:
    """Where each block of a disk is stored: one entry per block (``pack`` -1 for zeros)."""

    size: int
    block_size: int
    digests: npt.NDArray[np.uint8]
    codec: npt.NDArray[np.uint8]
    pack: npt.NDArray[np.int32]
    offset: npt.NDArray[np.int64]
    length: npt.NDArray[np.int64]
    pack_keys: list[str]
    plain_length: npt.NDArray[np.int64] | None = None  # per block, when blocks vary in size

    def block_len(self, block: int) -> int:
        if self.plain_length is not None:
            return int(self.plain_length[block])
        return block_length(block, self.size, self.block_size)

    def stored_blocks(self) -> npt.NDArray[np.int64]:
        """Blocks that have a payload (all but the all-zero ones)."""
        return np.flatnonzero(self.codec != 0).astype(np.int64)


@dataclass(frozen=True)
class Block:
    number: int
    codec: int
    payload: bytes  # as stored (compressed)
    plain: bytes  # decoded and verified


Deliver = Callable[[Block], None]


class Damage:
    """Blocks that could not be delivered, by object key: (reason, blocks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_key: dict[str, tuple[str, list[int]]] = {}

    def add(self, key: str, reason: str, blocks: Sequence[int]) -> None:
        with self._lock:
            _, known = self.by_key.setdefault(key, (reason, []))
            known.extend(blocks)

    @property
    def blocks(self) -> list[int]:
        return sorted(b for _, blocks in self.by_key.values() for b in blocks)

    def __bool__(self) -> bool:
        return bool(self.by_key)


def decode_block(codec: int, payload: bytes, length: int) -> bytes:
    if codec == CODEC_RAW:
        return payload
    if codec == CODEC_ZSTD:
        decomp: zstandard.ZstdDecompressor | None = getattr(_local, "zstd", None)
        if decomp is None:
            decomp = _local.zstd = zstandard.ZstdDecompressor()
        return decomp.decompress(payload, max_output_size=length)
    raise ValueError(f"unknown codec {codec}")


def fetch_blocks(
    store: ObjectStore,
    layout: Layout,
    blocks: npt.NDArray[np.int64],
    deliver: Deliver,
    workers: int = 4,
) -> Damage:
    """Deliver every block in ``blocks`` that has a payload, verified; return what failed.

    Blocks in one pack (the common case of a small read: a mounted image's cache miss, one
    file's extents) are fetched on the calling thread, without starting a pool.
    """
    damage = Damage()
    groups = _group_by_pack(layout, blocks[layout.codec[blocks] != 0])
    if len(groups) <= 1 or workers <= 1:
        for key, members in groups.items():
            _fetch_pack(store, layout, key, members, deliver, damage)
        return damage
    with ThreadPoolExecutor(workers, thread_name_prefix="r2b-fetch") as pool:
        jobs = [
            pool.submit(_fetch_pack, store, layout, key, members, deliver, damage)
            for key, members in groups.items()
        ]
        for job in jobs:
            job.result()
    return damage


def _group_by_pack(layout: Layout, blocks: npt.NDArray[np.int64]) -> dict[str, list[int]]:
    order = blocks[np.argsort(layout.pack[blocks], kind="stable")]
    groups: dict[str, list[int]] = {}
    for block in order.tolist():
        groups.setdefault(layout.pack_keys[layout.pack[block]], []).append(block)
    return groups


def _fetch_pack(
    store: ObjectStore,
    layout: Layout,
    key: str,
    blocks: list[int],
    deliver: Deliver,
    damage: Damage,
) -> None:
    ranges = [(int(layout.offset[b]), int(layout.length[b])) for b in blocks]
    for offset, length, members in coalesce_ranges(ranges, READ_GAP):
        try:
            data = store.get_range(key, offset, length)
        except NotFound:
            damage.add(key, "is missing", [blocks[i] for i in members])
            continue
        bad = []
        for i in members:
            start = ranges[i][0] - offset
            block = _checked(layout, blocks[i], data[start : start + ranges[i][1]])
            if block is None:
                bad.append(blocks[i])
            else:
                deliver(block)
        if bad:
            damage.add(key, "does not match its digest", bad)


def _checked(layout: Layout, number: int, payload: bytes) -> Block | None:
    length = layout.block_len(number)
    codec = int(layout.codec[number])
    try:
        plain = decode_block(codec, payload, length)
    except (zstandard.ZstdError, ValueError):
        return None
    if len(plain) != length or blake3.blake3(plain).digest() != layout.digests[number].tobytes():
        return None
    return Block(number, codec, payload, plain)
