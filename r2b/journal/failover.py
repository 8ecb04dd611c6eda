"""Failover: materialise a disk of the replica, at the latest cycle or at a checkpoint.

Blocks are fetched with ranged GETs, coalesced per pack, on a small thread pool; each block is
decoded and its BLAKE3 digest checked before it is written. All-zero blocks are not written (the
output is sparse). The output appears under its final name only when every block checked out:
it is written to ``<name>.partial`` and renamed. A missing or damaged journal object fails the
whole disk with ``JournalCorrupt`` naming the object and the blocks it holds.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np
import zstandard

from r2b.errors import JournalCorrupt, NotFound
from r2b.extents import coalesce_ranges
from r2b.journal.format import CODEC_RAW, CODEC_ZSTD
from r2b.journal.snapshot import BlockMap
from r2b.store.base import ObjectStore

READ_GAP = 256 << 10  # fetch across gaps this small rather than paying another request

Progress = Callable[[int], None]
_local = threading.local()


@dataclass(frozen=True)
class Materialised:
    path: Path
    sha256: str
    bytes_written: int


def decode_block(codec: int, payload: bytes, length: int) -> bytes:
    if codec == CODEC_RAW:
        return payload
    if codec == CODEC_ZSTD:
        decomp: zstandard.ZstdDecompressor | None = getattr(_local, "zstd", None)
        if decomp is None:
            decomp = _local.zstd = zstandard.ZstdDecompressor()
        return decomp.decompress(payload, max_output_size=length)
    raise ValueError(f"unknown codec {codec}")


class _Damage:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, tuple[str, list[int]]] = {}

    def add(self, key: str, reason: str, blocks: list[int]) -> None:
        with self.lock:
            _, known = self.by_key.setdefault(key, (reason, []))
            known.extend(blocks)


def materialise(
    store: ObjectStore,
    bmap: BlockMap,
    out: Path,
    workers: int = 4,
    progress: Progress | None = None,
) -> Materialised:
    """Write the disk described by ``bmap`` to ``out``; return its sha256."""
    partial = out.with_name(out.name + ".partial")
    damage = _Damage()
    with open(partial, "wb") as f:
        f.truncate(bmap.size)
        fd = f.fileno()
        stored = np.flatnonzero(bmap.codec != 0)
        by_pack = _group_by_pack(bmap, stored)
        with ThreadPoolExecutor(workers, thread_name_prefix="r2b-failover") as pool:
            jobs = [
                pool.submit(_fetch_pack, store, bmap, key, blocks, fd, damage, progress)
                for key, blocks in by_pack.items()
            ]
            for job in jobs:
                job.result()
        os.fsync(fd)
    if damage.by_key:
        partial.unlink()
        key, (reason, blocks) = sorted(damage.by_key.items())[0]
        raise JournalCorrupt(bmap.machine, bmap.disk, key, sorted(blocks), reason)
    os.replace(partial, out)
    return Materialised(out, sha256_of(out), bmap.size)


def _group_by_pack(bmap: BlockMap, blocks: np.ndarray) -> dict[str, list[int]]:
    order = blocks[np.argsort(bmap.pack[blocks], kind="stable")]
    groups: dict[str, list[int]] = {}
    for block in order.tolist():
        groups.setdefault(bmap.pack_keys[bmap.pack[block]], []).append(block)
    return groups


def _fetch_pack(
    store: ObjectStore,
    bmap: BlockMap,
    key: str,
    blocks: list[int],
    fd: int,
    damage: _Damage,
    progress: Progress | None,
) -> None:
    ranges = [(int(bmap.offset[b]), int(bmap.length[b])) for b in blocks]
    for offset, length, members in coalesce_ranges(ranges, READ_GAP):
        try:
            data = store.get_range(key, offset, length)
        except NotFound:
            damage.add(key, "is missing", [blocks[i] for i in members])
            continue
        bad = []
        for i in members:
            block = blocks[i]
            start = ranges[i][0] - offset
            plain = _checked_block(bmap, block, data[start : start + ranges[i][1]])
            if plain is None:
                bad.append(block)
                continue
            os.pwrite(fd, plain, block * bmap.block_size)
            if progress:
                progress(len(plain))
        if bad:
            damage.add(key, "does not match its digest", bad)


def _checked_block(bmap: BlockMap, block: int, payload: bytes) -> bytes | None:
    length = bmap.block_len(block)
    try:
        plain = decode_block(int(bmap.codec[block]), payload, length)
    except (zstandard.ZstdError, ValueError):
        return None
    if len(plain) != length or blake3.blake3(plain).digest() != bmap.digests[block].tobytes():
        return None
    return plain


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()
