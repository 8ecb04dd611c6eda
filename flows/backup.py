"""The backup proxy's flows: back up from the replica, restore, verify, prune."""

from __future__ import annotations

from prefect import flow

from flows.reporting import publish_backups
from flows.runtime import call, emit
from r2b.image.retention import RetentionPolicy
from r2b.ops import Settings
from tasks.images import (
    build_backup,
    prune_backups,
    restore_disk,
    restore_files,
    restore_items,
    verify_backups,
)
from tasks.summaries import (
    BackupSummary,
    DiskImage,
    FileRestoreSummary,
    ItemRestoreSummary,
    PruneSummary,
    VerifySummary,
)


@flow(name="backup-from-replica")
def backup_flow(
    machine: str, checkpoint: str | None = None, store: str | None = None, wait_s: float = 600.0
) -> list[BackupSummary]:
    """Build images at ``checkpoint`` (waiting up to ``wait_s`` for it to reach the replica),
    or at every checkpoint not yet backed up."""
    results = call(build_backup, Settings.from_env(store), machine, checkpoint, wait_s)
    publish_backups([r for r in results if r.built])
    for summary in results:
        if summary.built:
            emit("r2b.backup.completed", f"r2b.backup.{summary.id}", summary.model_dump())
    return results


@flow(name="restore-disk")
def restore_disk_flow(
    backup: str, to: str, disk: str | None = None, store: str | None = None
) -> DiskImage:
    return call(restore_disk, Settings.from_env(store), backup, to, disk)


@flow(name="restore-files")
def restore_files_flow(
    backup: str, paths: list[str], to: str, overwrite: bool = False, store: str | None = None
) -> FileRestoreSummary:
    """Restore files and folders (globs allowed) of a backup into folder ``to``, reading only
    the chunks that hold them."""
    return call(restore_files, Settings.from_env(store), backup, paths, to, overwrite)


@flow(name="restore-items")
def restore_items_flow(
    backup: str, items: list[str], to: str, overwrite: bool = False, store: str | None = None
) -> ItemRestoreSummary:
    """Restore application items of a backup into folder ``to``: a mail message as ``.eml``, a
    SQLite table as SQL, a PostgreSQL database or table as ``pg_dump`` output."""
    return call(restore_items, Settings.from_env(store), backup, items, to, overwrite)


@flow(name="verify")
def verify_flow(backups: list[str] | None = None, store: str | None = None) -> VerifySummary:
    report = call(verify_backups, Settings.from_env(store), backups or [])
    if report.corrupt or report.missing:
        emit("r2b.verify.failed", "r2b.store", report.model_dump())
    return report


@flow(name="prune")
def prune_flow(
    keep_last: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    keep_failover: int = 3,
    store: str | None = None,
) -> PruneSummary:
    policy = RetentionPolicy(keep_last, keep_daily, keep_weekly, keep_monthly)
    return call(prune_backups, Settings.from_env(store), policy, keep_failover)
