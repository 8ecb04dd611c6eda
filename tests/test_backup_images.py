"""Backup images built from the replica, on a real ext4 disk, on the local store and on S3.

One scenario per store (module-scoped, built once): a machine ``web`` with a 32 MiB ext4 disk
is registered; a full checkpoint is backed up (full image at cp1), files are changed with
debugfs, an incremental checkpoint is backed up (cp2), files change again (cp3). The source's
sha256 is recorded at each checkpoint and every image is restored on its own. The tests then
look at what each build read, what it stored, what it wrote and where, and what it never did
(cross the WAN: nothing under ``journal/`` is written while images are built).
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from r2b import ops
from r2b.errors import CheckpointTimeout
from r2b.ids import CheckpointId, DiskId, MachineName
from r2b.image.build import BuildResult, build_backup
from r2b.image.format import Manifest, changed_key, image_index_key, manifest_key
from r2b.journal.format import DEFAULT_BLOCK_SIZE, read_index
from r2b.journal.snapshot import Journal
from r2b.machines import load_machine
from r2b.store import CountingStore, ObjectStore
from tests.disks import MIB, debugfs_write, make_ext4_image, sample_files, sha256_file
from tests.s3server import create_bucket

pytestmark = pytest.mark.slow

BLOCK = DEFAULT_BLOCK_SIZE  # the journal's tracking block = one chunk
DISK_MIB = 32
NAME = "web"
DISK = DiskId("disk0")


# --- helpers -------------------------------------------------------------------------------


class KeyCountingStore(CountingStore):
    """A ``CountingStore`` that also remembers the bytes put under each key."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self._keys_lock = threading.Lock()
        self.put_keys: dict[str, int] = {}

    def _note(self, key: str, data: bytes) -> None:
        with self._keys_lock:
            self.put_keys[key] = self.put_keys.get(key, 0) + len(data)

    def put(self, key: str, data: bytes) -> None:
        super().put(key, data)
        self._note(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        created = super().put_if_absent(key, data)
        self._note(key, data)
        return created


def blocks_of_image(path: Path) -> np.ndarray:
    """The disk image as an (n_blocks, BLOCK) uint8 array."""
    return np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(-1, BLOCK)


def differing_blocks(a: Path, b: Path) -> set[int]:
    return set(np.flatnonzero((blocks_of_image(a) != blocks_of_image(b)).any(axis=1)).tolist())


def nonzero_blocks(path: Path) -> int:
    return int(blocks_of_image(path).any(axis=1).sum())


def journal_totals(store: ObjectStore) -> tuple[int, int]:
    """(number of commits, sum of their bytes_uploaded): what crossed the WAN, all told."""
    commits = Journal(store, MachineName(NAME)).commits()
    return len(commits), sum(c.bytes_uploaded for c in commits)


def written_since(store: ObjectStore, after_seq: int, upto_seq: int) -> set[int]:
    """Blocks of disk0 some journal cycle in (after_seq, upto_seq] wrote."""
    found: set[int] = set()
    for commit in Journal(store, MachineName(NAME)).commits():
        cycle = commit.disks.get(DISK)
        if not (after_seq < commit.seq <= upto_seq) or cycle is None or not cycle.index:
            continue
        index = read_index(store.get(cycle.index), cycle.index)
        found |= set(index.column("block").to_pylist())
    return found


def read_arrow(store: ObjectStore, key: str) -> pa.Table:
    return ipc.open_file(pa.py_buffer(store.get(key))).read_all()


def all_keys(store: ObjectStore) -> list[str]:
    return sorted(store.list(""))


# --- the scenario --------------------------------------------------------------------------


@dataclass
class Scenario:
    kind: str
    settings: ops.Settings
    image: Path
    base_copy: Path  # the disk as it was at cp1, before any change
    folder: Path
    checkpoints: list[str] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    builds: list[BuildResult] = field(default_factory=list)
    restored: list[Path] = field(default_factory=list)
    restore_shas: list[str] = field(default_factory=list)
    journal_before_build: list[tuple[int, int]] = field(default_factory=list)
    journal_after_build: list[tuple[int, int]] = field(default_factory=list)
    counted: KeyCountingStore | None = None

    @property
    def store(self) -> ObjectStore:
        return self.settings.open()

    @property
    def manifests(self) -> list[Manifest]:
        return [b.manifest for b in self.builds]


def _checkpoint_and_build(sc: Scenario, kind: str, counted: bool = False) -> None:
    cycle = ops.checkpoint(sc.settings, NAME, kind)  # type: ignore[arg-type]
    assert cycle.checkpoint is not None
    sc.checkpoints.append(cycle.checkpoint)
    sc.shas.append(sha256_file(sc.image))
    sc.journal_before_build.append(journal_totals(sc.store))
    if counted:
        # The proxy's side, seen through a counter that knows the keys it writes.
        sc.counted = KeyCountingStore(sc.store)
        spec = load_machine(sc.counted, NAME)
        result = build_backup(sc.counted, spec, CheckpointId(cycle.checkpoint))
    else:
        [result] = ops.backup(sc.settings, NAME, cycle.checkpoint)
    assert result.built
    sc.builds.append(result)
    sc.journal_after_build.append(journal_totals(sc.store))


@pytest.fixture(scope="module", params=["local", "s3"])
def scenario(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    folder = tmp_path_factory.mktemp(f"images-{request.param}")
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "s3":
            server = request.getfixturevalue("s3_server")
            mp.setenv("R2B_S3_ENDPOINT", server.endpoint_url)
            bucket = create_bucket(server.endpoint_url)
            url = f"s3://{bucket}/prefix"
        else:
            url = f"file://{folder / 'store'}"
        settings = ops.Settings(url, folder / "home")
        image = make_ext4_image(
            folder / "web.img", DISK_MIB, sample_files(seed=7, count=25, max_size=256 * 1024)
        )
        base_copy = folder / "base.img"
        shutil.copyfile(image, base_copy)
        sc = Scenario(request.param, settings, image, base_copy, folder)
        ops.add_machine(settings, NAME, [str(image)])

        _checkpoint_and_build(sc, "full")
        rng = random.Random(11)
        debugfs_write(image, "/text/notes_000.txt", b"changed at cp2\n" * 7000)
        debugfs_write(image, "/new/added.bin", rng.randbytes(200 * 1024))
        _checkpoint_and_build(sc, "incremental")
        debugfs_write(image, "/random/noise_001.bin", rng.randbytes(150 * 1024))
        _checkpoint_and_build(sc, "incremental", counted=True)

        for cp, build in zip(sc.checkpoints, sc.builds, strict=True):
            out = folder / f"restored-{cp}.img"
            result = ops.restore_disk(settings, build.manifest.id, out)
            sc.restored.append(out)
            sc.restore_shas.append(result.sha256)
        yield sc


# --- the tests -----------------------------------------------------------------------------


def test_every_image_restores_on_its_own_to_the_disk_at_its_checkpoint(scenario: Scenario) -> None:
    assert len(set(scenario.shas)) == 3  # the disk really changed between checkpoints
    for out, sha, reported in zip(
        scenario.restored, scenario.shas, scenario.restore_shas, strict=True
    ):
        assert out.stat().st_size == DISK_MIB * MIB
        assert sha256_file(out) == sha
        assert reported == sha
        assert not out.with_name(out.name + ".partial").exists()


def test_backups_lists_full_then_incrementals_with_parent_links(scenario: Scenario) -> None:
    listed = ops.backups(scenario.settings, NAME)
    assert [m.id for m in listed] == [f"{NAME}.{cp}" for cp in scenario.checkpoints]
    assert [m.type for m in listed] == ["full", "incremental", "incremental"]
    assert [m.parent for m in listed] == [None, listed[0].id, listed[1].id]
    assert [m.checkpoint for m in listed] == scenario.checkpoints
    assert all(m.machine == NAME and list(m.disks) == [DISK] for m in listed)
    # The manifest in the store is the one the build returned.
    for build in scenario.builds:
        key = manifest_key(build.manifest.id)
        assert Manifest.from_json(scenario.store.get(key), key) == build.manifest


def test_full_image_reads_every_stored_block(scenario: Scenario) -> None:
    full = scenario.manifests[0].disks[DISK]
    stored = nonzero_blocks(scenario.restored[0])
    assert full.changed is None
    assert full.blocks_read == stored
    assert full.bytes_read == stored * BLOCK
    assert full.chunks_new > 0 and full.bytes_stored > 0
    assert full.bytes_deduplicated == full.bytes_read - full.chunks_new * BLOCK


def test_incremental_reads_only_the_changed_blocks(scenario: Scenario) -> None:
    store = scenario.store
    size = DISK_MIB * MIB
    for i in (1, 2):
        manifest, parent = scenario.manifests[i], scenario.manifests[i - 1]
        image = manifest.disks[DISK]
        assert manifest.parent == parent.id
        # Bytes read are the changed blocks, not the disk.
        assert image.bytes_read == image.blocks_read * BLOCK
        assert 0 < image.bytes_read < size // 20

        # The changed-block list: exactly the blocks the journal wrote since the parent's seq.
        assert image.changed == changed_key(manifest.id, DISK)
        table = read_arrow(store, image.changed)
        assert table.schema.names == ["block", "digest"]
        blocks = table.column("block").to_pylist()
        assert blocks == sorted(set(blocks))
        assert set(blocks) == written_since(store, parent.seq, manifest.seq)
        # Blocks whose bytes differ between the two restored images are all in the list.
        diff = differing_blocks(scenario.restored[i - 1], scenario.restored[i])
        assert diff and diff <= set(blocks)
        # The list's digests are the image index's digests at those blocks.
        index = read_arrow(store, image_index_key(manifest.id, DISK))
        assert len(index) == size // BLOCK
        digests = index.column("digest").to_pylist()
        assert table.column("digest").to_pylist() == [digests[b] for b in blocks]
        # It read the non-zero changed blocks, nothing else.
        restored = blocks_of_image(scenario.restored[i])
        assert image.blocks_read == sum(1 for b in blocks if restored[b].any())


def test_building_images_sends_nothing_over_the_wan(scenario: Scenario) -> None:
    # No build added a journal commit or a byte to the replica.
    assert scenario.journal_before_build == scenario.journal_after_build
    # The proxy wrote only image objects: chunks, image indexes, manifests, locks.
    counted = scenario.counted
    assert counted is not None
    keys = counted.put_keys
    assert keys, "the counted build wrote nothing"
    assert all(k.startswith(("chunks/", "backups/", "locks/")) for k in keys), sorted(keys)
    assert not any(k.startswith("journal/") for k in keys)
    assert sum(keys.values()) == counted.bytes_put
    assert any(k.startswith("chunks/packs/") for k in keys)
    assert manifest_key(scenario.manifests[2].id) in keys
    assert counted.bytes_got > 0  # it read the replica from the store
    # And the replicator, asked again with nothing changed on the disk, sends nothing.
    again = ops.replicate(scenario.settings, NAME)
    assert (again.blocks_changed, again.bytes_uploaded) == (0, 0)


def test_building_the_same_checkpoint_twice_does_nothing(scenario: Scenario) -> None:
    before = all_keys(scenario.store)
    [again] = ops.backup(scenario.settings, NAME, scenario.checkpoints[0])
    assert again.built is False
    assert again.manifest == scenario.manifests[0]
    assert ops.backup(scenario.settings, NAME) == []  # every checkpoint is backed up already
    assert all_keys(scenario.store) == before


def test_backup_waits_for_a_checkpoint_then_times_out(scenario: Scenario) -> None:
    before = all_keys(scenario.store)
    started = time.monotonic()
    with pytest.raises(CheckpointTimeout) as caught:
        ops.backup(scenario.settings, NAME, "cp-000099", wait_s=1)
    elapsed = time.monotonic() - started
    assert 1 <= elapsed < 10
    err = caught.value
    assert (err.machine, err.checkpoint, err.seconds) == (NAME, "cp-000099", 1)
    message = str(err)
    assert "\n" not in message
    assert "cp-000099" in message and NAME in message and "1 s" in message
    assert all_keys(scenario.store) == before


def test_dedup_across_machines_and_a_requested_full(scenario: Scenario) -> None:
    """A second machine on a copy of the same base disk stores only what differs; a full
    requested later reads every stored block again but stores only the changed ones."""
    copy = scenario.folder / "web2.img"
    shutil.copyfile(scenario.base_copy, copy)
    debugfs_write(copy, "/web2/own.bin", random.Random(23).randbytes(100 * 1024))
    differing = differing_blocks(scenario.base_copy, copy)
    assert differing

    ops.add_machine(scenario.settings, "web2", [str(copy)])
    cycle = ops.checkpoint(scenario.settings, "web2", "full")
    [first] = ops.backup(scenario.settings, "web2", cycle.checkpoint)
    own = first.manifest.disks[DISK]
    web1 = scenario.manifests[0].disks[DISK]
    assert first.manifest.type == "full"
    assert own.blocks_read == nonzero_blocks(copy)
    assert 1 <= own.chunks_new <= len(differing)
    assert own.bytes_stored < web1.bytes_stored // 5
    assert own.bytes_deduplicated >= own.bytes_read - len(differing) * BLOCK

    # Change one file, then ask for a *full* although a parent exists.
    before = scenario.folder / "web2-before.img"
    shutil.copyfile(copy, before)
    debugfs_write(copy, "/web2/own.bin", random.Random(24).randbytes(100 * 1024))
    rewritten = differing_blocks(before, copy)
    sha = sha256_file(copy)
    cycle = ops.checkpoint(scenario.settings, "web2", "full")
    [second] = ops.backup(scenario.settings, "web2", cycle.checkpoint)
    image = second.manifest.disks[DISK]
    assert second.manifest.type == "full"
    assert image.changed is None
    assert image.blocks_read == nonzero_blocks(copy)  # every stored block, not the changes
    assert image.bytes_read == image.blocks_read * BLOCK
    assert 1 <= image.chunks_new <= len(rewritten)  # only what the rewrite changed
    out = scenario.folder / f"web2-{cycle.checkpoint}.img"
    assert ops.restore_disk(scenario.settings, second.manifest.id, out).sha256 == sha
    assert sha256_file(out) == sha
