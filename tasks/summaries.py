"""What tasks return: small pydantic summaries (ids, counts, keys), never bulk data."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel

from r2b.image.format import Manifest
from r2b.journal.failover import Materialised
from r2b.journal.replicator import CycleResult
from r2b.machines import MachineSpec
from r2b.restore.files import FileRestoreResult
from r2b.restore.items import ItemRestoreResult


class MachineSummary(BaseModel):
    name: str
    disks: list[str]
    apps: list[str]
    hooks: dict[str, str] = {}

    @staticmethod
    def of(spec: MachineSpec) -> MachineSummary:
        disks = [d.path for d in spec.disks]
        return MachineSummary(name=spec.name, disks=disks, apps=spec.apps, hooks=spec.hooks)


class CycleSummary(BaseModel):
    machine: str
    seq: int
    blocks_changed: int
    bytes_changed: int
    bytes_uploaded: int
    checkpoint: str | None = None
    frozen_ms: float | None = None
    frozen: list[str] = []
    consistency: str | None = None

    @staticmethod
    def of(result: CycleResult) -> CycleSummary:
        return CycleSummary(
            machine=result.machine,
            seq=result.seq,
            blocks_changed=result.blocks_changed,
            bytes_changed=result.bytes_changed,
            bytes_uploaded=result.bytes_uploaded,
            checkpoint=result.checkpoint,
            frozen_ms=result.frozen_ms,
            frozen=result.frozen,
            consistency=result.consistency,
        )


class DiskImage(BaseModel):
    path: str
    sha256: str
    bytes_written: int

    @staticmethod
    def of(result: Materialised) -> DiskImage:
        return DiskImage(
            path=str(result.path), sha256=result.sha256, bytes_written=result.bytes_written
        )


class BackupSummary(BaseModel):
    id: str
    machine: str
    checkpoint: str
    type: str
    created: str
    disks: list[str]
    bytes_read: int
    bytes_stored: int
    bytes_deduplicated: int
    chunks_new: int
    files_indexed: int
    items_indexed: int = 0
    built: bool = True

    @staticmethod
    def of(manifest: Manifest, built: bool = True) -> BackupSummary:
        images = manifest.disks.values()
        catalog = manifest.catalog or {}
        return BackupSummary(
            id=manifest.id,
            machine=manifest.machine,
            checkpoint=manifest.checkpoint,
            type=manifest.type,
            created=manifest.created,
            disks=list(manifest.disks),
            bytes_read=sum(d.bytes_read for d in images),
            bytes_stored=sum(d.bytes_stored for d in images),
            bytes_deduplicated=sum(d.bytes_deduplicated for d in images),
            chunks_new=sum(d.chunks_new for d in images),
            files_indexed=int(catalog.get("files", 0)),
            items_indexed=int((catalog.get("items") or {}).get("count", 0)),
            built=built,
        )


class VerifySummary(BaseModel):
    checked: int
    corrupt: list[dict[str, Any]]
    missing: list[dict[str, Any]]


class PruneSummary(BaseModel):
    removed_backups: list[str]
    kept_backups: list[str]
    bytes_freed: int
    packs_deleted: int
    bytes_reclaimable: int
    packs_repacked: int
    journal_objects_deleted: int


class FileRestoreSummary(BaseModel):
    """What ``restore file`` did: entries written, bytes, and what it read from the store."""

    to: str
    files: int
    dirs: int
    symlinks: int
    bytes_written: int
    bytes_fetched: int
    chunks_fetched: int
    requests: int
    skipped: list[dict[str, str]]

    @staticmethod
    def of(result: FileRestoreResult) -> FileRestoreSummary:
        doc = dataclasses.asdict(result)
        doc["to"] = str(result.to)
        return FileRestoreSummary(**doc)


class ItemRestoreSummary(BaseModel):
    """What ``restore item`` wrote: one file per item, and the bytes."""

    to: str
    items: list[dict[str, Any]]
    bytes_written: int
    bytes_fetched: int

    @staticmethod
    def of(result: ItemRestoreResult) -> ItemRestoreSummary:
        return ItemRestoreSummary(
            to=str(result.to),
            items=result.items,
            bytes_written=result.bytes_written,
            bytes_fetched=result.bytes_fetched,
        )
