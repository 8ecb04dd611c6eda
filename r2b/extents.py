"""Pure block and extent arithmetic (no I/O), property-tested in tests/test_extents.py.

An *extent* is ``(offset, length)`` in bytes on a disk; a *block* is the index of a fixed-size
tracking block; a *run* is ``(first_block, count)`` of consecutive blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

Extent = tuple[int, int]
Run = tuple[int, int]


def block_count(disk_size: int, block_size: int) -> int:
    """Blocks needed to cover ``disk_size`` bytes; the last one may be partial."""
    return -(-disk_size // block_size)


def block_length(block: int, disk_size: int, block_size: int) -> int:
    """Bytes of ``block`` that lie on the disk (``block_size`` but for a partial last block)."""
    return max(0, min(block_size, disk_size - block * block_size))


def extents_to_blocks(
    extents: Iterable[Extent], block_size: int, disk_size: int
) -> npt.NDArray[np.int64]:
    """Sorted unique blocks touched by ``extents``, clipped to the disk; empty extents ignored."""
    parts: list[npt.NDArray[np.int64]] = []
    limit = block_count(disk_size, block_size)
    for offset, length in extents:
        if offset < 0 or length < 0:
            raise ValueError(f"negative extent ({offset}, {length})")
        if length == 0 or offset >= disk_size:
            continue
        first = offset // block_size
        last = min(offset + length - 1, disk_size - 1) // block_size
        parts.append(np.arange(first, min(last + 1, limit), dtype=np.int64))
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate(parts))


def blocks_to_runs(blocks: npt.NDArray[np.int64], max_count: int) -> Iterator[Run]:
    """Coalesce sorted unique blocks into runs of consecutive blocks of at most ``max_count``."""
    if len(blocks) == 0:
        return
    breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
    for group in np.split(blocks, breaks):
        start = int(group[0])
        remaining = len(group)
        while remaining > 0:
            count = min(remaining, max_count)
            yield start, count
            start += count
            remaining -= count


def whole_disk_runs(disk_size: int, block_size: int, max_count: int) -> Iterator[Run]:
    """Runs of ``max_count`` blocks covering the whole disk in order."""
    total = block_count(disk_size, block_size)
    for start in range(0, total, max_count):
        yield start, min(max_count, total - start)


def coalesce_ranges(ranges: Iterable[Extent], max_gap: int = 0) -> list[tuple[int, int, list[int]]]:
    """Merge byte ranges that touch (or are within ``max_gap``) into fewer reads.

    Returns ``(offset, length, members)`` where ``members`` are the indexes of the input ranges
    inside that read, in input order of offset. Input may be unsorted.
    """
    indexed = sorted(enumerate(ranges), key=lambda item: item[1][0])
    merged: list[tuple[int, int, list[int]]] = []
    for index, (offset, length) in indexed:
        if merged and offset <= merged[-1][0] + merged[-1][1] + max_gap:
            start, span, members = merged[-1]
            merged[-1] = (start, max(span, offset + length - start), [*members, index])
        else:
            merged.append((offset, length, [index]))
    return merged


FileExtent = tuple[int, int, int]  # file_offset, disk_offset, length
Piece = tuple[int, int, int, int]  # block, offset in block, file_offset, length


def extent_pieces(extents: Iterable[FileExtent], block_size: int) -> Iterator[Piece]:
    """Split a file's disk extents at block boundaries: each piece lies in one block.

    ``(block, offset_in_block, file_offset, length)``: the file's bytes
    ``[file_offset, file_offset + length)`` are the block's bytes from ``offset_in_block``.
    Pieces come in input order; empty extents give none.
    """
    for file_offset, disk_offset, length in extents:
        if file_offset < 0 or disk_offset < 0 or length < 0:
            raise ValueError(f"negative extent ({file_offset}, {disk_offset}, {length})")
        position, end, at = disk_offset, disk_offset + length, file_offset
        while position < end:
            block, inside = divmod(position, block_size)
            count = min(block_size - inside, end - position)
            yield block, inside, at, count
            position += count
            at += count


def extents_within(extents: Iterable[FileExtent], file_size: int, disk_size: int) -> bool:
    """Whether every extent lies inside the file and inside the disk (a catalog sanity check)."""
    return all(
        f >= 0 and d >= 0 and n >= 0 and f + n <= file_size and d + n <= disk_size
        for f, d, n in extents
    )
