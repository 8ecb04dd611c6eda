"""The file catalog: Parquet beside each backup, and the backup server's DuckDB over them.

A machine ``web`` (ext4) is backed up three times while ``/docs/readme.txt`` changes, and a
machine ``files`` (FAT32) once. Then: what the Parquet holds and says about itself; ``ls``;
``find`` across backups and machines (the versions of one file over time); rebuilding the
DuckDB database from the store alone; pruned backups leaving it; another store; and a
database held by another process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from catalog import db as catalog_db
from catalog.db import load_into_catalog, stored_catalogs
from catalog.parquet import catalog_partitions, read_catalog
from catalog.schema import CATALOG_SCHEMA
from r2b import ops
from r2b.errors import CatalogBusy, CorruptData, NoCatalog, NotFound, PathNotInBackup
from r2b.image.format import Manifest, catalog_key
from r2b.image.retention import RetentionPolicy
from r2b.journal.replicator import CheckpointRequest, Replicator
from r2b.machines import load_machine
from tests.disks import debugfs_write
from tests.fsimages import Expected, backup_disks, make_ext4, make_fat32, sample_tree

pytestmark = pytest.mark.slow

VERSIONS = [b"version one\n", b"version two, longer\n" * 3, b"3\n" * 500]


@dataclass
class Scene:
    settings: ops.Settings
    web: list[Manifest]
    files: Manifest


def next_backup(settings: ops.Settings, name: str) -> Manifest:
    """Replicate what changed, mark an incremental checkpoint, build its backup."""
    store = settings.open()
    spec = load_machine(store, name)
    Replicator(store, spec, settings.state_dir).cycle(checkpoint=CheckpointRequest("incremental"))
    [built] = ops.backup(settings, name)
    return built.manifest


def make_scene(root: Path) -> Scene:
    settings = ops.Settings(f"file://{root / 'store'}", root / "home")
    tree = sample_tree(4)
    tree["docs/readme.txt"] = Expected("file", VERSIONS[0])
    web = make_ext4(root / "web.img", 24, tree)
    manifests = [backup_disks(settings, "web", [web])]
    for version in VERSIONS[1:]:
        debugfs_write(web, "/docs/readme.txt", version)
        manifests.append(next_backup(settings, "web"))
    fat = make_fat32(
        root / "files.img",
        34,
        {"docs": Expected("dir"), "docs/readme.txt": Expected("file", b"fat\n")},
    )
    return Scene(settings, manifests, backup_disks(settings, "files", [fat]))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    return make_scene(tmp_path_factory.mktemp("catalog-scene"))


# --- the Parquet beside the backup -------------------------------------------------------------


def test_each_backup_has_its_catalog_as_parquet_in_the_store(scene: Scene) -> None:
    store = scene.settings.open()
    for manifest in [*scene.web, scene.files]:
        assert manifest.catalog is not None
        key = catalog_key(manifest.id)
        assert manifest.catalog["key"] == key
        table = read_catalog(store.get(key), key)
        assert table.schema.remove_metadata() == CATALOG_SCHEMA
        paths = table.column("path").to_pylist()
        assert paths == sorted(paths) and len(paths) == manifest.catalog["files"]
        assert set(table.column("backup").to_pylist()) == {manifest.id}
        assert catalog_partitions(table) == manifest.catalog["partitions"]
        meta = table.schema.metadata
        assert (meta[b"format"], meta[b"version"]) == (b"r2b.catalog", b"1")
    assert set(stored_catalogs(store)) == {m.id for m in [*scene.web, scene.files]}


def test_an_incremental_backup_has_a_complete_catalog(scene: Scene) -> None:
    full, incremental = scene.web[0], scene.web[-1]
    assert (full.type, incremental.type) == ("full", "incremental")
    assert full.catalog and incremental.catalog
    assert full.catalog["files"] == incremental.catalog["files"]


def test_something_else_is_not_a_catalog(scene: Scene) -> None:
    with pytest.raises(CorruptData):
        read_catalog(b"not parquet", "x")
    sink = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1]}), sink)
    with pytest.raises(CorruptData):
        read_catalog(sink.getvalue().to_pybytes(), "y")


# --- ls and find --------------------------------------------------------------------------------


def test_ls_lists_a_folder_or_names_one_entry(scene: Scene) -> None:
    latest = scene.web[-1].id
    top = ops.ls(scene.settings, "web@latest")
    assert [r["path"] for r in top] == ["/data", "/docs", "/lost+found", "/ünïcødé_directory_name"]
    docs = {r["path"]: r for r in ops.ls(scene.settings, latest, "/docs/")}
    readme = docs["/docs/readme.txt"]
    assert (readme["type"], readme["size"], readme["mode"]) == ("file", len(VERSIONS[2]), 0o644)
    assert readme["mtime"].endswith("Z")
    assert docs["/docs/link-to-readme"]["link"] == "readme.txt"
    assert ops.ls(scene.settings, latest, "docs/tiny.txt") == [
        {k: v for k, v in docs["/docs/tiny.txt"].items()}
    ]
    with pytest.raises(PathNotInBackup):
        ops.ls(scene.settings, latest, "/docs/nothing")
    with pytest.raises(NotFound):
        ops.ls(scene.settings, "web.cp-000999", "/")


def test_find_shows_the_versions_of_a_file_over_time(scene: Scene) -> None:
    found = ops.find(scene.settings, "readme.txt")
    web = [r for r in found if r["machine"] == "web"]
    assert [r["backup"] for r in web] == [m.id for m in scene.web]
    assert [r["size"] for r in web] == [len(v) for v in VERSIONS]
    assert [r["path"] for r in found] == ["/docs/readme.txt"] * 4
    assert {r["backup"] for r in found if r["machine"] == "files"} == {scene.files.id}
    assert all(set(r) >= {"backup", "path", "size", "mtime"} for r in found)
    assert ops.find(scene.settings, "readme.txt", machine="files")[0]["size"] == 4


def test_find_globs(scene: Scene) -> None:
    def paths(pattern: str, machine: str | None = "web") -> set[str]:
        return {r["path"] for r in ops.find(scene.settings, pattern, machine)}

    assert paths("*.sh") == {"/data/script.sh"}
    assert paths("r?ad*") == {"/docs/readme.txt"}
    assert paths("/docs/*.txt") == {"/docs/readme.txt", "/docs/tiny.txt", "/docs/empty.txt"}
    assert paths("/docs/deep/**") == {
        "/docs/deep",
        "/docs/deep/er",
        "/docs/deep/er/still.bin",
        "/docs/deep/er/up-two",
    }
    assert paths("/**/still.bin") == {"/docs/deep/er/still.bin"}
    assert paths("[st]*.*") == {
        "/data/script.sh",
        "/docs/tiny.txt",
        "/docs/deep/er/still.bin",
        "/data/sparse.img",
    }
    assert paths("*ñandú*") == {"/ünïcødé_directory_name/日本語_ñandú_file.txt"}
    assert paths("100%_sure") == set()
    assert len(ops.find(scene.settings, "*", None, limit=5)) == 5


# --- the database is a cache of the store ------------------------------------------------------


def test_the_database_is_rebuilt_from_the_store(scene: Scene) -> None:
    before = ops.find(scene.settings, "*")
    (scene.settings.home / catalog_db.DB_NAME).unlink()
    assert ops.find(scene.settings, "*") == before
    with catalog_db.open_catalog(scene.settings.home, writable=False) as db:
        assert db.loaded() == {m.id for m in [*scene.web, scene.files]}


def test_backups_load_their_catalog_and_pruned_ones_leave(tmp_path: Path) -> None:
    settings = ops.Settings(f"file://{tmp_path / 'store'}", tmp_path / "home")
    image = make_ext4(tmp_path / "d.img", 8, {"a.txt": Expected("file", b"a")})
    first = backup_disks(settings, "m", [image])
    with catalog_db.open_catalog(settings.home, writable=False) as db:
        assert db.loaded() == {first.id}  # ops.backup loaded it
    debugfs_write(image, "/a.txt", b"b")
    second = next_backup(settings, "m")
    assert len(ops.find(settings, "a.txt")) == 2
    ops.prune(settings, RetentionPolicy(keep_last=1))
    assert [r["backup"] for r in ops.find(settings, "a.txt")] == [second.id]
    other = ops.Settings(f"file://{tmp_path / 'other-store'}", settings.home)
    assert ops.find(other, "*") == []  # same home, another store: nothing of the first


def test_a_busy_database_is_waited_for_then_reported(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_db, "LOCK_WAIT_S", 0.5)
    holder = textwrap.dedent(
        f"""
        import duckdb, sys, time
        con = duckdb.connect({str(scene.settings.home / catalog_db.DB_NAME)!r})
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(CatalogBusy):
            ops.find(scene.settings, "*")
        assert load_into_catalog(scene.settings.home, scene.settings.open(), scene.files) is False
    finally:
        proc.communicate("", timeout=30)
    assert ops.find(scene.settings, "readme.txt", "files")


def test_a_backup_built_without_a_catalog(scene: Scene, tmp_path: Path) -> None:
    store = scene.settings.open()
    manifest = scene.files
    key = catalog_key(manifest.id)
    data = store.get(key)
    store.delete(key)
    try:
        with pytest.raises(NoCatalog):
            ops.ls(scene.settings, manifest.id)
        assert {r["machine"] for r in ops.find(scene.settings, "*")} == {"web"}
    finally:
        store.put(key, data)
    table = read_catalog(data, key)
    assert pc.all(pc.equal(table.column("fs"), "fat32")).as_py()
    assert json.loads(json.dumps(manifest.catalog))["partitions"][0]["fs"] == "fat32"
