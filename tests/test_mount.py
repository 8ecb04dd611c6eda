"""Mounting a stored disk: ``ImageFile`` over the replica's blocks, partition tables, and the
filesystem walker, on images made by the real tools (mke2fs, mkfs.vfat, mkntfs, sgdisk).

Every disk here is replicated into a local store first, so reads really come from the
store's packs, verified, as they do when a backup is built.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from catalog.schema import RowBuffer
from r2b import ops
from r2b.errors import BlocksUnreadable, StoreUnreachable
from r2b.ids import DiskId
from r2b.journal.replicator import CheckpointRequest, Replicator
from r2b.journal.snapshot import BlockMap, Journal
from r2b.mount import indexer
from r2b.mount.image import ImageFile
from r2b.mount.indexer import index_disk
from r2b.mount.partitions import TskImage, read_partitions
from r2b.mount.walker import display_name, parse_reparse_point
from r2b.store import LocalStore
from tests.disks import MIB, gpt_partitions, make_gpt_disk, sparse_file
from tests.fsimages import (
    Expected,
    data_extents,
    make_ext4,
    make_fat32,
    make_ntfs,
    place,
    sample_tree,
)

DISK = DiskId("disk0")


def replicate(tmp_path: Path, image: Path, name: str = "m") -> tuple[LocalStore, BlockMap]:
    """Register ``image`` as a one-disk machine, replicate it, return its replica snapshot."""
    settings = ops.Settings(f"file://{tmp_path / ('store-' + name)}", tmp_path / "home")
    spec = ops.add_machine(settings, name, [str(image)])
    store = settings.open()
    Replicator(store, spec, settings.state_dir).cycle(
        {DISK: data_extents(image)}, checkpoint=CheckpointRequest("full")
    )
    disk = spec.disks[0]
    bmap = Journal(store, spec.name).block_map(disk.id, disk.size, disk.block_size)
    assert isinstance(store, LocalStore)
    return store, bmap


def walk(store: LocalStore, bmap: BlockMap) -> tuple[list[indexer.VolumeStatus], list[dict]]:  # type: ignore[type-arg]
    rows = RowBuffer(machine="m", backup="m.cp-000001")
    statuses, _ = index_disk(store, bmap, DISK, "/", rows, "test disk")
    table = rows.table().drop_columns(["mtime", "ctime"])
    return statuses, table.to_pylist()


# --- ImageFile --------------------------------------------------------------------------------


def test_reads_are_the_disk_bytes_fetched_from_the_store(tmp_path: Path) -> None:
    image = make_ext4(tmp_path / "d.img", 24, sample_tree(5))
    store, bmap = replicate(tmp_path, image)
    raw = image.read_bytes()
    f = ImageFile(store, bmap, cache_bytes=8 * bmap.block_size, readahead=3)
    rng = random.Random(7)
    for _ in range(300):
        offset = rng.randrange(len(raw) + 100)
        length = rng.choice([0, 1, 511, 4096, bmap.block_size, 3 * bmap.block_size + 17])
        assert f.pread(offset, length) == raw[offset : offset + length]
    assert f.cached_blocks <= 8
    f.seek(len(raw) - 10)
    assert f.read() == raw[-10:] and f.tell() == len(raw)
    assert f.read(5) == b""
    assert 0 < f.bytes_fetched < len(raw)


def test_zero_blocks_are_never_fetched(tmp_path: Path) -> None:
    image = make_ext4(tmp_path / "d.img", 24, sample_tree(5))
    store, bmap = replicate(tmp_path, image)
    zero = int(next(b for b in range(bmap.blocks) if bmap.codec[b] == 0))
    f = ImageFile(store, bmap)
    assert f.pread(zero * bmap.block_size, bmap.block_size) == bytes(bmap.block_size)
    assert f.blocks_fetched == 0 and f.bytes_fetched == 0


def test_a_damaged_block_is_named_not_read(tmp_path: Path) -> None:
    image = make_ext4(tmp_path / "d.img", 24, sample_tree(5))
    store, bmap = replicate(tmp_path, image)
    victim = int(bmap.stored_blocks()[3])
    pack = store.root / bmap.pack_keys[bmap.pack[victim]]
    data = bytearray(pack.read_bytes())
    data[int(bmap.offset[victim]) + 5] ^= 0xFF
    pack.write_bytes(bytes(data))
    f = ImageFile(store, bmap, source="the test disk", readahead=0)
    with pytest.raises(BlocksUnreadable) as caught:
        f.pread(victim * bmap.block_size, 10)
    assert caught.value.blocks == [victim] and caught.value.source == "the test disk"


# --- partition tables -------------------------------------------------------------------------


def test_gpt_partitions_are_numbered_like_linux(tmp_path: Path) -> None:
    disk = tmp_path / "gpt.img"
    make_gpt_disk(disk, 40, [(8, "8300"), (8, "0700"), (8, "8300")])
    expected = gpt_partitions(disk)
    store, bmap = replicate(tmp_path, disk)
    table = read_partitions(TskImage(ImageFile(store, bmap)))
    assert table.scheme == "gpt"
    assert [(v.name, v.offset, v.length) for v in table.volumes] == [
        (f"p{i + 1}", offset, length) for i, (offset, length, _) in enumerate(expected)
    ]


def write_mbr(disk: Path) -> None:
    """An MBR with one primary partition and an extended one holding two logical ones."""

    def entry(kind: int, start: int, count: int) -> bytes:
        return struct.pack("<B3sB3sII", 0, b"\0\0\0", kind, b"\0\0\0", start, count)

    def sector(entries: bytes) -> bytes:
        return bytes(446) + entries.ljust(64, b"\0") + b"\x55\xaa"

    with disk.open("r+b") as f:
        f.write(sector(entry(0x83, 2048, 8192) + entry(0x05, 12288, 40960)))
        f.seek(12288 * 512)  # first EBR: a logical partition, then a link to the next EBR
        f.write(sector(entry(0x83, 2048, 8192) + entry(0x05, 16384, 20480)))
        f.seek((12288 + 16384) * 512)
        f.write(sector(entry(0x07, 2048, 8192)))


def test_mbr_logical_partitions_are_numbered_from_5(tmp_path: Path) -> None:
    disk = sparse_file(tmp_path / "mbr.img", 32 * MIB)
    write_mbr(disk)
    store, bmap = replicate(tmp_path, disk)
    table = read_partitions(TskImage(ImageFile(store, bmap)))
    assert table.scheme == "mbr"
    assert [(v.name, v.offset // 512) for v in table.volumes] == [
        ("p1", 2048),
        ("p5", 12288 + 2048),
        ("p6", 12288 + 16384 + 2048),
    ]


def test_a_filesystem_directly_on_the_disk_is_one_unnamed_volume(tmp_path: Path) -> None:
    image = make_fat32(tmp_path / "fat.img", 34, {"a.txt": Expected("file", b"a")})
    store, bmap = replicate(tmp_path, image)
    table = read_partitions(TskImage(ImageFile(store, bmap)))
    assert (table.scheme, [(v.name, v.offset) for v in table.volumes]) == ("none", [("", 0)])


# --- the walker -------------------------------------------------------------------------------


def check_rows(raw: bytes, rows: list[dict], tree: dict[str, Expected], prefix: str = "") -> None:  # type: ignore[type-arg]
    """Rows describe ``tree``: types, sizes, link targets; a file's extents (read straight from
    the raw disk) or inline bytes are its content, and holes are zeros."""
    by_path = {r["path"]: r for r in rows}
    for path, want in tree.items():
        got = by_path[f"{prefix}/{path}"]
        assert got["type"] == want.kind, path
        if want.kind == "symlink":
            assert got["link"] == want.target
        if want.kind != "file":
            continue
        assert got["size"] == want.size, path
        if got["storage"] == "inline":
            content = got["inline"]
        else:
            buffer = bytearray(want.size)
            for e in got["extents"]:
                at, n = e["disk_offset"], e["length"]
                buffer[e["file_offset"] : e["file_offset"] + n] = raw[at : at + n]
            content = bytes(buffer)
        assert content == want.data, path


@pytest.mark.parametrize("kind", ["ext4", "fat32", "ntfs"])
def test_the_walker_finds_every_entry_and_its_bytes(tmp_path: Path, kind: str) -> None:
    tree = sample_tree(9, sparse=kind != "fat32", links=kind != "fat32")
    maker = {"ext4": make_ext4, "fat32": make_fat32, "ntfs": make_ntfs}[kind]
    image = maker(tmp_path / "fs.img", 34 if kind == "fat32" else 24, tree)
    store, bmap = replicate(tmp_path, image)
    statuses, rows = walk(store, bmap)
    assert [(s.partition, s.fs, s.indexed) for s in statuses] == [("", kind, True)]
    check_rows(image.read_bytes(), rows, tree)
    extra = {r["path"] for r in rows} - {f"/{p}" for p in tree}
    assert extra <= {"/lost+found"}, extra
    assert statuses[0].files == len(rows)


def test_a_gpt_disk_is_walked_partition_by_partition(tmp_path: Path) -> None:
    ext, fat = sample_tree(1, sparse=False), sample_tree(2, sparse=False, links=False)
    disk = tmp_path / "gpt.img"
    parts = make_gpt_disk(disk, 80, [(24, "8300"), (34, "0700"), (8, "8300")])
    place(disk, parts[0][0], make_ext4(tmp_path / "e.img", 24, ext))
    place(disk, parts[1][0], make_fat32(tmp_path / "f.img", 34, fat))
    with disk.open("r+b") as f:  # p3: random bytes, no filesystem
        f.seek(parts[2][0])
        f.write(random.Random(3).randbytes(MIB))
    store, bmap = replicate(tmp_path, disk)
    statuses, rows = walk(store, bmap)
    assert [(s.partition, s.path, s.fs, s.indexed) for s in statuses] == [
        ("p1", "/p1", "ext4", True),
        ("p2", "/p2", "fat32", True),
        ("p3", "/p3", None, False),
    ]
    raw = disk.read_bytes()
    check_rows(raw, rows, ext, "/p1")
    check_rows(raw, rows, fat, "/p2")
    roots = [(r["path"], r["fs"], r["note"]) for r in rows if r["parent"] == "/"]
    assert roots == [
        ("/p1", "ext4", None),
        ("/p2", "fat32", None),
        ("/p3", "", f"not indexed: {statuses[2].reason}"),
    ]


def test_a_disk_of_random_bytes_is_reported_not_indexed(tmp_path: Path) -> None:
    disk = tmp_path / "noise.img"
    disk.write_bytes(random.Random(1).randbytes(4 * MIB))
    store, bmap = replicate(tmp_path, disk)
    statuses, rows = walk(store, bmap)
    assert rows == []
    [status] = statuses
    assert (status.partition, status.indexed, status.files) == ("", False, 0)
    assert status.reason == "Possible encryption detected (High entropy (8.00))"  # TSK's words


def test_a_walker_failure_does_not_fail_indexing_but_a_store_outage_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_ext4(tmp_path / "d.img", 24, sample_tree(5))
    store, bmap = replicate(tmp_path, image)

    def broken(*args: object) -> None:
        raise ValueError("a surprise")

    monkeypatch.setattr(indexer, "walk_filesystem", broken)
    statuses, rows = walk(store, bmap)
    assert rows == [] and statuses[0].reason == "ValueError: a surprise"

    def outage(*args: object) -> None:
        raise StoreUnreachable("file:///x", "gone")

    monkeypatch.setattr(indexer, "walk_filesystem", outage)
    with pytest.raises(StoreUnreachable):
        walk(store, bmap)


# --- pure helpers ------------------------------------------------------------------------------


def reparse(tag: int, body: bytes) -> bytes:
    return struct.pack("<IHH", tag, len(body), 0) + body


def symlink_body(substitute: str, printed: str, flags: int) -> bytes:
    sub, pr = substitute.encode("utf-16-le"), printed.encode("utf-16-le")
    return struct.pack("<HHHHI", 0, len(sub), len(sub), len(pr), flags) + sub + pr


def test_ntfs_reparse_points_become_link_targets() -> None:
    relative = reparse(0xA000000C, symlink_body("..\\docs\\a.txt", "..\\docs\\a.txt", 1))
    assert parse_reparse_point(relative) == "../docs/a.txt"
    absolute = reparse(0xA000000C, symlink_body("\\??\\C:\\etc\\passwd", "C:\\etc\\passwd", 0))
    assert parse_reparse_point(absolute) == "/etc/passwd"
    sub, pr = "\\??\\C:\\Users".encode("utf-16-le"), "C:\\Users".encode("utf-16-le")
    junction = struct.pack("<HHHH", 0, len(sub), len(sub) + 2, len(pr)) + sub + b"\0\0" + pr
    assert parse_reparse_point(reparse(0xA0000003, junction)) == "/Users"
    wsl = reparse(0xA000001D, struct.pack("<I", 2) + "/usr/bin/ñ".encode())
    assert parse_reparse_point(wsl) == "/usr/bin/ñ"
    assert parse_reparse_point(reparse(0x80000017, b"\0" * 16)) is None  # WOF: not a link
    assert parse_reparse_point(b"\x0c\x00\x00\xa0\x04\x00") is None
    assert parse_reparse_point(reparse(0xA000000C, b"\x01")) is None


def test_names_are_one_path_component() -> None:
    assert display_name("日本語.txt".encode()) == "日本語.txt"
    assert display_name(b"a/b") == "a\\x2fb"
    assert display_name(b"\xff\xfe") == "\\xff\\xfe"
