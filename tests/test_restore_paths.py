"""Property tests of granular restore's pure parts: extents to block pieces, path selection
and globs, and keeping names and symlink targets inside the restore folder."""

from __future__ import annotations

import fnmatch
import posixpath

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from r2b.extents import extent_pieces, extents_within
from r2b.restore.select import (
    contained_target,
    glob_regex,
    normalize,
    safe_parts,
    select,
    subtree,
)

block_sizes = st.sampled_from([512, 4096, 32768])


@st.composite
def files_on_a_disk(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int, int]], int]:
    """A small disk and a file laid on it in non-overlapping extents (gaps are holes)."""
    disk = draw(st.binary(min_size=1, max_size=20_000))
    extents, at = [], 0
    for _ in range(draw(st.integers(0, 6))):
        at += draw(st.integers(0, 3000))  # a hole
        length = draw(st.integers(1, 3000))
        start = draw(st.integers(0, max(0, len(disk) - length)))
        length = min(length, len(disk) - start)
        extents.append((at, start, length))
        at += length
    return disk, extents, at + draw(st.integers(0, 100))


@given(files_on_a_disk(), block_sizes)
def test_pieces_rebuild_the_file_from_its_blocks(
    case: tuple[bytes, list[tuple[int, int, int]], int], block_size: int
) -> None:
    disk, extents, size = case
    assert extents_within(extents, size, len(disk))
    expected = bytearray(size)
    for file_offset, disk_offset, length in extents:
        expected[file_offset : file_offset + length] = disk[disk_offset : disk_offset + length]
    rebuilt = bytearray(size)
    pieces = list(extent_pieces(extents, block_size))
    for block, inside, file_offset, length in pieces:
        assert inside >= 0 and inside + length <= block_size and length > 0
        data = disk[block * block_size : (block + 1) * block_size]
        rebuilt[file_offset : file_offset + length] = data[inside : inside + length]
    assert rebuilt == expected
    assert sum(p[3] for p in pieces) == sum(e[2] for e in extents)


@given(files_on_a_disk())
def test_extents_off_the_disk_or_past_the_file_are_caught(
    case: tuple[bytes, list[tuple[int, int, int]], int],
) -> None:
    disk, extents, size = case
    if extents:
        f, _, n = extents[-1]
        assert not extents_within([*extents[:-1], (f, len(disk) - n + 1, n)], size, len(disk))
        assert not extents_within(extents, f + n - 1, len(disk))


names = st.sampled_from(["a", "b", "ab", "a.txt", "b.bin", "ñ", "x y", "[x]"])
paths = st.lists(names, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
glob_parts = st.sampled_from(["a", "b", "*", "?", "a*", "*.txt", "[ab]", "[!a]*", "ñ", "**"])
globs = st.lists(glob_parts, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


def reference_match(pattern: str, path: str) -> bool:
    """Component by component with fnmatch; ``**`` as a component matches any number."""

    def match(pat: list[str], parts: list[str]) -> bool:
        if not pat:
            return not parts
        if pat[0] == "**":
            return any(match(pat[1:], parts[i:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and match(pat[1:], parts[1:])

    return match(pattern.split("/")[1:], path.split("/")[1:])


@given(globs, paths)
def test_globs_match_component_by_component(pattern: str, path: str) -> None:
    import re

    assert bool(re.match(glob_regex(pattern), path)) == reference_match(pattern, path)


@given(st.lists(paths, min_size=1, max_size=30, unique=True), st.data())
def test_selecting_a_folder_brings_everything_below_it(
    listing: list[str], data: st.DataObject
) -> None:
    everything = sorted({p.rsplit("/", i)[0] or "/" for p in listing for i in range(4)} - {"/"})
    is_dir = np.array([any(q.startswith(p + "/") for q in everything) for p in everything])
    chosen_path = data.draw(st.sampled_from(everything))
    chosen, missing = select(everything, is_dir, [chosen_path])
    want = {p for p in everything if p == chosen_path or p.startswith(chosen_path + "/")}
    assert {p for p, c in zip(everything, chosen, strict=True) if c} == want
    assert missing == []
    start, stop = subtree(everything, chosen_path)
    assert set(everything[start:stop]) == want - {chosen_path}
    _, missing = select(everything, is_dir, ["/not/there", chosen_path + "/*zz*"])
    assert missing == ["/not/there", normalize(chosen_path + "/*zz*")]


segments = st.sampled_from(["a", "b", "..", ".", "", "c.txt", "ñ"])


@given(
    st.lists(st.sampled_from(["p1", "etc", "x", "y"]), min_size=1, max_size=5),
    st.integers(0, 2),
    st.lists(segments, max_size=8),
    st.booleans(),
)
def test_symlink_targets_stay_inside_the_filesystem_root(
    link_parts: list[str], fs_depth: int, target_segments: list[str], absolute: bool
) -> None:
    fs_depth = min(fs_depth, len(link_parts) - 1)
    target = ("/" if absolute else "") + "/".join(target_segments)
    got = contained_target(link_parts, fs_depth, target)
    if not target:
        assert got is None
        return
    assert got is not None and not got.startswith("/")
    root = "/DIR/" + "/".join(link_parts[:fs_depth]) if fs_depth else "/DIR"
    landing = posixpath.normpath(posixpath.join("/DIR", *link_parts[:-1], got))
    assert landing == root or landing.startswith(root.rstrip("/") + "/"), (landing, root)
    if not absolute:  # a relative target that stays inside lands where it always did
        plain = posixpath.normpath(posixpath.join("/DIR", *link_parts[:-1], target))
        if plain.startswith(root.rstrip("/") + "/") and ".." not in target_segments:
            assert landing == plain


def test_symlink_examples() -> None:
    assert contained_target(("p1", "etc", "alt"), 1, "/etc/passwd") == "passwd"
    assert contained_target(("p1", "link"), 1, "/etc/passwd") == "etc/passwd"
    assert contained_target(("link",), 0, "../../../../tmp/x") == "tmp/x"
    assert contained_target(("a", "b", "link"), 0, "../c") == "../c"
    assert contained_target(("a", "link"), 0, "/") == ".."
    assert contained_target(("link",), 0, "x\0y") is None


@given(st.lists(st.sampled_from(["a", "..", ".", "", "b\0", "ok"]), min_size=1, max_size=5))
def test_unsafe_components_are_refused(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    got = safe_parts(path)
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        assert got is None
    else:
        assert got == tuple(parts)


def test_normalize() -> None:
    assert normalize("") == normalize("/") == "/"
    assert normalize("etc//hosts/") == "/etc/hosts"
