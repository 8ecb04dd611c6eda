"""Thin Prefect tasks over backup images: one core call each."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import task

from r2b import ops
from r2b.image.retention import RetentionPolicy
from tasks.summaries import (
    BackupSummary,
    DiskImage,
    FileRestoreSummary,
    ItemRestoreSummary,
    PruneSummary,
    VerifySummary,
)


# Idempotent: a retried build finds the chunks already stored and the manifest if written.
@task(name="build-backup", retries=2, retry_delay_seconds=5)
def build_backup(
    settings: ops.Settings, machine: str, checkpoint: str | None, wait_s: float
) -> list[BackupSummary]:
    return [
        BackupSummary.of(r.manifest, r.built)
        for r in ops.backup(settings, machine, checkpoint, wait_s)
    ]


@task(name="restore-disk")
def restore_disk(settings: ops.Settings, backup: str, to: str, disk: str | None) -> DiskImage:
    return DiskImage.of(ops.restore_disk(settings, backup, Path(to), disk))


@task(name="verify-backups")
def verify_backups(settings: ops.Settings, backups: list[str]) -> VerifySummary:
    return VerifySummary(**dataclasses.asdict(ops.verify(settings, backups)))


@task(name="prune-backups")
def prune_backups(
    settings: ops.Settings, policy: RetentionPolicy, keep_failover: int
) -> PruneSummary:
    return PruneSummary(**dataclasses.asdict(ops.prune(settings, policy, keep_failover)))


@task(name="restore-files")
def restore_files(
    settings: ops.Settings, backup: str, paths: list[str], to: str, overwrite: bool
) -> FileRestoreSummary:
    return FileRestoreSummary.of(ops.restore_files(settings, backup, paths, Path(to), overwrite))


@task(name="restore-items")
def restore_items(
    settings: ops.Settings, backup: str, items: list[str], to: str, overwrite: bool
) -> ItemRestoreSummary:
    return ItemRestoreSummary.of(ops.restore_items(settings, backup, items, Path(to), overwrite))
