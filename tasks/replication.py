"""Thin Prefect tasks over the replicator: one core call each."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from r2b import ops
from r2b.ids import DiskId
from r2b.journal.format import BackupType
from tasks.summaries import CycleSummary, DiskImage, MachineSummary


@task(name="register-machine")
def register_machine(
    settings: ops.Settings, name: str, disks: list[str], apps: list[str], hooks: dict[str, str]
) -> MachineSummary:
    return MachineSummary.of(ops.add_machine(settings, name, disks, apps, hooks=hooks))


# A cycle is idempotent until its commit (nothing is visible before), so a transient failure
# is safely retried: the retry starts again from the last commit.
@task(name="replicate-cycle", retries=2, retry_delay_seconds=2)
def replicate_cycle(
    settings: ops.Settings, machine: str, changed: dict[str, list[tuple[int, int]]] | None = None
) -> CycleSummary:
    extents = {DiskId(d): e for d, e in changed.items()} if changed is not None else None
    return CycleSummary.of(ops.replicate(settings, machine, extents))


# Not retried automatically: it freezes filesystems, and the operator should see why it failed.
@task(name="mark-checkpoint")
def mark_checkpoint(settings: ops.Settings, machine: str, backup_type: BackupType) -> CycleSummary:
    return CycleSummary.of(ops.checkpoint(settings, machine, backup_type))


@task(name="choose-backup-type")
def choose_backup_type(settings: ops.Settings, machine: str, full_every: int) -> BackupType:
    return ops.auto_backup_type(settings, machine, full_every)


@task(name="failover-disks")
def failover_disks(
    settings: ops.Settings, machine: str, to_dir: str, checkpoint: str | None
) -> list[DiskImage]:
    results = ops.failover(settings, machine, Path(to_dir), checkpoint)
    return [DiskImage.of(r) for r in results]
