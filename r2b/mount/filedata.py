"""Reading byte ranges of catalogued files straight from a stored disk, many files at once.

A catalog row says where a file's bytes are (``catalog.schema``: extents on the disk, or inline
bytes). ``read_ranges`` serves ``(file, offset, length)`` requests against a disk ``Layout`` (a
replica snapshot at build time, a backup image at restore time): it maps every requested range
to the tracking blocks that hold it, fetches **only those blocks** in one
``r2b.blockio.fetch_blocks`` call (ranged GETs coalesced per pack, on a few threads, each block
verified) and cuts the ranges out. Bytes no extent covers (holes) read as zeros. Callers batch
their requests in disk order so that neighbouring files share blocks and requests
(``batches``). Files whose data needs the filesystem driver (``storage == "fs"``: NTFS
compressed or encrypted) are not served here: ``UnreadableFilesystem`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from r2b.blockio import Block, Layout, fetch_blocks
from r2b.errors import BlocksUnreadable, CorruptData, UnreadableFilesystem
from r2b.extents import FileExtent, extent_pieces, extents_within
from r2b.store.base import ObjectStore

BATCH_BYTES = 16 << 20  # requested bytes per fetch (memory: results plus blocks in flight)


@dataclass(frozen=True)
class StoredFile:
    """Where a catalogued regular file's bytes are on its disk (from its catalog row)."""

    path: str
    disk: str
    size: int
    storage: str  # extents, inline, fs, none (catalog.schema)
    extents: tuple[FileExtent, ...] = ()
    inline: bytes | None = None
    mtime_ns: int | None = None

    @property
    def first_disk_offset(self) -> int:
        return self.extents[0][1] if self.extents else -1


Request = tuple[StoredFile, int, int]  # file, offset in it, length


def clip(extents: Sequence[FileExtent], offset: int, length: int) -> list[FileExtent]:
    """The parts of ``extents`` inside file bytes ``[offset, offset + length)``, with file
    offsets made relative to ``offset``."""
    end = offset + length
    out: list[FileExtent] = []
    for file_offset, disk_offset, count in extents:
        start, stop = max(file_offset, offset), min(file_offset + count, end)
        if start < stop:
            out.append((start - offset, disk_offset + start - file_offset, stop - start))
    return out


def read_ranges(
    store: ObjectStore, layout: Layout, requests: Sequence[Request], source: str
) -> list[bytes]:
    """The bytes of each request (fewer at the end of a file), fetching only the blocks that
    hold them; ``source`` names the disk in errors."""
    results = [bytearray(max(0, min(length, f.size - offset))) for f, offset, length in requests]
    wanted: dict[int, list[tuple[int, int, int, int]]] = {}
    for index, (stored, offset, _) in enumerate(requests):
        buffer = results[index]
        if not buffer:
            continue
        if stored.storage == "inline":
            data = (stored.inline or b"")[offset : offset + len(buffer)]
            buffer[: len(data)] = data
        elif stored.storage == "fs":
            raise UnreadableFilesystem(
                stored.path, "its data needs the filesystem driver (compressed or encrypted)"
            )
        elif stored.storage == "extents":
            if not extents_within(stored.extents, stored.size, layout.size):
                raise CorruptData(f"{source}: the catalog places {stored.path} off the disk")
            parts = clip(stored.extents, offset, len(buffer))
            for block, inside, at, count in extent_pieces(parts, layout.block_size):
                wanted.setdefault(block, []).append((index, inside, at, count))
    _fetch(store, layout, wanted, results, source)
    return [bytes(b) for b in results]


def _fetch(
    store: ObjectStore,
    layout: Layout,
    wanted: dict[int, list[tuple[int, int, int, int]]],
    results: list[bytearray],
    source: str,
) -> None:
    if not wanted:
        return

    def deliver(block: Block) -> None:
        for index, inside, at, count in wanted[block.number]:
            results[index][at : at + count] = block.plain[inside : inside + count]

    blocks = np.array(sorted(wanted), dtype=np.int64)
    damage = fetch_blocks(store, layout, blocks, deliver)
    if damage:
        reason = next(iter(damage.by_key.values()))[0]
        raise BlocksUnreadable(source, damage.blocks, reason)


def batches(requests: Sequence[Request], limit: int = BATCH_BYTES) -> Iterator[list[int]]:
    """Indexes of ``requests`` in disk order (neighbours share blocks), in groups of about
    ``limit`` requested bytes."""
    order = sorted(range(len(requests)), key=lambda i: requests[i][0].first_disk_offset)
    batch: list[int] = []
    size = 0
    for index in order:
        batch.append(index)
        size += requests[index][2]
        if size >= limit:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class DiskReader:
    """``read_ranges`` over the disks of a machine: each request goes to its file's disk, whose
    layout ``layout_of`` gives."""

    def __init__(self, store: ObjectStore, layout_of: Callable[[str], Layout], source: str) -> None:
        self.store = store
        self.layout_of = layout_of
        self.source = source

    def __call__(self, requests: Sequence[Request]) -> list[bytes]:
        by_disk: dict[str, list[int]] = {}
        for index, (stored, _, _) in enumerate(requests):
            by_disk.setdefault(stored.disk, []).append(index)
        out = [b""] * len(requests)
        for disk, indexes in by_disk.items():
            layout = self.layout_of(disk)
            chosen = [requests[i] for i in indexes]
            data = read_ranges(self.store, layout, chosen, f"{self.source}/{disk}")
            for index, value in zip(indexes, data, strict=True):
                out[index] = value
        return out
