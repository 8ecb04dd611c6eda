"""Replication flows: one cycle, continuous replication, the checkpoint (request backup)."""

from __future__ import annotations

import time

from prefect import flow

from flows.runtime import call, emit
from r2b.journal.format import BackupType
from r2b.ops import Settings
from tasks.replication import mark_checkpoint, replicate_cycle
from tasks.summaries import CycleSummary


@flow(name="replicate")
def replicate_flow(
    machine: str,
    store: str | None = None,
    watch_seconds: float | None = None,
    cycles: int | None = None,
) -> list[CycleSummary]:
    """One replication cycle, or one every ``watch_seconds`` (``cycles`` times, or forever)."""
    settings = Settings.from_env(store)
    results = [call(replicate_cycle, settings, machine)]
    while watch_seconds is not None and (cycles is None or len(results) < cycles):
        time.sleep(watch_seconds)
        results.append(call(replicate_cycle, settings, machine))
    return results


@flow(name="request-backup")
def checkpoint_flow(
    machine: str, backup_type: BackupType = "incremental", store: str | None = None
) -> CycleSummary:
    """Quiesce, replicate, mark a checkpoint, thaw; then announce it for the backup proxy."""
    settings = Settings.from_env(store)
    result = call(mark_checkpoint, settings, machine, backup_type)
    emit(
        "r2b.checkpoint.synced",
        f"r2b.machine.{machine}",
        {
            "machine": machine,
            "checkpoint": result.checkpoint,
            "type": backup_type,
            "store": settings.store_url,
        },
    )
    return result
