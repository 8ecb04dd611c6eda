"""Keeping backup images healthy: verification, crash safety of a build, prune and locks.

Every test runs on a real ext4 disk image in a ``LocalStore`` (so the test can damage stored
objects on purpose), through ``r2b.ops`` as the CLI and the flows do:

- a flipped byte in a chunk pack and a deleted pack are named by ``verify`` (with the backups
  they break) and make ``restore_disk`` fail with ``ChunkCorrupt``, leaving no file behind;
- a backup proxy killed with SIGKILL while writing chunk packs, or just before the manifest,
  leaves no visible backup; the retried build finishes without storing a chunk twice, and
  prune removes what the dead build left;
- prune applies retention to checkpoint times the test controls and frees what only the
  removed backups used; the kept backup still restores byte-exact;
- prune and backups exclude each other through store locks; a stale lock does not block.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from r2b import ops
from r2b.clock import Clock, iso, utc_now
from r2b.errors import ChunkCorrupt, StoreLocked
from r2b.ids import BackupId, DiskId
from r2b.image.format import (
    CHUNK_INDEX_PREFIX,
    CHUNK_PACK_PREFIX,
    Manifest,
    chunk_index_key,
    chunk_pack_key,
    image_index_key,
    pack_of_index_key,
    read_table,
)
from r2b.image.retention import RetentionPolicy
from r2b.journal.format import DEFAULT_BLOCK_SIZE, BackupType
from r2b.journal.snapshot import digest_column
from r2b.locks import store_lock
from r2b.store import LocalStore
from tests.disks import MIB, debugfs_write, make_ext4_image, sample_files, sha256_file

pytestmark = pytest.mark.slow

BLOCK = DEFAULT_BLOCK_SIZE  # the journal's tracking block = one chunk
NAME = "db"
DISK = DiskId("disk0")
T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)


# --- helpers -------------------------------------------------------------------------------


@dataclass
class Rig:
    settings: ops.Settings
    image: Path
    folder: Path

    @property
    def store(self) -> LocalStore:
        store = self.settings.open()
        assert isinstance(store, LocalStore)
        return store

    def backup(self, kind: BackupType, clock: Clock = utc_now) -> Manifest:
        """Checkpoint (at ``clock``'s time) and build its backup."""
        cycle = ops.checkpoint(self.settings, NAME, kind, clock=clock)
        assert cycle.checkpoint is not None
        [result] = ops.backup(self.settings, NAME, cycle.checkpoint)
        assert result.built
        return result.manifest

    def objects(self) -> dict[str, int]:
        """Every object of the store with its size."""
        return {key: self.store.size(key) for key in self.store.list("")}


def make_rig(folder: Path, files: dict[str, bytes], size_mib: int = 32) -> Rig:
    image = make_ext4_image(folder / "db.img", size_mib, files)
    settings = ops.Settings(f"file://{folder / 'store'}", folder / "home")
    ops.add_machine(settings, NAME, [str(image)])
    return Rig(settings, image, folder)


def chunk_indexes(store: LocalStore) -> dict[str, dict[str, list[Any]]]:
    """Every pack index: pack id -> its table's columns as Python lists."""
    found = {}
    for key in store.list(CHUNK_INDEX_PREFIX):
        table = read_table(store.get(key), key, "r2b.chunk.index")
        columns = {name: table.column(name).to_pylist() for name in table.schema.names}
        columns["hex"] = [bytes(d).hex() for d in columns["digest"]]
        found[pack_of_index_key(key)] = columns
    return found


def pack_ids(store: LocalStore) -> set[str]:
    return {
        k.removeprefix(CHUNK_PACK_PREFIX).removesuffix(".pack")
        for k in store.list(CHUNK_PACK_PREFIX)
    }


def image_hexes(store: LocalStore, manifest: Manifest) -> set[str]:
    """The chunk digests (hex) an image references (zero blocks reference none)."""
    key = image_index_key(BackupId(manifest.id), DISK)
    table = read_table(store.get(key), key, "r2b.image.index")
    zero = np.asarray(table.column("zero").to_numpy(zero_copy_only=False), dtype=bool)
    return {d.tobytes().hex() for d in digest_column(table)[~zero]}


def write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def python() -> str:
    venv = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# --- verification and restore of damaged images -------------------------------------------


def test_verify_names_corrupt_and_missing_chunks_and_restore_refuses(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, sample_files(seed=3, count=25, max_size=200 * 1024))
    full = rig.backup("full")
    packs_of_full = set(chunk_indexes(rig.store))
    debugfs_write(rig.image, "/added/new.bin", random.Random(5).randbytes(300 * 1024))
    incr = rig.backup("incremental")
    indexes = chunk_indexes(rig.store)
    [incr_pack] = set(indexes) - packs_of_full
    uses = {full.id: image_hexes(rig.store, full), incr.id: image_hexes(rig.store, incr)}

    # Flip one byte in the middle of a raw (uncompressed) chunk of the full image's pack.
    pack_id = sorted(packs_of_full)[0]
    cols = indexes[pack_id]
    row = next(i for i, c in enumerate(cols["codec"]) if c == 1)
    bad = cols["hex"][row]
    at = cols["offset"][row] + cols["length"][row] // 2
    pack_path = rig.store.root / chunk_pack_key(pack_id)
    data = bytearray(pack_path.read_bytes())
    data[at] ^= 0xFF
    pack_path.write_bytes(bytes(data))
    # And lose the incremental's pack (its index stays).
    (rig.store.root / chunk_pack_key(incr_pack)).unlink()
    lost = sorted(indexes[incr_pack]["hex"])
    assert lost

    def users(digest: str) -> list[str]:
        return [b for b in (full.id, incr.id) if digest in uses[b]]

    report = ops.verify(rig.settings)
    assert report.checked == len(uses[full.id] | uses[incr.id])
    assert report.corrupt == [{"chunk": bad, "backups": users(bad)}]
    assert full.id in users(bad)
    assert report.missing == [{"chunk": d, "backups": users(d)} for d in lost]
    assert all(m["backups"] == [incr.id] for m in report.missing)
    assert not report.ok

    only_full = ops.verify(rig.settings, [full.id])
    assert only_full.corrupt == [{"chunk": bad, "backups": [full.id]}]
    assert only_full.missing == []

    # Restores fail naming the chunk, and leave nothing behind (no .partial either).
    out_dir = tmp_path / "restores"
    out_dir.mkdir()
    with pytest.raises(ChunkCorrupt) as caught:
        ops.restore_disk(rig.settings, full.id, out_dir / "full.img")
    assert caught.value.digests == [bad]
    assert caught.value.backups == [full.id]
    message = str(caught.value)
    assert bad[:16] in message and full.id in message and "\n" not in message
    with pytest.raises(ChunkCorrupt) as caught:
        ops.restore_disk(rig.settings, incr.id, out_dir / "incr.img")
    assert set(lost) <= set(caught.value.digests)
    assert caught.value.digests[0][:16] in str(caught.value)
    assert list(out_dir.iterdir()) == []


# --- a backup proxy killed mid-build ------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import threading

    from r2b.image.build import build_backup
    from r2b.machines import load_machine
    from r2b.store import FaultyStore, LocalStore

    root, name, checkpoint, point, nth = sys.argv[1:6]
    nth = int(nth)
    lock = threading.Lock()
    seen = {"chunks": 0}


    def die(what):
        # Tell the test where we died; then no cleanup at all, as on a power cut.
        os.write(1, f"KILLED {point} {what}\\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


    def fail_on(operation, key):
        if point == "chunks" and operation == "put" and key.startswith("chunks/"):
            with lock:
                seen["chunks"] += 1
                hit = seen["chunks"] >= nth and key.startswith("chunks/index/")
            if hit:
                die(key)
        elif point == "manifest" and operation == "put_if_absent" and key.startswith("backups/"):
            die(key)
        return None


    store = FaultyStore(LocalStore(root), fail_on)
    result = build_backup(store, load_machine(store, name), checkpoint)
    print(f"FINISHED {result.manifest.id} built={result.built}")
    sys.exit(3)
    """
)


@pytest.mark.parametrize("point", ["chunks", "manifest"])
def test_proxy_killed_mid_build_then_retried(tmp_path: Path, point: str) -> None:
    rng = random.Random(8)
    files = {"big/a.bin": rng.randbytes(9 * MIB), "big/b.bin": rng.randbytes(9 * MIB)}
    files.update(sample_files(seed=9, count=10, max_size=100 * 1024))
    rig = make_rig(tmp_path, files)
    source_sha = sha256_file(rig.image)
    cycle = ops.checkpoint(rig.settings, NAME, "full")
    assert cycle.checkpoint is not None
    driver = tmp_path / "build_driver.py"
    driver.write_text(DRIVER)

    # Kill at the 3rd put under chunks/ or later, when it is a pack's index: that pack is
    # written and has no index. Or just before the manifest: everything else is written.
    args = [str(rig.store.root), NAME, cycle.checkpoint, point, "3"]
    proc = subprocess.run(
        [python(), str(driver), *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, f"not killed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.startswith(f"KILLED {point} "), proc.stdout
    before = chunk_indexes(rig.store)
    orphans = pack_ids(rig.store) - set(before)
    if point == "chunks":
        assert "chunks/index/" in proc.stdout
        assert orphans, "the kill should leave a pack without an index"
    else:
        assert "/manifest.json" in proc.stdout
        assert orphans == set() and before
    assert ops.backups(rig.settings, NAME) == []  # nothing visible
    dead_locks = list(rig.store.list("locks/"))
    assert len(dead_locks) == 1  # the dead build's shared lock stays behind

    # The retried build finishes, reusing every chunk the dead one indexed.
    [result] = ops.backup(rig.settings, NAME, cycle.checkpoint)
    assert result.built
    image = result.manifest.disks[DISK]
    indexed_before = {h for cols in before.values() for h in cols["hex"]}
    needed = image_hexes(rig.store, result.manifest)
    assert image.chunks_new == len(needed - indexed_before)
    if point == "manifest":
        assert (image.chunks_new, image.bytes_stored) == (0, 0)
    out = tmp_path / "restored.img"
    assert ops.restore_disk(rig.settings, result.manifest.id, out).sha256 == source_sha
    assert sha256_file(out) == source_sha

    # No chunk stored twice, exactly one backup for the checkpoint.
    after = chunk_indexes(rig.store)
    counts = Counter(h for cols in after.values() for h in cols["hex"])
    assert [h for h, n in counts.items() if n > 1] == []
    assert [m.id for m in ops.backups(rig.settings)] == [result.manifest.id]

    # Prune (once the dead build's lock is stale) removes the orphan packs and that lock.
    later = datetime.now(UTC) + timedelta(hours=7)
    pruned = ops.prune(rig.settings, RetentionPolicy(keep_last=1), clock=lambda: later)
    assert pruned.removed_backups == []
    assert pruned.packs_deleted == len(orphans)
    assert pack_ids(rig.store) == set(chunk_indexes(rig.store))  # every pack indexed
    assert pack_ids(rig.store).isdisjoint(orphans)
    assert list(rig.store.list("locks/")) == []
    assert ops.verify(rig.settings).ok
    out.unlink()
    assert ops.restore_disk(rig.settings, result.manifest.id, out).sha256 == source_sha


# --- prune --------------------------------------------------------------------------------

REGION = 31 * MIB  # the last MiB of a 32 MiB ext4 image: free space, 16 tracking blocks


def test_prune_keep_last_frees_what_only_removed_backups_used(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, sample_files(seed=4, count=20, max_size=150 * 1024))
    rng = random.Random(4)
    write_at(rig.image, REGION, rng.randbytes(MIB))
    b1 = rig.backup("full", clock=lambda: T0)
    packs_b1 = pack_ids(rig.store)
    write_at(rig.image, REGION, rng.randbytes(MIB))
    b2 = rig.backup("incremental", clock=lambda: T0 + timedelta(days=1))
    packs_b2 = pack_ids(rig.store) - packs_b1
    write_at(rig.image, REGION, rng.randbytes(MIB))
    b3 = rig.backup("incremental", clock=lambda: T0 + timedelta(days=2))
    sha3 = sha256_file(rig.image)
    assert [b.checkpoint_time for b in (b1, b2, b3)] == [
        iso(T0 + timedelta(days=d)) for d in range(3)
    ]
    assert len(packs_b2) == 1  # only the region's second version: b3 rewrote all of it
    objects_before = rig.objects()

    result = ops.prune(rig.settings, RetentionPolicy(keep_last=1))
    assert result.removed_backups == [b1.id, b2.id]
    assert result.kept_backups == [b3.id]
    assert [m.id for m in ops.backups(rig.settings)] == [b3.id]
    # b2's pack held only chunks no kept backup uses: gone. b1's pack is still in use, but the
    # region's first version in it is waste: reclaimable, or the pack was rewritten without it.
    region_blocks = MIB // BLOCK
    assert result.packs_deleted == 1
    assert packs_b2.isdisjoint(pack_ids(rig.store))
    if result.packs_repacked:
        assert packs_b1.isdisjoint(pack_ids(rig.store))
        assert result.bytes_freed >= 2 * region_blocks * BLOCK  # b2's pack and b1's waste
    else:
        assert packs_b1 <= pack_ids(rig.store)
        assert result.bytes_reclaimable >= region_blocks * BLOCK
        assert result.bytes_freed >= region_blocks * BLOCK  # the pack of random chunks
    # bytes_freed is how much the chunk objects shrank (prune may also write journal bases).
    objects_after = rig.objects()
    deleted = {k: n for k, n in objects_before.items() if k not in objects_after}
    created = {
        k: n
        for k, n in objects_after.items()
        if k not in objects_before and k.startswith("chunks/")
    }
    assert chunk_index_key(next(iter(packs_b2))) in deleted
    uncounted = sum(deleted.values()) - sum(created.values()) - result.bytes_freed
    assert uncounted == 0, f"{uncounted} bytes deleted but not counted in bytes_freed: {deleted}"
    assert list(rig.store.list(f"backups/{b1.id}/")) == []
    assert list(rig.store.list(f"backups/{b2.id}/")) == []

    out = tmp_path / "kept.img"
    assert ops.restore_disk(rig.settings, b3.id, out).sha256 == sha3
    assert sha256_file(out) == sha3
    report = ops.verify(rig.settings)
    assert report.ok and report.checked > 0

    again = ops.prune(rig.settings, RetentionPolicy(keep_last=1))  # nothing left to do
    assert (again.removed_backups, again.packs_deleted, again.bytes_freed) == ([], 0, 0)


def test_prune_keep_last_keeps_the_newest_of_checkpoints_in_the_same_second(
    tmp_path: Path,
) -> None:
    """Checkpoint times have one-second resolution: two checkpoints within a second tie on
    time, and keep-last must still keep the newer one (the later checkpoint)."""
    rig = make_rig(tmp_path, sample_files(seed=5, count=10, max_size=50 * 1024), size_mib=16)
    b1 = rig.backup("full", clock=lambda: T0)
    debugfs_write(rig.image, "/later.txt", b"written after the first checkpoint\n")
    b2 = rig.backup("incremental", clock=lambda: T0)
    sha2 = sha256_file(rig.image)
    assert b1.checkpoint_time == b2.checkpoint_time and b1.seq < b2.seq

    result = ops.prune(rig.settings, RetentionPolicy(keep_last=1))
    assert result.kept_backups == [b2.id]
    assert result.removed_backups == [b1.id]
    out = tmp_path / "kept.img"
    assert ops.restore_disk(rig.settings, f"{NAME}@latest", out).sha256 == sha2


# --- locks --------------------------------------------------------------------------------


def test_prune_and_backups_exclude_each_other_and_stale_locks_do_not_block(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, sample_files(seed=6, count=10, max_size=50 * 1024), size_mib=16)
    b1 = rig.backup("full", clock=lambda: T0)
    debugfs_write(rig.image, "/later.txt", b"second\n")
    b2 = rig.backup("incremental", clock=lambda: T0 + timedelta(hours=1))
    store = rig.store
    keys = sorted(store.list(""))

    # A backup is building (shared lock): prune refuses, in one line, and touches nothing.
    with store_lock(store, "backup", "test", exclusive=False):
        with pytest.raises(StoreLocked) as caught:
            ops.prune(rig.settings, RetentionPolicy(keep_last=1))
        message = str(caught.value)
        assert "\n" not in message
        assert "test" in message and "prune" in message
        assert f"pid {os.getpid()}" in caught.value.holder
    assert sorted(store.list("")) == keys  # our lock is gone again, nothing else changed

    # A prune is running (exclusive lock): a backup refuses.
    debugfs_write(rig.image, "/third.txt", b"third\n")
    cycle = ops.checkpoint(rig.settings, NAME, "incremental")
    assert cycle.checkpoint is not None
    with store_lock(store, "prune", "test prune", exclusive=True):
        with pytest.raises(StoreLocked) as caught:
            ops.backup(rig.settings, NAME, cycle.checkpoint)
        assert "test prune" in str(caught.value)
    assert [m.id for m in ops.backups(rig.settings)] == [b1.id, b2.id]

    # A lock left 7 hours ago by a process that died is stale: prune runs and removes it.
    stale = "locks/backup-0123456789ab.json"
    doc = {
        "kind": "backup",
        "exclusive": False,
        "holder": "backup db.cp-000099 (pid 999999 on gone-host)",
        "time": iso(datetime.now(UTC) - timedelta(hours=7)),
    }
    store.put(stale, json.dumps(doc).encode())
    result = ops.prune(rig.settings, RetentionPolicy(keep_last=1))
    assert result.removed_backups == [b1.id]
    assert result.kept_backups == [b2.id]
    assert list(store.list("locks/")) == []
