"""Replication scenarios on real disks: ext4 images, a GPT disk, a loop-mounted filesystem.

Each test drives the operations (``r2b.ops``) as the CLI and the flows do, against a real
``LocalStore`` (and once against the moto S3 server), changes the disk with the real tools
(debugfs, mke2fs, sgdisk, a kernel mount) and checks the replica by failing over: the image
materialised at a checkpoint must be byte-identical to the source disk at that moment.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from r2b import ops
from r2b.errors import JournalCorrupt, NotFound, TransientStoreError
from r2b.ids import DiskId, MachineName
from r2b.journal.failover import materialise
from r2b.journal.format import DEFAULT_BLOCK_SIZE, read_index
from r2b.journal.replicator import Replicator
from r2b.journal.snapshot import BlockMap, Journal
from r2b.machines import load_machine
from r2b.store import FaultyStore, LocalStore
from tests import disks
from tests.appdisks import start_write
from tests.disks import (
    MIB,
    debugfs_exists,
    debugfs_read,
    debugfs_write,
    e2fsck,
    loop_mount,
    make_ext4_image,
    make_ext4_in_partition,
    make_gpt_disk,
    read_region,
    sample_files,
    sha256_file,
)
from tests.s3server import S3Server, client, create_bucket

BLOCK = DEFAULT_BLOCK_SIZE  # the journal's tracking block = one chunk
# What a cycle sends besides block payloads: its Arrow index and the commit JSON. Both are a
# few KiB for the small changes here.
OVERHEAD = 16 * 1024
KIB = 1024


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> ops.Settings:
    """The embedded store and the local state in the test's folder."""
    return ops.Settings(f"file://{tmp_path / 'store'}", tmp_path / "home")


def store_of(settings: ops.Settings) -> LocalStore:
    store = settings.open()
    assert isinstance(store, LocalStore)
    return store


def store_bytes(settings: ops.Settings) -> int:
    """Total bytes of every object in the local store (what was uploaded, all told)."""
    root = store_of(settings).root
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def commit_count(settings: ops.Settings, name: str) -> int:
    return len(Journal(settings.open(), MachineName(name)).commits())


def failover_sha(
    settings: ops.Settings, name: str, dest: Path, checkpoint: str | None = None
) -> str:
    """Fail over into the fresh folder ``dest``; return the sha256 of the one disk image."""
    results = ops.failover(settings, name, dest, checkpoint)
    assert len(results) == 1
    image = results[0].path
    assert image == dest / "disk0.img"
    assert sorted(p.name for p in dest.iterdir()) == ["disk0.img"]  # no .partial left
    sha = sha256_file(image)
    assert results[0].sha256 == sha
    return sha


def write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def blocks_of(offset: int, length: int) -> set[int]:
    """The tracking blocks an extent touches."""
    return set(range(offset // BLOCK, (offset + length - 1) // BLOCK + 1))


def text(seed: int, size: int) -> bytes:
    """Compressible, line-structured ASCII text."""
    rng = random.Random(seed)
    words = ("replica", "journal", "checkpoint", "failover", "block", "extent", "r2b", "disk")
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choice(words) for _ in range(10)) + "\n").encode()
    return bytes(out[:size])


def noise(seed: int, size: int) -> bytes:
    """Incompressible bytes."""
    return random.Random(seed).randbytes(size)


def cycle_blocks(settings: ops.Settings, name: str, seq: int, disk: str = "disk0") -> set[int]:
    """The blocks the committed cycle ``seq`` wrote for ``disk`` (from its Arrow index)."""
    store = settings.open()
    cycle = Journal(store, MachineName(name)).commit(seq).disks[DiskId(disk)]
    if not cycle.index:
        return set()
    index = read_index(store.get(cycle.index), cycle.index)
    return {int(b) for b in index.column("block").to_pylist()}


# --- several cycles, a failover per checkpoint ---------------------------------------------


def test_every_checkpoint_fails_over_to_the_disk_as_it_was(
    settings: ops.Settings, tmp_path: Path
) -> None:
    image = make_ext4_image(
        tmp_path / "web1.img", 32, sample_files(seed=1, count=10, max_size=96 * KIB)
    )
    spec = ops.add_machine(settings, "web1", [str(image)])
    assert [d.id for d in spec.disks] == ["disk0"]
    assert spec.disks[0].size == 32 * MIB
    first = ops.replicate(settings, "web1")
    assert first.seq == 1 and first.blocks_changed > 0

    expected: dict[str, str] = {}
    for i in range(4):
        # A change replicated in an ordinary cycle, then one more captured by the checkpoint.
        debugfs_write(image, f"/cycle{i}/noise.bin", noise(100 + i, (i + 1) * 40 * KIB))
        plain = ops.replicate(settings, "web1")
        assert plain.checkpoint is None and plain.blocks_changed > 0
        debugfs_write(image, f"/cycle{i}/notes.txt", text(200 + i, 30 * KIB))
        if i == 2:
            debugfs_write(image, "/text/notes_000.txt", b"rewritten in cycle 2\n")
        mark = ops.checkpoint(settings, "web1", "full" if i == 0 else "incremental")
        assert mark.checkpoint is not None
        assert mark.frozen == [] and not mark.frozen_ms  # nothing is mounted: no freeze
        expected[mark.checkpoint] = sha256_file(image)

    assert len(set(expected.values())) == 4, "every checkpoint should see a different disk"
    journal = Journal(settings.open(), MachineName("web1"))
    marks = {c.checkpoint.id: c.checkpoint for c in journal.checkpoints() if c.checkpoint}
    assert sorted(marks) == sorted(expected)
    assert [marks[cp].type for cp in sorted(marks)] == ["full"] + ["incremental"] * 3
    assert all(m.consistency == "crash" for m in marks.values())

    # One more change after the last checkpoint, replicated without a checkpoint.
    debugfs_write(image, "/after/last.bin", noise(300, 100 * KIB))
    ops.replicate(settings, "web1")
    latest_source = sha256_file(image)

    for n, (cp, sha) in enumerate(sorted(expected.items())):
        assert failover_sha(settings, "web1", tmp_path / f"fo-{n}", cp) == sha, cp
    assert failover_sha(settings, "web1", tmp_path / "fo-latest") == latest_source

    # The image at the last checkpoint is a filesystem holding that cycle's files, not later ones.
    last = tmp_path / "fo-3" / "disk0.img"
    assert debugfs_read(last, "/cycle3/notes.txt") == text(203, 30 * KIB)
    assert debugfs_read(last, "/text/notes_000.txt") == b"rewritten in cycle 2\n"
    assert not debugfs_exists(last, "/after/last.bin")
    e2fsck(last)


def test_failover_before_any_cycle_is_not_found(settings: ops.Settings, tmp_path: Path) -> None:
    image = make_ext4_image(tmp_path / "d.img", 16)
    ops.add_machine(settings, "m", [str(image)])
    with pytest.raises(NotFound):
        ops.failover(settings, "m", tmp_path / "fo")
    with pytest.raises(NotFound):
        ops.failover(settings, "m", tmp_path / "fo", "cp-000001")


# --- what goes over the WAN ----------------------------------------------------------------


def test_first_cycle_sends_the_data_and_not_the_empty_space(
    settings: ops.Settings, tmp_path: Path
) -> None:
    payload = noise(1, 1 * MIB)
    image = make_ext4_image(tmp_path / "d.img", 64, {"data/one-mib.bin": payload})
    ops.add_machine(settings, "m", [str(image)])
    before = store_bytes(settings)
    result = ops.replicate(settings, "m")
    # 1 MiB of incompressible data plus the filesystem's metadata (mostly zeros, compressed);
    # the other 63 MiB are zeros and cost nothing.
    assert MIB <= result.bytes_uploaded <= MIB + 256 * KIB, result
    assert result.blocks_changed <= 64, result  # of 1024 blocks
    assert store_bytes(settings) - before == result.bytes_uploaded
    assert failover_sha(settings, "m", tmp_path / "fo") == sha256_file(image)


def test_an_all_zero_disk_costs_only_its_commit(settings: ops.Settings, tmp_path: Path) -> None:
    raw = disks.sparse_file(tmp_path / "zero.img", 32 * MIB)
    ops.add_machine(settings, "z", [str(raw)])
    result = ops.replicate(settings, "z")
    assert result.seq == 1
    assert result.blocks_changed == 0
    assert 0 < result.bytes_uploaded < 4 * KIB  # the commit object, nothing else
    assert list(store_of(settings).list("journal/z/packs/")) == []
    assert failover_sha(settings, "z", tmp_path / "fo") == sha256_file(raw)
    # The failover image is sparse: no zero block was written.
    assert (tmp_path / "fo" / "disk0.img").stat().st_blocks == 0


def test_incompressible_change_costs_its_blocks(settings: ops.Settings, tmp_path: Path) -> None:
    image = make_ext4_image(
        tmp_path / "d.img", 32, sample_files(seed=2, count=5, max_size=32 * KIB)
    )
    ops.add_machine(settings, "m", [str(image)])
    ops.replicate(settings, "m")

    size = 512 * KIB
    debugfs_write(image, "/new/noise.bin", noise(7, size))
    before = store_bytes(settings)
    result = ops.replicate(settings, "m")
    assert result.blocks_changed >= size // BLOCK
    assert result.bytes_changed == result.blocks_changed * BLOCK
    # At least the random bytes themselves; at most every changed block sent raw.
    assert size <= result.bytes_uploaded <= result.blocks_changed * BLOCK + OVERHEAD, result
    assert store_bytes(settings) - before == result.bytes_uploaded
    assert failover_sha(settings, "m", tmp_path / "fo") == sha256_file(image)


@pytest.mark.parametrize(("offset", "size"), [(2 * MIB, 256 * KIB), (3 * MIB + 1000, 200 * KIB)])
def test_raw_write_costs_exactly_the_blocks_it_touches(
    settings: ops.Settings, tmp_path: Path, offset: int, size: int
) -> None:
    raw = disks.sparse_file(tmp_path / "raw.img", 16 * MIB)
    write_at(raw, 8 * MIB, noise(3, 1 * MIB))
    ops.add_machine(settings, "m", [str(raw)])
    ops.replicate(settings, "m")

    write_at(raw, offset, noise(4, size))
    touched = blocks_of(offset, size)
    result = ops.replicate(settings, "m")
    assert result.blocks_changed == len(touched)
    assert result.bytes_changed == len(touched) * BLOCK
    assert cycle_blocks(settings, "m", result.seq) == touched
    assert size <= result.bytes_uploaded <= len(touched) * BLOCK + OVERHEAD, result
    assert failover_sha(settings, "m", tmp_path / "fo") == sha256_file(raw)


def test_compressible_change_costs_far_less_than_its_blocks(
    settings: ops.Settings, tmp_path: Path
) -> None:
    image = make_ext4_image(tmp_path / "d.img", 32)
    ops.add_machine(settings, "m", [str(image)])
    ops.replicate(settings, "m")

    debugfs_write(image, "/logs/app.log", text(9, 1 * MIB))
    before = store_bytes(settings)
    result = ops.replicate(settings, "m")
    assert result.bytes_changed >= MIB
    assert result.bytes_uploaded < result.bytes_changed / 4, result
    assert store_bytes(settings) - before == result.bytes_uploaded
    assert failover_sha(settings, "m", tmp_path / "fo") == sha256_file(image)


def test_a_cycle_without_change_uploads_nothing(settings: ops.Settings, tmp_path: Path) -> None:
    image = make_ext4_image(tmp_path / "d.img", 16, sample_files(seed=3, count=5, max_size=KIB))
    ops.add_machine(settings, "m", [str(image)])
    first = ops.replicate(settings, "m")
    before = store_bytes(settings)
    for _ in range(2):
        again = ops.replicate(settings, "m")
        assert again.seq == first.seq
        assert (again.blocks_changed, again.bytes_changed, again.bytes_uploaded) == (0, 0, 0)
    assert store_bytes(settings) == before
    assert commit_count(settings, "m") == 1


def test_a_lost_local_cache_costs_no_upload(settings: ops.Settings, tmp_path: Path) -> None:
    """Without the local digest cache the replicator rebuilds it from the journal."""
    image = make_ext4_image(tmp_path / "d.img", 16, sample_files(seed=4, count=5, max_size=KIB))
    ops.add_machine(settings, "m", [str(image)])
    ops.replicate(settings, "m")
    shutil.rmtree(settings.state_dir)
    again = ops.replicate(settings, "m")
    assert (again.blocks_changed, again.bytes_uploaded) == (0, 0)
    debugfs_write(image, "/later.txt", b"later\n")
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    changed = ops.replicate(settings, "m")
    assert 0 < changed.blocks_changed <= 8
    assert failover_sha(settings, "m", tmp_path / "fo") == sha256_file(image)


def test_a_rebuilt_cache_is_kept_when_nothing_changed(
    settings: ops.Settings, tmp_path: Path
) -> None:
    """After the cache was rebuilt from the journal, the next cycle must not rebuild it again.

    A lost or stale cache (e.g. a crash after a commit) is rebuilt by reading every cycle's
    index back from the store; when nothing changed, that rebuilt cache should be saved, or an
    idle machine reads its whole journal index over the WAN on every cycle.
    """
    image = make_ext4_image(tmp_path / "d.img", 16, sample_files(seed=5, count=5, max_size=KIB))
    ops.add_machine(settings, "m", [str(image)])
    ops.replicate(settings, "m")
    shutil.rmtree(settings.state_dir)
    calls: list[tuple[str, str]] = []

    def record(operation: str, key: str) -> None:
        calls.append((operation, key))

    store = FaultyStore(settings.open(), record)
    spec = load_machine(store, "m")
    first = Replicator(store, spec, settings.state_dir).cycle()
    assert first.blocks_changed == 0
    assert any("/index/" in key for _, key in calls)  # rebuilt from the journal
    calls.clear()
    second = Replicator(store, spec, settings.state_dir).cycle()
    assert second.blocks_changed == 0
    assert [key for _, key in calls if "/index/" in key] == []


# --- changed extents from outside ----------------------------------------------------------


def test_changed_extents_from_outside_narrow_the_cycle(
    settings: ops.Settings, tmp_path: Path
) -> None:
    raw = disks.sparse_file(tmp_path / "raw.img", 16 * MIB)
    write_at(raw, 0, noise(10, 4 * MIB))
    ops.add_machine(settings, "m", [str(raw)])
    ops.replicate(settings, "m")
    disk0 = DiskId("disk0")

    # Two changes, both handed in: exactly their blocks are replicated.
    a, b = (1 * MIB + 512, 100 * KIB), (9 * MIB, 3 * BLOCK)
    write_at(raw, a[0], noise(11, a[1]))
    write_at(raw, b[0], noise(12, b[1]))
    both = ops.replicate(settings, "m", changed_extents={disk0: [a, b]})
    assert cycle_blocks(settings, "m", both.seq) == blocks_of(*a) | blocks_of(*b)
    assert both.blocks_changed == len(blocks_of(*a) | blocks_of(*b))
    assert failover_sha(settings, "m", tmp_path / "fo1") == sha256_file(raw)

    # An extent wider than the change: the digest comparison still sends only what changed.
    c = (12 * MIB + 3 * BLOCK, 10)
    write_at(raw, c[0], b"0123456789")
    wide = ops.replicate(settings, "m", changed_extents={disk0: [(12 * MIB, 2 * MIB)]})
    assert wide.blocks_changed == 1
    assert cycle_blocks(settings, "m", wide.seq) == blocks_of(*c)
    assert failover_sha(settings, "m", tmp_path / "fo2") == sha256_file(raw)

    # A change not handed in is not read: the replica keeps the old bytes there ...
    d, e = (5 * MIB, 2 * BLOCK), (14 * MIB, BLOCK)
    old_e = read_at(raw, *e)
    write_at(raw, d[0], noise(13, d[1]))
    write_at(raw, e[0], noise(14, e[1]))
    narrow = ops.replicate(settings, "m", changed_extents={disk0: [d]})
    assert narrow.blocks_changed == 2
    assert cycle_blocks(settings, "m", narrow.seq) == blocks_of(*d)
    fo3 = tmp_path / "fo3"
    assert failover_sha(settings, "m", fo3) != sha256_file(raw)
    assert read_at(fo3 / "disk0.img", *d) == read_at(raw, *d)
    assert read_at(fo3 / "disk0.img", *e) == old_e

    # ... until a full cycle finds it.
    full = ops.replicate(settings, "m")
    assert cycle_blocks(settings, "m", full.seq) == blocks_of(*e)
    assert failover_sha(settings, "m", tmp_path / "fo4") == sha256_file(raw)

    # No extents for the disk: nothing is read, nothing is committed.
    write_at(raw, 0, noise(15, BLOCK))
    none = ops.replicate(settings, "m", changed_extents={disk0: []})
    assert (none.seq, none.blocks_changed, none.bytes_uploaded) == (full.seq, 0, 0)


# --- a partitioned disk --------------------------------------------------------------------


def write_file_in_partition(
    disk: Path, offset: int, length: int, inside: str, data: bytes, work: Path
) -> None:
    """debugfs_write into the ext4 filesystem of one partition of ``disk``."""
    part = read_region(disk, offset, length, work / "partition.img")
    debugfs_write(part, inside, data)
    write_at(disk, offset, part.read_bytes())
    part.unlink()


def test_gpt_disk_change_in_second_partition(settings: ops.Settings, tmp_path: Path) -> None:
    disk = tmp_path / "gpt.img"
    parts = make_gpt_disk(disk, 40, [(16, "8300"), (16, "8300")])
    assert len(parts) == 2
    for n, (offset, length) in enumerate(parts):
        make_ext4_in_partition(
            disk, offset, length, sample_files(seed=20 + n, count=6, max_size=64 * KIB)
        )
    ops.add_machine(settings, "gpt", [str(disk)])
    first = ops.replicate(settings, "gpt")
    assert failover_sha(settings, "gpt", tmp_path / "fo1") == sha256_file(disk)

    (off1, len1), (off2, len2) = parts
    p1_before = read_at(disk, off1, len1)
    write_file_in_partition(disk, off2, len2, "/var/log/new.log", text(21, 200 * KIB), tmp_path)
    assert read_at(disk, off1, len1) == p1_before
    second = ops.replicate(settings, "gpt")
    assert second.seq == first.seq + 1
    changed = cycle_blocks(settings, "gpt", second.seq)
    assert changed and second.blocks_changed == len(changed)
    assert all(off2 <= b * BLOCK and (b + 1) * BLOCK <= off2 + len2 for b in changed), changed

    fo2 = tmp_path / "fo2"
    assert failover_sha(settings, "gpt", fo2) == sha256_file(disk)
    part2 = read_region(fo2 / "disk0.img", off2, len2, tmp_path / "p2.img")
    assert debugfs_read(part2, "/var/log/new.log") == text(21, 200 * KIB)
    e2fsck(part2)


# --- a mounted filesystem, frozen for the checkpoint ---------------------------------------


@pytest.fixture
def loop_ok() -> None:
    if not disks.can_loop_mount():
        pytest.skip("loop mounts need root and a free loop device")


def _thaw(mountpoint: Path) -> None:
    subprocess.run(
        [disks.tool("fsfreeze"), "-u", str(mountpoint)], capture_output=True, check=False
    )


@pytest.mark.root
@pytest.mark.usefixtures("loop_ok")
def test_checkpoint_freezes_the_mounted_filesystem(settings: ops.Settings, tmp_path: Path) -> None:
    image = make_ext4_image(tmp_path / "data.img", 32)
    ops.add_machine(settings, "db1", [str(image)])
    ops.replicate(settings, "db1")
    files = {
        "before/noise.bin": noise(30, 300 * KIB),
        "before/notes.txt": text(31, 50 * KIB),
        "before/deep/a/b/small.dat": b"small but important\n",
    }
    mnt = tmp_path / "mnt"
    writer: threading.Thread | None = None
    with loop_mount(image, mnt) as mounted:
        try:
            for name, data in files.items():
                target = mounted / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)  # no fsync: the freeze must flush these
            mark = ops.checkpoint(settings, "db1", "full")
            assert mark.checkpoint is not None
            assert mark.frozen == [os.path.realpath(mounted)]
            assert mark.frozen_ms is not None and mark.frozen_ms > 0
            # Thawed: an ordinary write completes.
            writer, done = start_write(mounted / "after.txt", b"written after the checkpoint\n")
            assert done.wait(15), "the filesystem is still frozen after the checkpoint"
        finally:
            _thaw(mounted)  # whatever happened; a blocked writer then finishes before umount
            if writer is not None:
                writer.join(30)

    commit = Journal(settings.open(), MachineName("db1")).checkpoint(mark.checkpoint)
    assert commit.checkpoint is not None
    assert commit.checkpoint.consistency == "filesystem"
    assert commit.checkpoint.frozen == [os.path.realpath(mnt)]
    assert commit.checkpoint.frozen_ms == pytest.approx(mark.frozen_ms, abs=0.01)

    results = ops.failover(settings, "db1", tmp_path / "fo", mark.checkpoint)
    restored = results[0].path
    e2fsck(restored)  # a clean filesystem: e2fsck -fn exits 0
    for name, data in files.items():
        assert debugfs_read(restored, name) == data, name
    assert not debugfs_exists(restored, "/after.txt")


# --- the same story against the S3 protocol ------------------------------------------------


def test_scenario_on_s3(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("R2B_S3_ENDPOINT", s3_server.endpoint_url)
    bucket = create_bucket(s3_server.endpoint_url)
    settings = ops.Settings(f"s3://{bucket}/site-a/replicas", tmp_path / "home")
    image = make_ext4_image(
        tmp_path / "d.img", 16, sample_files(seed=40, count=8, max_size=64 * KIB)
    )
    ops.add_machine(settings, "s3m", [str(image)])
    first = ops.replicate(settings, "s3m")
    assert first.seq == 1 and first.blocks_changed > 0

    debugfs_write(image, "/one.bin", noise(41, 200 * KIB))
    mark = ops.checkpoint(settings, "s3m", "full")
    at_mark = sha256_file(image)
    debugfs_write(image, "/two.txt", text(42, 100 * KIB))
    ops.replicate(settings, "s3m")
    again = ops.replicate(settings, "s3m")
    assert (again.blocks_changed, again.bytes_uploaded) == (0, 0)

    assert failover_sha(settings, "s3m", tmp_path / "fo1", mark.checkpoint) == at_mark
    assert failover_sha(settings, "s3m", tmp_path / "fo2") == sha256_file(image)
    assert [m.name for m in ops.machines(settings)] == ["s3m"]

    listing = client(s3_server.endpoint_url).list_objects_v2(Bucket=bucket)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert keys and all(k.startswith("site-a/replicas/") for k in keys)
    assert "site-a/replicas/machines/s3m.json" in keys
    assert any(k.startswith("site-a/replicas/journal/s3m/commits/") for k in keys)


# --- damage in the store -------------------------------------------------------------------


@pytest.fixture
def replicated(settings: ops.Settings, tmp_path: Path) -> Iterator[tuple[Path, BlockMap]]:
    """A machine "m" with one ext4 disk holding ~3 MiB of data, replicated once."""
    files = {"a.bin": noise(50, 2 * MIB), "b.txt": text(51, 1 * MIB)}
    image = make_ext4_image(tmp_path / "d.img", 16, files)
    ops.add_machine(settings, "m", [str(image)])
    ops.replicate(settings, "m")
    store = settings.open()
    bmap = Journal(store, MachineName("m")).block_map(DiskId("disk0"), 16 * MIB, BLOCK)
    yield image, bmap


def blocks_in_pack(bmap: BlockMap, key: str) -> list[int]:
    n = bmap.pack_keys.index(key)
    return sorted(int(b) for b in np.flatnonzero((bmap.pack == n) & (bmap.codec != 0)))


def test_flipped_byte_in_a_pack_is_named(
    settings: ops.Settings, tmp_path: Path, replicated: tuple[Path, BlockMap]
) -> None:
    _, bmap = replicated
    [key] = bmap.pack_keys
    victim = blocks_in_pack(bmap, key)[len(blocks_in_pack(bmap, key)) // 2]
    path = store_of(settings).root / key
    at = int(bmap.offset[victim]) + int(bmap.length[victim]) // 2
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))

    dest = tmp_path / "fo"
    with pytest.raises(JournalCorrupt) as caught:
        ops.failover(settings, "m", dest)
    err = caught.value
    assert (err.machine, err.disk, err.key) == ("m", "disk0", key)
    assert err.blocks == [victim]
    assert key in str(err) and str(victim) in str(err)
    assert "\n" not in str(err)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_missing_pack_is_named(
    settings: ops.Settings, tmp_path: Path, replicated: tuple[Path, BlockMap]
) -> None:
    _, bmap = replicated
    [key] = bmap.pack_keys
    (store_of(settings).root / key).unlink()

    dest = tmp_path / "fo"
    with pytest.raises(JournalCorrupt) as caught:
        ops.failover(settings, "m", dest)
    err = caught.value
    assert (err.disk, err.key) == ("disk0", key)
    assert err.blocks == blocks_in_pack(bmap, key)
    assert "missing" in str(err) and key in str(err)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_store_failure_during_failover_leaves_no_partial_file(
    settings: ops.Settings, tmp_path: Path, replicated: tuple[Path, BlockMap]
) -> None:
    """A store that fails mid-way (not corruption: an outage) must not leave a half image."""
    _, bmap = replicated

    def fail_on(operation: str, key: str) -> BaseException | None:
        if operation == "get_range":
            return TransientStoreError("the store went away")
        return None

    dest = tmp_path / "fo"
    dest.mkdir()
    with pytest.raises(TransientStoreError):
        materialise(FaultyStore(settings.open(), fail_on), bmap, dest / "disk0.img")
    assert list(dest.iterdir()) == []


def test_damage_in_a_second_disk_leaves_no_image_of_the_first(
    settings: ops.Settings, tmp_path: Path
) -> None:
    """JournalCorrupt says "nothing was materialised": that must hold for the whole machine."""
    first = make_ext4_image(tmp_path / "a.img", 16, {"a.bin": noise(60, 256 * KIB)})
    second = make_ext4_image(tmp_path / "b.img", 16, {"b.bin": noise(61, 256 * KIB)})
    ops.add_machine(settings, "two", [str(first), str(second)])
    ops.replicate(settings, "two")
    store = store_of(settings)
    [key] = [k for k in store.list("journal/two/packs/") if k.endswith("-disk1-00000.pack")]
    (store.root / key).unlink()

    dest = tmp_path / "fo"
    with pytest.raises(JournalCorrupt) as caught:
        ops.failover(settings, "two", dest)
    assert caught.value.disk == "disk1"
    assert not dest.exists() or list(dest.iterdir()) == []
