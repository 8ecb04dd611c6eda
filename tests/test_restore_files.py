"""Granular restore from the catalog, on real filesystems made by mkfs tools.

One world per module (built once, about a second): an ext4 image (``mke2fs -d``, inline data,
a file fragmented with debugfs), a FAT32 image (``mkfs.vfat`` + ``mcopy``, fragmented with
``mdel``), an NTFS image (``mkntfs`` + ``wimapply``, fragmented by filling and freeing), a GPT
disk holding all three plus an empty partition, and a machine with two disks. Each is backed
up (replica, full checkpoint, image and catalog); restores are compared byte for byte with the
trees the images were made from: fragmented, sparse, tiny (inline), empty and non-ASCII-named
files, symlinks, modes and mtimes. Then: a single small file from a 4 GiB disk fetches one
chunk; globs and folders; errors; no overwrite; and a crafted filesystem whose names try to
escape the restore folder stays inside it.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from catalog.parquet import catalog_bytes, catalog_partitions, read_catalog
from r2b import ops
from r2b.errors import BadInput, NoCatalog, PathNotInBackup, RestoreConflict
from r2b.image.format import Manifest
from r2b.restore.files import FileRestoreResult, restore_files
from tests.disks import MIB, make_gpt_disk, run, sparse_file
from tests.fsimages import (
    ESCAPES,
    Expected,
    backup_disks,
    ext4_fragmented,
    fat_fragmented,
    make_escaping_ext4,
    make_ext4,
    make_fat32,
    make_ntfs,
    ntfs_fragmented,
    place,
    sample_tree,
)

pytestmark = pytest.mark.slow

Tree = dict[str, Expected]


@dataclass
class World:
    settings: ops.Settings
    trees: dict[str, Tree]  # machine (or gpt partition) -> expected tree
    backups: dict[str, Manifest]

    def restore(
        self, machine: str, to: Path, *paths: str, overwrite: bool = False
    ) -> FileRestoreResult:
        return restore_files(
            self.settings.open(), self.backups[machine], list(paths), to, overwrite=overwrite
        )

    def catalog(self, machine: str) -> pa.Table:
        key = (self.backups[machine].catalog or {})["key"]
        return read_catalog(self.settings.open().get(key), key)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("catalog-world")
    settings = ops.Settings(f"file://{root / 'store'}", root / "home")
    ext, fat, ntfs = sample_tree(1), sample_tree(2, sparse=False, links=False), sample_tree(3)
    make_ext4(root / "ext4.img", 32, ext)
    ext4_fragmented(root / "ext4.img", ext, "fragmented.bin", 300_000)
    make_fat32(root / "fat.img", 40, fat)
    fat_fragmented(root / "fat.img", fat, "fragmented.bin", 60_000)
    make_ntfs(root / "ntfs.img", 16, ntfs)
    ntfs_fragmented(root / "ntfs.img", ntfs, "fragmented.bin", 1_000_000)
    gpt = root / "gpt.img"
    parts = make_gpt_disk(gpt, 96, [(32, "8300"), (40, "0700"), (16, "0700"), (4, "8300")])
    for (offset, _), image in zip(parts, ["ext4.img", "fat.img", "ntfs.img"], strict=False):
        place(gpt, offset, root / image)
    backups = {
        "ext": backup_disks(settings, "ext", [root / "ext4.img"]),
        "fat": backup_disks(settings, "fat", [root / "fat.img"]),
        "ntfs": backup_disks(settings, "ntfs", [root / "ntfs.img"]),
        "gpt": backup_disks(settings, "gpt", [gpt]),
        "two": backup_disks(settings, "two", [root / "ext4.img", root / "fat.img"]),
    }
    return World(settings, {"ext": ext, "fat": fat, "ntfs": ntfs}, backups)


# --- helpers ---------------------------------------------------------------------------------


def assert_restored(out: Path, tree: Tree, modes: bool, dir_times: bool) -> None:
    """Every entry of ``tree`` is under ``out`` as it was: bytes, link target, mode, mtime."""
    for path, want in sorted(tree.items()):
        got = out / path
        st = got.lstat()
        if want.kind == "file":
            assert stat.S_ISREG(st.st_mode), path
            assert got.read_bytes() == want.data, f"{path} differs"
        elif want.kind == "symlink":
            assert stat.S_ISLNK(st.st_mode), path
            assert os.readlink(got) == want.target, path
        else:
            assert stat.S_ISDIR(st.st_mode), path
        if modes and want.mode is not None and want.kind != "symlink":
            assert stat.S_IMODE(st.st_mode) == want.mode, f"{path}: {oct(st.st_mode)}"
        if want.mtime is not None and (want.kind == "file" or (dir_times and want.kind == "dir")):
            assert int(st.st_mtime) == want.mtime, f"{path}: mtime {st.st_mtime}"


def restored_paths(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*")}


def row(table: pa.Table, path: str) -> dict[str, Any]:
    rows = table.filter(pc.equal(table.column("path"), path)).drop_columns(["mtime", "ctime"])
    assert len(rows) == 1, f"{path}: {len(rows)} rows"
    found: dict[str, Any] = rows.to_pylist()[0]
    return found


# --- every file, byte-identical ---------------------------------------------------------------


@pytest.mark.parametrize("machine", ["ext", "fat", "ntfs"])
def test_every_file_restores_byte_identical(world: World, machine: str, tmp_path: Path) -> None:
    result = world.restore(machine, tmp_path / "out", "/")
    tree = world.trees[machine]
    assert_restored(tmp_path / "out", tree, modes=machine == "ext", dir_times=machine == "ext")
    extra = restored_paths(tmp_path / "out") - set(tree)
    assert extra <= {"lost+found"}, extra
    files = [e for e in tree.values() if e.kind == "file"]
    assert result.files == len(files)
    assert result.bytes_written == sum(e.size for e in files)
    assert result.skipped == []


def test_a_gpt_disk_of_several_filesystems(world: World, tmp_path: Path) -> None:
    result = world.restore("gpt", tmp_path / "out", "/")
    out = tmp_path / "out"
    for partition, machine in (("p1", "ext"), ("p2", "fat"), ("p3", "ntfs")):
        assert_restored(out / partition, world.trees[machine], modes=False, dir_times=False)
    assert sorted(os.listdir(out)) == ["p1", "p2", "p3", "p4"]
    assert os.listdir(out / "p4") == []  # not indexed: an empty folder, nothing else
    assert result.skipped == []
    catalog = world.backups["gpt"].catalog
    assert catalog is not None
    parts = {p["partition"]: p for p in catalog["partitions"]}
    assert [(k, parts[k]["fs"], parts[k]["indexed"]) for k in sorted(parts)] == [
        ("p1", "ext4", True),
        ("p2", "fat32", True),
        ("p3", "ntfs", True),
        ("p4", None, False),
    ]
    assert "file system type" in parts["p4"]["reason"]
    assert catalog["files"] == sum(p["files"] for p in parts.values()) > 0
    assert row(world.catalog("gpt"), "/p4")["note"].startswith("not indexed")


def test_fragmented_sparse_and_tiny_files_are_what_the_catalog_says(world: World) -> None:
    for machine, least in (("ext", 3), ("fat", 2), ("ntfs", 2)):
        fragmented = row(world.catalog(machine), "/fragmented.bin")
        assert fragmented["storage"] == "extents"
        assert len(fragmented["extents"]) >= least, (machine, fragmented["extents"])
    for machine in ("ext", "ntfs"):
        tiny = row(world.catalog(machine), "/docs/tiny.txt")
        assert (tiny["storage"], tiny["inline"]) == ("inline", b"hi\n")
        sparse = row(world.catalog(machine), "/data/sparse.img")
        covered = sum(e["length"] for e in sparse["extents"])
        assert covered < sparse["size"] // 4
    link = row(world.catalog("ntfs"), "/docs/link-to-readme")  # an NTFS reparse point
    assert (link["type"], link["link"]) == ("symlink", "readme.txt")


def test_sparse_files_are_restored_sparse(world: World, tmp_path: Path) -> None:
    for machine in ("ext", "ntfs"):
        world.restore(machine, tmp_path / machine, "/data/sparse.img")
        restored = tmp_path / machine / "data" / "sparse.img"
        assert restored.read_bytes() == world.trees[machine]["data/sparse.img"].data
        assert restored.stat().st_blocks * 512 < 256 * 1024, machine


def test_machines_with_two_disks_prefix_paths_with_the_disk(world: World, tmp_path: Path) -> None:
    assert ops.ls(world.settings, world.backups["two"].id, "/") == [
        {"path": "/disk0", "type": "dir", "size": 0, "mtime": None, "mode": 0o755, "fs": ""},
        {"path": "/disk1", "type": "dir", "size": 0, "mtime": None, "mode": 0o755, "fs": ""},
    ]
    world.restore("two", tmp_path, "/disk1/data/random.bin", "/disk0/docs/tiny.txt")
    assert (tmp_path / "disk1/data/random.bin").read_bytes() == world.trees["fat"][
        "data/random.bin"
    ].data
    assert (tmp_path / "disk0/docs/tiny.txt").read_bytes() == b"hi\n"


# --- choosing what to restore ------------------------------------------------------------------


def test_folders_and_globs(world: World, tmp_path: Path) -> None:
    world.restore("ext", tmp_path / "a", "/docs/deep")
    assert restored_paths(tmp_path / "a") == {
        "docs",
        "docs/deep",
        "docs/deep/er",
        "docs/deep/er/still.bin",
        "docs/deep/er/up-two",
    }
    world.restore("ext", tmp_path / "b", "/**/*.txt")
    txt = {p for p in world.trees["ext"] if p.endswith(".txt")}
    assert {p for p in restored_paths(tmp_path / "b") if p.endswith(".txt")} == txt
    world.restore("gpt", tmp_path / "c", "/p*/docs/tiny.txt", "/p[13]/docs/readme.txt")
    assert {p for p in restored_paths(tmp_path / "c") if "." in p} == {
        "p1/docs/tiny.txt",
        "p2/docs/tiny.txt",
        "p3/docs/tiny.txt",
        "p1/docs/readme.txt",
        "p3/docs/readme.txt",
    }
    world.restore("ext", tmp_path / "e", "docs//readme.txt/")  # normalized to /docs/readme.txt
    assert restored_paths(tmp_path / "e") == {"docs", "docs/readme.txt"}
    with pytest.raises(PathNotInBackup):  # docs/readme.txt is in no *partition* of the disk
        world.restore("gpt", tmp_path / "d", "docs/readme.txt")


def test_a_path_not_in_the_backup_is_an_error_and_writes_nothing(
    world: World, tmp_path: Path
) -> None:
    with pytest.raises(PathNotInBackup) as caught:
        world.restore("ext", tmp_path / "out", "/docs/tiny.txt", "/docs/nope*")
    assert caught.value.path == "/docs/nope*"
    assert not (tmp_path / "out").exists()
    with pytest.raises(BadInput):
        world.restore("ext", tmp_path / "out")


def test_existing_files_are_not_overwritten_unless_asked(world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    world.restore("ext", out, "/docs/readme.txt", "/docs/tiny.txt")
    (out / "docs/tiny.txt").write_bytes(b"changed since\n")
    with pytest.raises(RestoreConflict) as caught:
        world.restore("ext", out, "/docs")
    assert "/docs/tiny.txt" in caught.value.paths and "/docs/readme.txt" in caught.value.paths
    assert (out / "docs/tiny.txt").read_bytes() == b"changed since\n"
    assert not (out / "docs/deep").exists()  # checked before writing anything
    result = world.restore("ext", out, "/docs", overwrite=True)
    assert (out / "docs/tiny.txt").read_bytes() == b"hi\n"
    assert result.symlinks == 2
    assert not [p for p in restored_paths(out) if "r2b-partial" in p]


def test_a_symlink_already_in_the_target_is_not_followed(world: World, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "docs").symlink_to(outside)
    for overwrite in (False, True):
        with pytest.raises(RestoreConflict):
            world.restore("ext", out, "/docs/readme.txt", overwrite=overwrite)
    assert os.listdir(outside) == []


def test_a_backup_without_a_catalog(world: World, tmp_path: Path) -> None:
    bare = dataclasses.replace(world.backups["ext"], catalog=None)
    with pytest.raises(NoCatalog):
        restore_files(world.settings.open(), bare, ["/"], tmp_path)


def test_files_that_need_the_filesystem_driver(world: World, tmp_path: Path) -> None:
    """``storage == "fs"`` (NTFS compressed data) is read through TSK from the image."""
    store = world.settings.open()
    manifest = world.backups["ntfs"]
    key = (manifest.catalog or {})["key"]
    original = store.get(key)
    table = read_catalog(original, key)
    forced = pc.if_else(pc.equal(table.column("type"), "file"), "fs", table.column("storage"))
    table = table.set_column(table.schema.get_field_index("storage"), "storage", forced)
    store.put(key, catalog_bytes(table, manifest.id, catalog_partitions(table)))
    try:
        result = restore_files(store, manifest, ["/fragmented.bin", "/data"], tmp_path)
    finally:
        store.put(key, original)
    tree = world.trees["ntfs"]
    assert (tmp_path / "fragmented.bin").read_bytes() == tree["fragmented.bin"].data
    assert (tmp_path / "data/sparse.img").read_bytes() == tree["data/sparse.img"].data
    assert (tmp_path / "data/random.bin").read_bytes() == tree["data/random.bin"].data
    assert result.bytes_fetched > 0


# --- reading only what the file needs -----------------------------------------------------------


def test_one_small_file_of_a_4_gib_disk_fetches_one_chunk(tmp_path: Path) -> None:
    disk = sparse_file(tmp_path / "big.img", 4 << 30)
    tree = {
        "needle.txt": Expected("file", b"the needle\n" * 100),  # 1100 bytes: not inline
        "hay.bin": Expected("file", os.urandom(3 * MIB)),
        "tiny": Expected("file", b"x"),
    }
    src = tmp_path / "src"
    from tests.fsimages import write_tree

    write_tree(src, tree)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", src, disk])
    settings = ops.Settings(f"file://{tmp_path / 'store'}", tmp_path / "home")
    manifest = backup_disks(settings, "big", [disk])
    result = restore_files(settings.open(), manifest, ["/needle.txt"], tmp_path / "out")
    assert (tmp_path / "out/needle.txt").read_bytes() == tree["needle.txt"].data
    assert result.chunks_fetched == 1 and result.requests == 1
    assert 0 < result.bytes_fetched <= 32 * 1024
    assert manifest.disks["disk0"].size == 4 << 30
    whole = restore_files(settings.open(), manifest, ["/hay.bin"], tmp_path / "out2")
    assert whole.chunks_fetched >= 3 * MIB // (32 * 1024)
    assert (tmp_path / "out2/hay.bin").read_bytes() == tree["hay.bin"].data


# --- names that try to escape -------------------------------------------------------------------


def test_a_crafted_filesystem_cannot_escape_the_restore_folder(tmp_path: Path) -> None:
    image = tmp_path / "crafted.img"
    make_escaping_ext4(image)
    settings = ops.Settings(f"file://{tmp_path / 'store'}", tmp_path / "home")
    manifest = backup_disks(settings, "crafted", [image])
    jail = tmp_path / "a" / "b" / "c"
    out = jail / "out"
    jail.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    result = restore_files(settings.open(), manifest, ["/"], out)
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out or out in p.parents for p in created), created
    assert not Path("/tmp/r2b-escape-link").exists()
    names = set(os.listdir(out))
    assert "..\\x2f..\\x2f..\\x2f..\\x2fevil" in names  # one name, not a path
    assert "a\\x2f..\\x2f.." in names
    assert "\\xff\\xfe\\x2fx" in names
    assert "\\x2ftmp\\x2fr2b-escape-absolute" in names
    assert ".." not in names and "Q9" not in names  # an entry named ".." is not a file
    for link in [p for p in out.rglob("*") if p.is_symlink()]:
        resolved = Path(os.path.realpath(link))
        assert resolved == out or out in resolved.parents, (link, os.readlink(link))
    assert os.readlink(out / "abs") == "etc/passwd"
    assert os.readlink(out / "sub/far-up") == "../tmp/r2b-escape-link"
    assert os.readlink(out / "sub/dir-up") == ".."
    assert (out / "sub/fine.txt").read_bytes() == b"fine\n"
    assert result.skipped == []
    assert set(ESCAPES) & names == set()


def test_unsafe_catalog_paths_are_skipped(world: World, tmp_path: Path) -> None:
    """A catalog tampered with in the store cannot place files outside the folder either."""
    store = world.settings.open()
    manifest = world.backups["ext"]
    key = (manifest.catalog or {})["key"]
    original = store.get(key)
    table = read_catalog(original, key)
    paths = table.column("path").to_pylist()
    bad = {"/docs/tiny.txt": "/docs/../../../tiny.txt", "/docs/empty.txt": "/docs//empty.txt"}
    table = table.set_column(
        table.schema.get_field_index("path"),
        "path",
        pa.array([bad.get(p, p) for p in paths], pa.string()),
    ).sort_by("path")
    store.put(key, catalog_bytes(table, manifest.id, catalog_partitions(table)))
    try:
        result = restore_files(store, manifest, ["/"], tmp_path / "x" / "out")
    finally:
        store.put(key, original)
    assert sorted(s["path"] for s in result.skipped) == sorted(bad.values())
    assert {p.name for p in (tmp_path / "x").iterdir()} == {"out"}
    assert not (tmp_path / "tiny.txt").exists()


def test_the_target_folder_itself_may_be_a_symlink(world: World, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    world.restore("ext", tmp_path / "alias", "/docs/tiny.txt")
    assert (real / "docs/tiny.txt").read_bytes() == b"hi\n"


def test_a_damaged_or_lost_chunk_is_named_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from r2b.errors import ChunkCorrupt
    from r2b.image.chunks import ChunkIndex
    from r2b.image.format import CHUNK_INDEX_PREFIX, chunk_pack_key
    from r2b.image.restore import image_digests

    tree = {n: Expected("file", os.urandom(200_000)) for n in ("a.bin", "b.bin")}
    image = make_ext4(tmp_path / "d.img", 16, tree)
    settings = ops.Settings(f"file://{tmp_path / 'store'}", tmp_path / "home")
    manifest = backup_disks(settings, "m", [image])
    store = settings.open()
    key = (manifest.catalog or {})["key"]
    extent = row(read_catalog(store.get(key), key), "/a.bin")["extents"][0]
    block = (extent["disk_offset"] + 100_000) // (32 * 1024)
    digests, _ = image_digests(store, manifest, "disk0")  # type: ignore[arg-type]
    chunks = ChunkIndex.load(store)
    where = chunks.locate(digests[block : block + 1])
    pack = tmp_path / "store" / chunk_pack_key(chunks.pack_ids[where.pack[0]])
    data = bytearray(pack.read_bytes())
    data[int(where.offset[0]) + int(where.length[0]) // 2] ^= 0x55
    pack.write_bytes(bytes(data))

    out = tmp_path / "out"
    with pytest.raises(ChunkCorrupt) as caught:
        restore_files(store, manifest, ["/a.bin"], out)
    assert caught.value.digests == [digests[block].tobytes().hex()]
    assert os.listdir(out) == []  # no partial file left
    restore_files(store, manifest, ["/b.bin"], out)
    assert (out / "b.bin").read_bytes() == tree["b.bin"].data

    for index in list(store.list(CHUNK_INDEX_PREFIX)):
        store.delete(index)
    with pytest.raises(ChunkCorrupt, match="missing from the chunk index"):
        restore_files(store, manifest, ["/b.bin"], tmp_path / "out2")
