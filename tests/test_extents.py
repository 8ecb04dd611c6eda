"""Property tests of the pure block arithmetic in r2b.extents."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from r2b.extents import (
    block_count,
    block_length,
    blocks_to_runs,
    coalesce_ranges,
    extents_to_blocks,
    whole_disk_runs,
)

sizes = st.integers(min_value=1, max_value=1 << 20)
block_sizes = st.sampled_from([512, 4096, 65536])
extents = st.lists(st.tuples(st.integers(0, 1 << 21), st.integers(0, 1 << 16)), max_size=30)


@given(sizes, block_sizes)
def test_block_lengths_cover_the_disk_exactly(disk_size: int, block_size: int) -> None:
    n = block_count(disk_size, block_size)
    assert sum(block_length(b, disk_size, block_size) for b in range(n)) == disk_size
    assert block_length(n, disk_size, block_size) == 0


small_extents = st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 3_000)), max_size=12)


@given(small_extents, st.integers(1, 20_000), st.sampled_from([512, 4096]))
def test_extents_to_blocks_is_exactly_the_touched_blocks(
    exts: list[tuple[int, int]], disk_size: int, block_size: int
) -> None:
    got = extents_to_blocks(exts, block_size, disk_size)
    # every byte, one by one: the blocks holding a byte of an extent that lies on the disk
    expected = {
        byte // block_size
        for offset, length in exts
        for byte in range(offset, min(offset + length, disk_size))
    }
    assert list(got) == sorted(expected)


@given(st.sets(st.integers(0, 5000), max_size=200), st.integers(1, 70))
def test_runs_cover_blocks_once_in_order(blocks: set[int], max_count: int) -> None:
    arr = np.array(sorted(blocks), dtype=np.int64)
    runs = list(blocks_to_runs(arr, max_count))
    flat = [b for start, count in runs for b in range(start, start + count)]
    assert flat == sorted(blocks)
    assert all(1 <= count <= max_count for _, count in runs)


@given(sizes, block_sizes, st.integers(1, 100))
def test_whole_disk_runs_cover_every_block(disk_size: int, block_size: int, max_count: int) -> None:
    runs = list(whole_disk_runs(disk_size, block_size, max_count))
    flat = [b for start, count in runs for b in range(start, start + count)]
    assert flat == list(range(block_count(disk_size, block_size)))


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 500)), max_size=40))
def test_coalesced_reads_contain_every_range(ranges: list[tuple[int, int]]) -> None:
    merged = coalesce_ranges(ranges)
    seen = sorted(i for _, _, members in merged for i in members)
    assert seen == list(range(len(ranges)))
    for offset, length, members in merged:
        for i in members:
            start, size = ranges[i]
            assert offset <= start and start + size <= offset + length
    for (a, alen, _), (b, _, _) in itertools.pairwise(merged):
        assert a + alen < b


@given(
    st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 300)), max_size=10),
    st.integers(0, 6000),
    st.integers(1, 600),
)
def test_in_hole_is_no_overlap_with_any_data_extent(
    raw: list[tuple[int, int]], offset: int, length: int
) -> None:
    from r2b.source.disk import in_hole

    # sorted, disjoint extents as SEEK_DATA/SEEK_HOLE report them
    extents: list[tuple[int, int]] = []
    for start, size in sorted(raw):
        if not extents or start > extents[-1][1]:
            extents.append((start, start + size))
    ends = [end for _, end in extents]
    overlaps = any(start < offset + length and offset < end for start, end in extents)
    assert in_hole(extents, ends, offset, length) == (not overlaps)
