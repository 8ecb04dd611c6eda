"""One rooted error hierarchy for r2b.

Every error a user can meet is an ``R2BError``; its ``str()`` is a one-line message that says
what went wrong and, where there is something to do, what to do. Errors carry their data as
attributes so callers (and tests) never parse messages. Vendor errors (botocore, OS errors)
are translated into these types at the boundary where they occur.

    R2BError
    ├── BadInput                      the user asked for something that cannot be
    │   ├── NotADisk(path, reason)
    │   ├── DiskSizeChanged(disk, registered, now)
    │   └── RestoreConflict(paths)        restoring would overwrite files (without --overwrite)
    ├── NotFound(key)                 an object / machine / checkpoint does not exist
    │   ├── UnknownMachine(name)
    │   ├── PathNotInBackup(backup, path)
    │   ├── NoCatalog(backup)             the backup has no file catalog
    │   ├── ItemNotInBackup(backup, item) no application item of that name in the backup
    │   └── NoItems(backup, reason)       the backup has no application items catalogued
    ├── StoreError                    the object store failed
    │   ├── TransientStoreError       worth retrying (timeouts, 5xx, throttling)
    │   │   └── StoreUnreachable(url)
    │   └── PermanentStoreError       not worth retrying (denied, bad bucket, ...)
    │       └── BucketMissing(bucket)
    ├── CorruptData                   stored bytes do not match their digest
    │   ├── JournalCorrupt(machine, disk, key, blocks)
    │   ├── ChunkCorrupt(digests, backups, reason)
    │   └── BlocksUnreadable(source, blocks, reason)  a mounted image could not read blocks
    ├── UnreadableFilesystem(volume, reason)  a partition's filesystem cannot be indexed
    ├── ConflictError                 somebody else committed first (concurrent writer)
    │   ├── StoreLocked(holder)           prune and backup exclude each other
    │   └── CatalogBusy(path)             another process holds the catalog database
    ├── CheckpointTimeout(machine, checkpoint, seconds)
    ├── QuiesceError(target, reason)  freezing or thawing failed
    ├── ItemsUnavailable(what, reason)  application items could not be catalogued (recorded in
    │                                   the manifest while building; never fails a backup)
    ├── ItemRestoreError(item, reason)  an application item could not be restored
    │   └── ToolMissing(item, tool, hint)   a program the restore needs is not installed
    └── LocalWriteError(path, reason) writing restored files on this host failed
"""

from __future__ import annotations

from collections.abc import Sequence


class R2BError(Exception):
    """Root of every error r2b raises on purpose."""


class BadInput(R2BError):
    pass


class NotADisk(BadInput):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} is not a usable disk: {reason}")


class DiskSizeChanged(BadInput):
    def __init__(self, disk: str, registered: int, now: int) -> None:
        self.disk = disk
        self.registered = registered
        self.now = now
        verb = "grew" if now > registered else "shrank"
        super().__init__(
            f"disk {disk} {verb} from {registered} to {now} bytes since it was registered; "
            "nothing was replicated (register it again as a new disk to protect the new size)"
        )


class RestoreConflict(BadInput):
    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        shown = ", ".join(self.paths[:3])
        more = f" and {len(self.paths) - 3} more" if len(self.paths) > 3 else ""
        super().__init__(
            f"{shown}{more} already exist(s): nothing was restored "
            "(pass --overwrite to replace, or restore into an empty folder)"
        )


class NotFound(R2BError):
    def __init__(self, key: str, what: str = "object") -> None:
        self.key = key
        self.what = what
        super().__init__(f"{what} not found: {key}")


class PathNotInBackup(NotFound):
    def __init__(self, backup: str, path: str) -> None:
        super().__init__(f"{backup}:{path}", "path")
        self.backup = backup
        self.path = path
        self.args = (f"{path!r} is not in backup {backup} (see 'r2b ls {backup}')",)


class NoCatalog(NotFound):
    def __init__(self, backup: str) -> None:
        super().__init__(backup, "file catalog")
        self.backup = backup
        self.args = (f"backup {backup} has no file catalog (built before catalogs existed)",)


class ItemNotInBackup(NotFound):
    def __init__(self, backup: str, item: str) -> None:
        super().__init__(f"{backup}:{item}", "item")
        self.backup = backup
        self.item = item
        self.args = (f"item {item!r} is not in backup {backup} (look for it with 'r2b find')",)


class NoItems(NotFound):
    def __init__(self, backup: str, reason: str) -> None:
        super().__init__(backup, "application item catalog")
        self.backup = backup
        self.reason = reason
        self.args = (f"backup {backup} has no application items: {reason}",)


class UnknownMachine(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(name, "machine")
        self.args = (f"unknown machine {name!r}: register it with 'r2b machine add'",)


class StoreError(R2BError):
    pass


class TransientStoreError(StoreError):
    """A failure that may go away when retried (timeout, throttling, 5xx)."""


class StoreUnreachable(TransientStoreError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"object store {url} is unreachable: {reason}")


class PermanentStoreError(StoreError):
    """A failure that retrying will not fix (access denied, invalid request)."""


class BucketMissing(PermanentStoreError):
    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        super().__init__(f"bucket {bucket!r} does not exist: create it or fix --store")


class CorruptData(R2BError):
    pass


class JournalCorrupt(CorruptData):
    def __init__(
        self, machine: str, disk: str, key: str, blocks: Sequence[int], reason: str
    ) -> None:
        self.machine = machine
        self.disk = disk
        self.key = key
        self.blocks = list(blocks)
        self.reason = reason
        shown = ", ".join(str(b) for b in self.blocks[:8])
        more = f" and {len(self.blocks) - 8} more" if len(self.blocks) > 8 else ""
        super().__init__(
            f"replica journal of {machine}/{disk} is damaged: {key} {reason} "
            f"(blocks {shown}{more}); nothing was materialised"
        )


class ChunkCorrupt(CorruptData):
    def __init__(self, digests: Sequence[str], backups: Sequence[str], reason: str) -> None:
        self.digests = list(digests)
        self.backups = list(backups)
        self.reason = reason
        shown = ", ".join(d[:16] for d in self.digests[:4])
        more = f" and {len(self.digests) - 4} more" if len(self.digests) > 4 else ""
        super().__init__(
            f"chunk {shown}{more} {reason} (needed by {', '.join(self.backups) or 'no backup'}); "
            "run 'r2b verify' to list all damage"
        )


class BlocksUnreadable(CorruptData):
    """Blocks of a mounted image (replica snapshot or backup image) failed to read."""

    def __init__(self, source: str, blocks: Sequence[int], reason: str) -> None:
        self.source = source
        self.blocks = list(blocks)
        self.reason = reason
        shown = ", ".join(str(b) for b in self.blocks[:8])
        more = f" and {len(self.blocks) - 8} more" if len(self.blocks) > 8 else ""
        super().__init__(f"{source}: blocks {shown}{more} {reason}")


class UnreadableFilesystem(R2BError):
    """A volume whose filesystem cannot be read (unknown, encrypted, corrupt)."""

    def __init__(self, volume: str, reason: str) -> None:
        self.volume = volume
        self.reason = reason
        super().__init__(f"{volume}: {reason}")


class ConflictError(R2BError):
    pass


class StoreLocked(ConflictError):
    def __init__(self, holder: str, what: str) -> None:
        self.holder = holder
        super().__init__(f"the store is locked by {holder}; {what} must wait until it finishes")


class CatalogBusy(ConflictError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"the catalog database {path} is in use by another r2b process ({reason}); "
            "try again when it finishes"
        )


class CheckpointTimeout(R2BError):
    def __init__(self, machine: str, checkpoint: str, seconds: float) -> None:
        self.machine = machine
        self.checkpoint = checkpoint
        self.seconds = seconds
        super().__init__(
            f"checkpoint {checkpoint} of {machine} did not reach the replica within {seconds:g} s; "
            "is the replicator running?"
        )


class QuiesceError(R2BError):
    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"could not quiesce {target}: {reason}")


class ItemsUnavailable(R2BError):
    """Application items could not be catalogued while building a backup (the manifest's
    catalog records why; the backup itself is complete)."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")


class ItemRestoreError(R2BError):
    """Restoring an application item failed: its database would not open, a dump failed..."""

    def __init__(self, item: str, reason: str) -> None:
        self.item = item
        self.reason = reason
        super().__init__(f"could not restore {item}: {reason}")


class ToolMissing(ItemRestoreError):
    """A program the restore needs (``pg_dump``, ``pg_ctl``...) is not installed here."""

    def __init__(self, item: str, tool: str, hint: str) -> None:
        super().__init__(item, f"{tool} is not installed here ({hint})")
        self.tool = tool
        self.hint = hint


class LocalWriteError(R2BError):
    """Writing restored data on this host failed (permissions, a full disk, ...)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"could not write {path}: {reason}")
