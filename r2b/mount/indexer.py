"""Mounting a backup's disks and extracting its file catalog (patent FIG. 4: granular metadata).

``CatalogBuilder`` is driven by ``build_backup``: ``add_disk`` once per disk, with the disk's
replica snapshot (a ``BlockMap``, already in memory; its blocks are read from the journal's
packs, so indexing does not wait for the image's chunks); then, for an application-consistent
checkpoint, ``add_items`` catalogs the application items (``r2b.apps.items``: mail messages,
database tables) from the metadata the app agent wrote onto the disk, read from the snapshot
through the file rows just collected; then ``finish`` writes
``backups/<backup>/catalog.parquet`` (and ``items.parquet``) and returns the manifest's
``catalog`` document.

Catalog paths (CLI.md): absolute within their filesystem; prefixed with the partition
(``/p2/etc/hosts``) when the disk has a partition table — even with one partition, so a path
does not change when a partition is added; no prefix for a filesystem directly on the disk;
and prefixed with the disk id (``/disk1/p2/...``) when the machine has more than one disk.
Each prefix is a ``dir`` row of its own, so ``ls BACKUP /`` lists the partitions (or disks).

A filesystem that cannot be read (unknown, encrypted, corrupt, a damaged block) never fails
the backup: its rows are dropped, and its partition is reported ``indexed: false`` with the
reason (also in the ``note`` of its row). Items that cannot be catalogued never fail it
either: the ``items`` document of the catalog says why (for all, or per application). Only
store errors (worth retrying) propagate.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from catalog.items import ITEMS_FORMAT, ITEMS_VERSION, items_bytes, items_key, items_table
from catalog.parquet import catalog_bytes
from catalog.schema import CATALOG_FORMAT, CATALOG_VERSION, RowBuffer, join_path
from r2b.apps.items import ExtractedItems, SnapshotFiles, extract_items
from r2b.blockio import Layout
from r2b.errors import CorruptData, ItemsUnavailable, StoreError, UnreadableFilesystem
from r2b.ids import BackupId, DiskId, MachineName
from r2b.image.format import catalog_key
from r2b.mount.filedata import DiskReader
from r2b.mount.image import ImageFile
from r2b.mount.partitions import TskImage, Volume, read_partitions
from r2b.mount.walker import walk_filesystem
from r2b.store.base import ObjectStore
from r2b.store.wrappers import CountingStore


@dataclass(frozen=True)
class VolumeStatus:
    """What indexing one volume gave: its filesystem and entry count, or why not."""

    disk: str
    partition: str
    path: str
    fs: str | None
    indexed: bool
    files: int
    reason: str | None = None
    unreadable_dirs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "disk": self.disk,
            "partition": self.partition,
            "path": self.path,
            "fs": self.fs,
            "indexed": self.indexed,
            "files": self.files,
        }
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.unreadable_dirs:
            doc["unreadable_dirs"] = list(self.unreadable_dirs[:100])
        return doc


def disk_root(disk: DiskId, multi_disk: bool) -> str:
    return f"/{disk}" if multi_disk else "/"


def index_disk(
    store: ObjectStore, layout: Layout, disk: DiskId, root: str, rows: RowBuffer, source: str
) -> tuple[list[VolumeStatus], int]:
    """Add the rows of every filesystem on ``disk`` (read through ``layout``) under ``root``;
    return each volume's status and the bytes read from the store."""
    image = ImageFile(store, layout, source)
    tsk = TskImage(image)
    if root != "/":
        rows.add(disk=disk, partition="", fs="", path=root, type="dir", mode=0o755)
    try:
        table = read_partitions(tsk)
    except CorruptData as e:
        return [VolumeStatus(disk, "", root, None, False, 0, str(e))], image.bytes_fetched
    statuses = [_index_volume(tsk, volume, disk, root, rows) for volume in table.volumes]
    return statuses, image.bytes_fetched


def _index_volume(
    tsk: TskImage, volume: Volume, disk: DiskId, root: str, rows: RowBuffer
) -> VolumeStatus:
    path = join_path(root, volume.name) if volume.name else root
    mark = rows.mark()
    tsk.error = None
    try:
        walked = walk_filesystem(tsk, volume, disk, path, rows)
    except StoreError:
        raise
    except (UnreadableFilesystem, CorruptData) as e:
        reason = e.reason if isinstance(e, UnreadableFilesystem) else str(e)
        return _not_indexed(rows, mark, volume, disk, path, reason)
    except Exception as e:  # a bug or a TSK surprise must not fail the backup
        return _not_indexed(rows, mark, volume, disk, path, f"{type(e).__name__}: {e}")
    if volume.name:
        rows.add(
            disk=disk,
            partition=volume.name,
            fs=walked.fs,
            path=path,
            type="dir",
            mode=walked.root_mode & 0o7777 or 0o755,  # FAT's root has no mode
            mtime=walked.root_mtime,
        )
    unreadable = tuple(walked.unreadable_dirs)
    return VolumeStatus(disk, volume.name, path, walked.fs, True, walked.entries, None, unreadable)


def _not_indexed(
    rows: RowBuffer, mark: int, volume: Volume, disk: DiskId, path: str, reason: str
) -> VolumeStatus:
    rows.rollback(mark)
    if volume.name:
        rows.add(
            disk=disk,
            partition=volume.name,
            fs="",
            path=path,
            type="dir",
            mode=0o755,
            note=f"not indexed: {reason}",
        )
    return VolumeStatus(disk, volume.name, path, None, False, 0, reason)


class CatalogBuilder:
    """Collects the catalog of one backup, disk by disk; ``finish`` stores it."""

    def __init__(
        self, store: ObjectStore, backup: BackupId, machine: MachineName, disks: int
    ) -> None:
        self.store = store
        self.backup = backup
        self.multi_disk = disks > 1
        self.rows = RowBuffer(machine=machine, backup=backup)
        self.statuses: list[VolumeStatus] = []
        self.bytes_read = 0
        self.seconds = 0.0
        self.machine = machine
        self.items: ExtractedItems | None = None
        self.items_doc: dict[str, Any] | None = None  # None: no application metadata

    def add_disk(self, disk: DiskId, layout: Layout) -> list[VolumeStatus]:
        started = time.perf_counter()
        with _bulk():
            statuses, fetched = index_disk(
                self.store,
                layout,
                disk,
                disk_root(disk, self.multi_disk),
                self.rows,
                f"replica snapshot of {disk} for {self.backup}",
            )
        self.statuses += statuses
        self.bytes_read += fetched
        self.seconds += time.perf_counter() - started
        return statuses

    def add_items(self, app_metadata: dict[str, Any], layout_of: Callable[[str], Layout]) -> None:
        """Catalog the application items the checkpoint's metadata file lists (read from the
        snapshot: ``layout_of(disk)`` gives each disk's). Never raises but for store errors."""
        started = time.perf_counter()
        counting = CountingStore(self.store)
        source = f"replica snapshot for {self.backup}"
        files = SnapshotFiles(
            self.rows.rows, DiskReader(counting, layout_of, source), self.multi_disk
        )
        doc: dict[str, Any] = {"format": ITEMS_FORMAT, "version": ITEMS_VERSION}
        try:
            self.items = extract_items(app_metadata, files)
            doc |= {"count": len(self.items.rows), "apps": self.items.apps}
        except StoreError:
            raise
        except Exception as e:  # items are a bonus: the backup goes on without them
            reason = str(e) if isinstance(e, ItemsUnavailable) else f"{type(e).__name__}: {e}"
            doc |= {"count": 0, "apps": [], "reason": reason}
        seconds = time.perf_counter() - started
        self.items_doc = doc | {"bytes_read": counting.bytes_got, "seconds": round(seconds, 3)}
        self.bytes_read += counting.bytes_got
        self.seconds += seconds

    def finish(self) -> dict[str, Any]:
        """Write the catalog's Parquet (and the items'); the manifest's ``catalog`` document."""
        partitions = [s.to_json() for s in self.statuses]
        key = catalog_key(self.backup)
        with _bulk():
            table = self.rows.table()
        self.store.put(key, catalog_bytes(table, self.backup, partitions))
        doc = {
            "format": CATALOG_FORMAT,
            "version": CATALOG_VERSION,
            "key": key,
            "files": sum(s.files for s in self.statuses),
            "partitions": partitions,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
        }
        if self.items_doc is not None:
            doc["items"] = self._store_items(self.items_doc)
        return doc

    def _store_items(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Write ``items.parquet`` when there are items; the ``items`` document."""
        if self.items is None or not self.items.rows:
            return doc | {"key": None}
        key = items_key(self.backup)
        table = items_table(self.backup, self.machine, self.items.rows)
        self.store.put(key, items_bytes(table, self.backup, self.items.apps))
        return doc | {"key": key}


@contextmanager
def _bulk() -> Iterator[None]:
    """No cyclic garbage collection while rows pile up: a catalog is hundreds of thousands of
    acyclic tuples, and the collector re-scanning them cost a third of the indexing time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
