"""Prune: apply retention to backups, then collect garbage.

Runs under the store's exclusive lock (``r2b.locks``), so no backup is building meanwhile and
no chunk that a build has just decided to reuse can vanish under it. In order, each step
leaving the store valid if interrupted:

1. remove the backups retention does not keep: manifest first (the backup is gone), then its
   image indexes and changed-block lists;
2. remove image objects left without a manifest (crashed builds);
3. delete chunk packs none of whose chunks a remaining backup references: the pack's index
   first (nobody will reuse its chunks), then the pack; delete packs that have no index
   (crashed builds). A pack at least half unreferenced is rewritten (its live chunks copied,
   verified, into a new pack, then the old one deleted); below that its unreferenced bytes
   are reported as ``bytes_reclaimable``;
4. remove stale locks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import blake3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zstandard

from r2b.blockio import decode_block
from r2b.clock import Clock, utc_now
from r2b.errors import ChunkCorrupt, NotFound
from r2b.image.backups import list_backups
from r2b.image.chunks import ChunkIndex, ChunkWriter, digest_array
from r2b.image.format import (
    BACKUPS_PREFIX,
    CHUNK_PACK_PREFIX,
    Manifest,
    chunk_index_key,
    chunk_pack_key,
    manifest_key,
)
from r2b.image.restore import referenced_chunks
from r2b.image.retention import RetentionPolicy, select_kept
from r2b.journal.compact import compact_journal
from r2b.locks import stale_locks, store_lock
from r2b.machines import list_machines
from r2b.store.base import ObjectStore


@dataclass
class PruneResult:
    removed_backups: list[str] = field(default_factory=list)
    kept_backups: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    packs_deleted: int = 0
    bytes_reclaimable: int = 0
    packs_repacked: int = 0
    journal_objects_deleted: int = 0


def prune(
    store: ObjectStore,
    policy: RetentionPolicy,
    keep_failover: int = 3,
    clock: Clock = utc_now,
) -> PruneResult:
    """Apply ``policy`` to backups, collect chunks, then compact every machine's journal
    down to what failover (``keep_failover`` newest checkpoints) and pending backups need."""
    result = PruneResult()
    with store_lock(store, "prune", "prune", exclusive=True, clock=clock):
        backups = list_backups(store)
        kept = _kept(backups, policy)
        for manifest in backups:
            if manifest.id in kept:
                result.kept_backups.append(manifest.id)
            else:
                result.bytes_freed += _delete_backup(store, manifest)
                result.removed_backups.append(manifest.id)
        remaining = [m for m in backups if m.id in kept]
        result.bytes_freed += _delete_orphan_images(store, {m.id for m in remaining})
        _collect_chunks(store, remaining, result)
        for machine in list_machines(store):
            # removed backups were backed up too: their checkpoints need no journal any more
            done = {m.checkpoint for m in backups if m.machine == machine.name}
            compacted = compact_journal(store, machine, done, keep_failover, clock)
            result.bytes_freed += compacted.bytes_freed
            result.journal_objects_deleted += compacted.objects_deleted
        for key in stale_locks(store, clock):
            store.delete(key)
    return result


def _kept(backups: list[Manifest], policy: RetentionPolicy) -> set[str]:
    """Retention applies per machine."""
    per_machine: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for m in backups:
        per_machine[m.machine].append((m.id, datetime.fromisoformat(m.checkpoint_time)))
    return set().union(*(select_kept(items, policy) for items in per_machine.values()))


def _size(store: ObjectStore, key: str) -> int:
    try:
        return store.size(key)
    except NotFound:
        return 0


def _delete(store: ObjectStore, key: str) -> int:
    size = _size(store, key)
    store.delete(key)
    return size


def _delete_backup(store: ObjectStore, manifest: Manifest) -> int:
    freed = _delete(store, manifest_key(manifest.id))
    for key in list(store.list(f"{BACKUPS_PREFIX}{manifest.id}/")):
        freed += _delete(store, key)
    return freed


def _delete_orphan_images(store: ObjectStore, live: set[str]) -> int:
    freed = 0
    for key in list(store.list(BACKUPS_PREFIX)):
        if key.split("/")[1] not in live:
            freed += _delete(store, key)
    return freed


REPACK_WASTE = 0.5  # rewrite a pack when at least half of its bytes are unreferenced


def _collect_chunks(store: ObjectStore, remaining: list[Manifest], result: PruneResult) -> None:
    chunks = ChunkIndex.load(store)
    # orphans first: packs written from here on (repacking) are not in this index either
    indexed = set(chunks.pack_ids)
    for key in list(store.list(CHUNK_PACK_PREFIX)):
        if key.rsplit("/", 1)[1].removesuffix(".pack") not in indexed:
            result.bytes_freed += _delete(store, key)
            result.packs_deleted += 1
    needed = list(referenced_chunks(store, remaining).values())
    wanted = np.concatenate(needed) if needed else np.empty((0, 32), np.uint8)
    table = chunks.table
    if len(table):
        used = pc.is_in(table.column("digest"), value_set=digest_array(wanted))
        used_np = np.asarray(used.to_numpy(zero_copy_only=False), dtype=bool)
        packs = table.column("pack").to_numpy()
        lengths = table.column("length").to_numpy()
        for number, pack_id in enumerate(chunks.pack_ids):
            mine = packs == number
            waste = int(lengths[mine & ~used_np].sum())
            if not used_np[mine].any():
                result.bytes_freed += _delete_pack(store, pack_id)
                result.packs_deleted += 1
            elif waste >= REPACK_WASTE * int(lengths[mine].sum()):
                result.bytes_freed += _repack(
                    store, chunks, np.flatnonzero(mine & used_np), pack_id
                )
                result.packs_repacked += 1
            else:
                result.bytes_reclaimable += waste


def _delete_pack(store: ObjectStore, pack_id: str) -> int:
    """Index first (nobody reuses its chunks any more), then the pack."""
    return _delete(store, chunk_index_key(pack_id)) + _delete(store, chunk_pack_key(pack_id))


def _repack(store: ObjectStore, chunks: ChunkIndex, rows: np.ndarray, pack_id: str) -> int:
    """Copy a pack's referenced chunks into a new pack, verified, then drop the old pack;
    returns the bytes the store shrank by.

    While both exist the chunks are indexed twice, which readers accept (either copy is
    whole); the old index goes before the old pack, as in deletion.
    """
    key = chunk_pack_key(pack_id)
    data = store.get(key)
    table = chunks.table.take(pa.array(rows))
    writer = ChunkWriter(store)
    columns = [
        table.column(n).to_pylist() for n in ("digest", "codec", "offset", "length", "plain_length")
    ]
    for digest, codec, offset, length, plain_length in zip(*columns, strict=True):
        payload = data[offset : offset + length]
        _verify_chunk(digest, codec, payload, plain_length, key)
        writer.add(digest, codec, payload, plain_length)
    writer.flush()
    written = sum(_size(store, k) for k in writer.keys)
    return _delete_pack(store, pack_id) - written  # the store's net shrinkage


def _verify_chunk(digest: bytes, codec: int, payload: bytes, plain_length: int, key: str) -> None:
    try:
        plain = decode_block(codec, payload, plain_length)
    except (ValueError, zstandard.ZstdError):
        plain = b""
    if blake3.blake3(plain).digest() != digest:
        raise ChunkCorrupt(
            [digest.hex()],
            [],
            f"in {key} does not match its digest; prune stopped before rewriting it",
        )


__all__ = ["PruneResult", "RetentionPolicy", "prune"]
