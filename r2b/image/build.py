"""Building backup images from the replica, in the cloud, at a checkpoint (patent FIG. 4, 6).

``build_backup`` waits for the checkpoint to reach the journal, takes the replica snapshot at it
(``Journal.block_map``), and builds one image per disk:

- **full**: reads and verifies every stored block of the snapshot;
- **incremental**: reads only the blocks of the *changed-block list* — those written to the
  journal after the parent image's checkpoint (``written_seq > parent.seq``) — and stores that
  list beside the image as an Arrow table.

Blocks are copied as the journal stores them (already zstd-compressed), after their digest was
checked; a chunk whose digest the store already holds is not stored again (deduplication across
every image and machine). The image index is complete either way. Nothing crosses the WAN: the
proxy reads only the store. Chunks first, then image indexes, then the file catalog, then the
manifest (create-if-absent) last: a crash leaves no visible image, and the retried build finds
the chunks already indexed.

The catalog (``r2b.mount.indexer``) is extracted by *mounting* each disk's replica snapshot:
its partition table and filesystems are read in place through the block map, metadata blocks
only, without a copy; a filesystem that cannot be read is reported, never fatal. At an
application-consistent checkpoint the application items (``r2b.apps.items``) follow, from the
metadata file the checkpoint mark names, read from the snapshot as well.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from r2b.blockio import Block, fetch_blocks
from r2b.clock import Clock, iso, utc_now
from r2b.errors import CheckpointTimeout, JournalCorrupt, NotFound
from r2b.ids import BackupId, CheckpointId
from r2b.image.backups import list_backups
from r2b.image.chunks import ChunkIndex, ChunkWriter, digest_array
from r2b.image.format import (
    CHANGED_SCHEMA,
    IMAGE_SCHEMA,
    DiskImage,
    Manifest,
    backup_id,
    changed_key,
    image_index_key,
    manifest_key,
    write_table,
)
from r2b.journal.format import BackupType, Commit
from r2b.journal.snapshot import BlockMap, Journal
from r2b.locks import store_lock
from r2b.machines import DiskSpec, MachineSpec
from r2b.mount.indexer import CatalogBuilder
from r2b.store.base import ObjectStore

Progress = Callable[[int], None]


def wait_for_checkpoint(
    journal: Journal,
    checkpoint: CheckpointId,
    timeout_s: float,
    poll_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Commit:
    """The commit that marks ``checkpoint``, polling the journal until ``timeout_s``."""
    waited = 0.0
    while True:
        try:
            return journal.checkpoint(checkpoint)
        except NotFound:
            if waited >= timeout_s:
                raise CheckpointTimeout(journal.machine, checkpoint, timeout_s) from None
        sleep(poll_s)
        waited += poll_s


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    built: bool  # False when the backup already existed


def build_backup(
    store: ObjectStore,
    machine: MachineSpec,
    checkpoint: CheckpointId,
    wait_s: float = 0.0,
    clock: Clock = utc_now,
    progress: Progress | None = None,
    catalog: bool = True,
) -> BuildResult:
    """Build the backup of ``machine`` at ``checkpoint`` (see the module docstring); with
    ``catalog``, mount each disk's replica snapshot and store the file catalog too."""
    journal = Journal(store, machine.name)
    commit = wait_for_checkpoint(journal, checkpoint, wait_s)
    assert commit.checkpoint is not None
    bid = backup_id(machine.name, checkpoint)
    existing = _existing(store, bid)
    if existing is not None:
        return BuildResult(existing, False)
    parent = _parent(store, machine, commit.seq)
    kind: BackupType = "full" if parent is None else commit.checkpoint.type
    with store_lock(store, "backup", f"backup {bid}", exclusive=False, clock=clock):
        chunks = ChunkIndex.load(store)
        writer = ChunkWriter(store)
        disks = {}
        indexer = CatalogBuilder(store, bid, machine.name, len(machine.disks)) if catalog else None
        snapshots = _Snapshots(journal, machine, commit.seq)
        for disk in machine.disks:
            bmap = snapshots.layout(disk.id)
            since = parent.seq if (kind == "incremental" and parent) else None
            disks[disk.id] = _build_disk(store, bid, disk, bmap, since, chunks, writer, progress)
            if indexer is not None:
                indexer.add_disk(disk.id, bmap)
        writer.flush()
        if indexer is not None and commit.checkpoint.app_metadata:
            indexer.add_items(commit.checkpoint.app_metadata, snapshots.layout)
        catalog_doc = indexer.finish() if indexer is not None else None
        manifest = Manifest(
            bid,
            machine.name,
            checkpoint,
            commit.seq,
            kind,
            parent.id if (parent and kind == "incremental") else None,
            iso(clock()),
            commit.checkpoint.time,
            commit.checkpoint.consistency,
            disks,
            catalog=catalog_doc,
        )
        if not store.put_if_absent(manifest_key(bid), manifest.to_json()):
            return BuildResult(_existing(store, bid) or manifest, False)
    return BuildResult(manifest, True)


class _Snapshots:
    """The replica snapshot of each disk at a cycle, one block map in memory at a time (block
    maps are the build's largest memory; the application items read the metadata's disk
    again after every disk was imaged)."""

    def __init__(self, journal: Journal, machine: MachineSpec, seq: int) -> None:
        self.journal = journal
        self.machine = machine
        self.seq = seq
        self._last: tuple[str, BlockMap] | None = None

    def layout(self, disk: str) -> BlockMap:
        if self._last is not None and self._last[0] == disk:
            return self._last[1]
        spec = self.machine.disk(disk)
        bmap = self.journal.block_map(spec.id, spec.size, spec.block_size, self.seq)
        self._last = (disk, bmap)
        return bmap


def _existing(store: ObjectStore, bid: BackupId) -> Manifest | None:
    try:
        return Manifest.from_json(store.get(manifest_key(bid)), manifest_key(bid))
    except NotFound:
        return None


def _parent(store: ObjectStore, machine: MachineSpec, seq: int) -> Manifest | None:
    """The newest backup of ``machine`` before cycle ``seq`` with the same disks."""
    disks = {d.id for d in machine.disks}
    older = [m for m in list_backups(store, machine.name) if m.seq < seq and set(m.disks) == disks]
    return older[-1] if older else None


def _build_disk(
    store: ObjectStore,
    bid: BackupId,
    disk: DiskSpec,
    bmap: BlockMap,
    since_seq: int | None,
    chunks: ChunkIndex,
    writer: ChunkWriter,
    progress: Progress | None,
) -> DiskImage:
    if since_seq is None:
        to_read = bmap.stored_blocks()
        changed: npt.NDArray[np.int64] | None = None
    else:
        changed = np.flatnonzero(bmap.written_seq > since_seq).astype(np.int64)
        to_read = changed[bmap.codec[changed] != 0]
    known = chunks.contains(bmap.digests[to_read])
    known_blocks = set(to_read[known].tolist())
    tally = _Tally()

    def deliver(block: Block) -> None:
        digest = bmap.digests[block.number].tobytes()
        new = block.number not in known_blocks and writer.add(
            digest, block.codec, block.payload, len(block.plain)
        )
        tally.add(len(block.plain), len(block.payload) if new else 0, new)
        if progress:
            progress(len(block.plain))

    damage = fetch_blocks(store, bmap, to_read, deliver)
    if damage:
        key, (reason, _) = sorted(damage.by_key.items())[0]
        raise JournalCorrupt(bmap.machine, bmap.disk, key, damage.blocks, reason)
    index = pa.table(
        {"digest": digest_array(bmap.digests), "zero": pa.array(bmap.codec == 0, pa.bool_())}
    )
    index_key = image_index_key(bid, disk.id)
    store.put(index_key, write_table(index, IMAGE_SCHEMA))
    changed_at = None
    if changed is not None:
        changed_at = changed_key(bid, disk.id)
        table = pa.table(
            {"block": pa.array(changed, pa.uint64()), "digest": digest_array(bmap.digests[changed])}
        )
        store.put(changed_at, write_table(table, CHANGED_SCHEMA))
    return DiskImage(
        disk.size,
        disk.block_size,
        index_key,
        changed_at,
        len(to_read),
        tally.read,
        tally.chunks_new,
        tally.stored,
        tally.read - tally.plain_new,
    )


class _Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.read = 0
        self.stored = 0
        self.chunks_new = 0
        self.plain_new = 0

    def add(self, plain: int, stored: int, new: bool) -> None:
        with self._lock:
            self.read += plain
            self.stored += stored
            if new:
                self.chunks_new += 1
                self.plain_new += plain
