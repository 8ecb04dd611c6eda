"""Journal compaction: what failover retention and pending backups need survives, the rest goes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from r2b import ops
from r2b.errors import NotFound
from r2b.image.retention import RetentionPolicy
from r2b.journal.format import DEFAULT_BLOCK_SIZE
from r2b.journal.snapshot import Journal


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def six_checkpoints(tmp_path: Path) -> tuple[ops.Settings, Path, dict[str, str]]:
    """Six checkpoints with changes between them; the first four backed up."""
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    settings = ops.Settings(f"file://{tmp_path / 'store'}", tmp_path / "home")
    ops.add_machine(settings, "m", [str(disk)])
    shas = {}
    for i in range(6):
        with open(disk, "r+b") as f:
            f.seek(i * 1_300_000)
            f.write(os.urandom(200_000))
            f.seek(0)
            f.write(os.urandom(70_000))  # block 0 and 1 rewritten every time
        mark = ops.checkpoint(settings, "m", "full" if i == 0 else "incremental")
        assert mark.checkpoint is not None
        shas[mark.checkpoint] = sha256(disk)
        if i < 4:
            ops.backup(settings, "m")
    return settings, tmp_path, shas


def test_compaction_keeps_pending_and_failover_checkpoints(six_checkpoints) -> None:
    settings, tmp, shas = six_checkpoints
    store = settings.open()
    before = len(list(store.list("journal/")))
    result = ops.prune(settings, RetentionPolicy(keep_last=2), keep_failover=1)
    after = len(list(store.list("journal/")))
    assert result.journal_objects_deleted > 0 and after < before
    checkpoints = list(shas)
    # the two checkpoints without a backup survive, exactly; the older ones are gone
    assert Journal(store, "m").base_seq() == int(checkpoints[4].removeprefix("cp-"))
    for cp in checkpoints[4:]:
        image = ops.failover(settings, "m", tmp / f"fo-{cp}", cp)[0]
        assert image.sha256 == shas[cp]
    with pytest.raises(NotFound):
        ops.failover(settings, "m", tmp / "fo-old", checkpoints[0])
    # the pending checkpoints still back up, incrementally from the kept parent, byte-exact
    built = ops.backup(settings, "m")
    assert [b.manifest.checkpoint for b in built] == checkpoints[4:]
    assert all(b.manifest.type == "incremental" for b in built)
    for manifest in ops.backups(settings, "m"):
        out = ops.restore_disk(settings, manifest.id, tmp / f"r-{manifest.id}.img")
        assert out.sha256 == shas[manifest.checkpoint]
    assert ops.verify(settings).corrupt == []


def test_replication_continues_after_compaction(six_checkpoints) -> None:
    settings, tmp, _ = six_checkpoints
    ops.backup(settings, "m")
    ops.prune(settings, RetentionPolicy(keep_last=1), keep_failover=1)
    disk = Path(ops.machines(settings)[0].disks[0].path)
    with open(disk, "r+b") as f:
        f.seek(9 << 20)
        f.write(os.urandom(100_000))
    # a fresh host (no local digest cache) rebuilds its digests from the compacted journal
    fresh = ops.Settings(settings.store_url, tmp / "other-home")
    cycle = ops.replicate(fresh, "m")
    assert 0 < cycle.blocks_changed <= 100_000 // DEFAULT_BLOCK_SIZE + 2
    image = ops.failover(fresh, "m", tmp / "latest")[0]
    assert image.sha256 == sha256(disk)
