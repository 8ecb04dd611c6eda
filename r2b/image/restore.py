"""Whole-disk restore from an image, and verification of stored chunks.

An image index names one chunk digest per block; the chunk index says where each chunk is. The
two are joined into a ``Layout`` and written by ``write_disk`` (shared with failover): ranged
GETs on a thread pool, each chunk verified before it is written, zeros left sparse, the output
renamed into place only when every chunk checked out. A missing or corrupt chunk fails the
restore with ``ChunkCorrupt`` naming the chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.compute as pc

from r2b.blockio import Damage, Layout, fetch_blocks
from r2b.errors import ChunkCorrupt
from r2b.ids import DiskId
from r2b.image.chunks import ChunkIndex, digest_array
from r2b.image.format import Manifest, read_table
from r2b.journal.failover import Materialised, write_disk
from r2b.journal.snapshot import digest_column
from r2b.store.base import ObjectStore

Progress = Callable[[int], None]


def image_digests(
    store: ObjectStore, manifest: Manifest, disk: DiskId
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """The chunk digest of every block of ``disk`` in ``manifest``, and which blocks are zero."""
    key = manifest.disks[disk].index
    table = read_table(store.get(key), key, "r2b.image.index")
    zero = np.asarray(table.column("zero").to_numpy(zero_copy_only=False), dtype=bool)
    return digest_column(table), zero


def image_layout(
    store: ObjectStore, manifest: Manifest, disk: DiskId, chunks: ChunkIndex
) -> tuple[Layout, list[str]]:
    """The layout of an image's disk, and the digests of chunks the store does not index."""
    image = manifest.disks[disk]
    digests, zero = image_digests(store, manifest, disk)
    where = chunks.locate(digests)
    lost = ~zero & ~where.found
    layout = Layout(
        size=image.size,
        block_size=image.block_size,
        digests=digests,
        codec=np.where(zero | lost, 0, where.codec).astype(np.uint8),
        pack=np.where(zero | lost, -1, where.pack).astype(np.int32),
        offset=where.offset,
        length=where.length,
        pack_keys=chunks.pack_keys,
    )
    return layout, sorted({digests[b].tobytes().hex() for b in np.flatnonzero(lost)})


def restore_disk(
    store: ObjectStore,
    manifest: Manifest,
    disk: DiskId,
    out: Path,
    progress: Progress | None = None,
    chunks: ChunkIndex | None = None,
) -> Materialised:
    chunks = chunks or ChunkIndex.load(store)
    layout, lost = image_layout(store, manifest, disk, chunks)
    if lost:
        raise ChunkCorrupt(lost, [manifest.id], "is missing from the chunk index")
    result = write_disk(store, layout, out, progress=progress)
    if isinstance(result, Damage):
        bad = sorted({layout.digests[b].tobytes().hex() for b in result.blocks})
        reason = next(iter(result.by_key.values()))[0]
        raise ChunkCorrupt(bad, [manifest.id], reason)
    return result


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[dict[str, object]] = field(default_factory=list)
    missing: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def verify_backups(
    store: ObjectStore, manifests: Sequence[Manifest], progress: Progress | None = None
) -> VerifyReport:
    """Read every chunk the backups reference and check its digest; name what is broken."""
    chunks = ChunkIndex.load(store)
    per_backup = referenced_chunks(store, manifests)
    every = _unique_rows(list(per_backup.values()))
    report = VerifyReport()
    if len(every) == 0:
        return report
    where = chunks.locate(every)
    layout = Layout(
        size=0,
        block_size=0,
        digests=every,
        codec=np.where(where.found, where.codec, 0).astype(np.uint8),
        pack=where.pack,
        offset=where.offset,
        length=where.length,
        pack_keys=chunks.pack_keys,
        plain_length=where.plain_length,
    )

    def counted(block: object) -> None:
        if progress:
            progress(1)

    damage = fetch_blocks(store, layout, np.flatnonzero(where.found).astype(np.int64), counted)
    report.checked = len(every)
    missing_pack = {
        b for key, (reason, blocks) in damage.by_key.items() if "missing" in reason for b in blocks
    }
    lost = {every[b].tobytes() for b in np.flatnonzero(~where.found)}
    lost |= {every[b].tobytes() for b in missing_pack}
    corrupt = {every[b].tobytes() for b in damage.blocks if b not in missing_pack}
    report.missing = _with_backups(lost, per_backup)
    report.corrupt = _with_backups(corrupt, per_backup)
    return report


def referenced_chunks(
    store: ObjectStore, manifests: Sequence[Manifest]
) -> dict[str, npt.NDArray[np.uint8]]:
    """The unique chunk digests each backup needs (zero blocks need none)."""
    per_backup = {}
    for manifest in manifests:
        parts = []
        for disk in manifest.disks:
            digests, zero = image_digests(store, manifest, disk)
            parts.append(digests[~zero])
        per_backup[str(manifest.id)] = _unique_rows(parts)
    return per_backup


def _unique_rows(parts: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.uint8]:
    if not parts:
        return np.empty((0, 32), np.uint8)
    return np.unique(np.concatenate(parts), axis=0)


def _with_backups(
    digests: set[bytes], per_backup: dict[str, npt.NDArray[np.uint8]]
) -> list[dict[str, object]]:
    if not digests:
        return []
    wanted = digest_array(np.frombuffer(b"".join(sorted(digests)), np.uint8).reshape(-1, 32))
    users: dict[bytes, list[str]] = {d: [] for d in digests}
    for backup, own in per_backup.items():
        hits = pc.is_in(wanted, value_set=digest_array(own)).to_numpy(zero_copy_only=False)
        for digest, hit in zip(sorted(digests), hits, strict=True):
            if hit:
                users[digest].append(backup)
    return [{"chunk": d.hex(), "backups": users[d]} for d in sorted(digests)]
