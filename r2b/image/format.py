"""The backup image format (version 1), distinct from the replica journal.

A backup is one image per disk of a machine at one checkpoint. Its data lives in
content-addressed *chunks* shared by every image of every machine in the store; one chunk is one
tracking block of the replica, addressed by the BLAKE3-256 digest of its plain bytes, stored
once (deduplicated), zstd-compressed (or raw where zstd does not help)::

    chunks/packs/<pack>.pack              chunk payloads, concatenated
    chunks/index/<pack>.arrow             Arrow IPC, one row per chunk in that pack (CHUNK_SCHEMA)
    backups/<backup>/<disk>.index.arrow   the image index: one row per block of the disk
    backups/<backup>/<disk>.changed.arrow incremental only: the changed-block list (CHANGED_SCHEMA)
    backups/<backup>/catalog.parquet      the file catalog of every disk (catalog/schema.py)
    backups/<backup>/manifest.json        written last, create-if-absent: the backup exists
    locks/<kind>-<id>.json                backup (shared) and prune (exclusive) locks

``<pack>`` is a random 16-hex-digit id. A pack's index is written after the pack, so an indexed
chunk is always readable; a pack with no index is an orphan of a crashed build, removed by
garbage collection. The image index (IMAGE_SCHEMA) has row *n* for block *n*: the chunk digest,
and ``zero`` true for an all-zero block (no chunk). It is complete for full and incremental
images alike, so any image restores on its own without walking a chain; ``type`` says what was
*read* to build it.

``<backup>`` is ``<machine>.<checkpoint>`` (e.g. ``web1.cp-000003``): building the same
checkpoint twice finds the manifest and does nothing more. The manifest is JSON::

    {"format": "r2b.backup", "version": 1, "id": "web1.cp-000003", "machine": "web1",
     "checkpoint": "cp-000003", "seq": 3, "type": "incremental", "parent": "web1.cp-000001",
     "created": "...", "checkpoint_time": "...", "consistency": "filesystem",
     "disks": {"disk0": {"size": .., "block_size": 65536, "index": "backups/...index.arrow",
               "changed": "backups/...changed.arrow" | null, "blocks_read": .., "bytes_read": ..,
               "chunks_new": .., "bytes_stored": .., "bytes_deduplicated": ..}},
     "catalog": {"format": "r2b.catalog", "version": 1, "key": "backups/.../catalog.parquet",
                 "files": 1234, "bytes_read": .., "seconds": ..,
                 "partitions": [{"disk": "disk0", "partition": "p1", "path": "/p1", "fs": "ext4",
                                 "indexed": true, "files": 1200},
                                {"disk": "disk0", "partition": "p2", "path": "/p2", "fs": null,
                                 "indexed": false, "reason": "Cannot determine file system type",
                                 "files": 0}],
                 "items": {"format": "r2b.items", "version": 1,
                           "key": "backups/.../items.parquet" | null, "count": 2650,
                           "bytes_read": .., "seconds": ..,
                           "apps": [{"spec": "maildir:/home/alice/Maildir", "kind": "maildir",
                                     "indexed": true, "items": 2607},
                                    {"spec": "sqlite:/srv/app/orders.db", "kind": "sqlite",
                                     "indexed": false, "items": 0, "reason": "..."}],
                           "reason": "..." (only when no item could be catalogued at all)}}}

``catalog`` is null for a backup built without one. The catalog is written after the image
indexes and before the manifest: it is part of the backup, and a filesystem that cannot be
read makes a partition ``indexed: false`` with its reason, never a failed backup.
``catalog.items`` is there only for an application-consistent checkpoint (the item catalog of
``catalog/items.py``, built by ``r2b.apps.items``); a failure to catalog items is recorded in
it, never a failed backup either.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from r2b import tables
from r2b.errors import CorruptData
from r2b.ids import BackupId, CheckpointId, DiskId, MachineName
from r2b.journal.format import DIGEST_SIZE, BackupType
from r2b.tables import write_table as write_table  # re-exported for image objects

FORMAT_VERSION = 1

CHUNK_SCHEMA = pa.schema(
    [
        ("digest", pa.binary(DIGEST_SIZE)),
        ("codec", pa.uint8()),
        ("offset", pa.uint64()),
        ("length", pa.uint32()),
        ("plain_length", pa.uint32()),
    ],
    metadata={"format": "r2b.chunk.index", "version": str(FORMAT_VERSION)},
)

IMAGE_SCHEMA = pa.schema(
    [("digest", pa.binary(DIGEST_SIZE)), ("zero", pa.bool_())],
    metadata={"format": "r2b.image.index", "version": str(FORMAT_VERSION)},
)

CHANGED_SCHEMA = pa.schema(
    [("block", pa.uint64()), ("digest", pa.binary(DIGEST_SIZE))],
    metadata={"format": "r2b.changed.blocks", "version": str(FORMAT_VERSION)},
)


def backup_id(machine: MachineName, checkpoint: CheckpointId) -> BackupId:
    return BackupId(f"{machine}.{checkpoint}")


def manifest_key(backup: BackupId) -> str:
    return f"backups/{backup}/manifest.json"


def image_index_key(backup: BackupId, disk: DiskId) -> str:
    return f"backups/{backup}/{disk}.index.arrow"


def changed_key(backup: BackupId, disk: DiskId) -> str:
    return f"backups/{backup}/{disk}.changed.arrow"


def catalog_key(backup: BackupId) -> str:
    return f"backups/{backup}/catalog.parquet"


def chunk_pack_key(pack: str) -> str:
    return f"chunks/packs/{pack}.pack"


def chunk_index_key(pack: str) -> str:
    return f"chunks/index/{pack}.arrow"


CHUNK_INDEX_PREFIX = "chunks/index/"
CHUNK_PACK_PREFIX = "chunks/packs/"
BACKUPS_PREFIX = "backups/"


def pack_of_index_key(key: str) -> str:
    return key.rsplit("/", 1)[1].removesuffix(".arrow")


@dataclass(frozen=True)
class DiskImage:
    size: int
    block_size: int
    index: str
    changed: str | None
    blocks_read: int
    bytes_read: int
    chunks_new: int
    bytes_stored: int
    bytes_deduplicated: int


@dataclass(frozen=True)
class Manifest:
    id: BackupId
    machine: MachineName
    checkpoint: CheckpointId
    seq: int
    type: BackupType
    parent: BackupId | None
    created: str
    checkpoint_time: str
    consistency: str
    disks: dict[DiskId, DiskImage]
    catalog: dict[str, Any] | None = field(default=None)

    def to_json(self) -> bytes:
        doc = {"format": "r2b.backup", "version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @staticmethod
    def from_json(data: bytes, key: str) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") != "r2b.backup" or doc.get("version") != FORMAT_VERSION:
                raise ValueError("not a version-1 backup manifest")
            doc.pop("format")
            doc.pop("version")
            doc["disks"] = {DiskId(k): DiskImage(**v) for k, v in doc["disks"].items()}
            return Manifest(**doc)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptData(f"backup manifest {key} is unreadable: {e}") from e


def read_table(data: bytes, key: str, fmt: str) -> pa.Table:
    """A version-1 image-format table (``r2b.tables``)."""
    return tables.read_table(data, key, fmt, FORMAT_VERSION)
